"""Plugin discovery: a throwaway third-party distribution registers a toy method by entry point."""
import os
import subprocess
import sys
import textwrap

import pytest

TOY_MODULE = textwrap.dedent('''
    import dataclasses
    from typing import ClassVar
    from edit_plugins.hookspecs import hookimpl
    from edit_plugins.hparams import EditHyperParams

    @dataclasses.dataclass(kw_only=True)
    class ToyHyperParams(EditHyperParams):
        ALG_NAME: ClassVar[str] = "Toy"
        scale: float = 1.0

    def apply_toy_to_model(model, tok, requests, hparams, copy=False, return_orig_weights=False,
                           keep_original_weight=False, **kwargs):
        return model, {}

    @hookimpl
    def register_methods(register):
        register("Toy", apply_toy_to_model, ToyHyperParams)
''')


@pytest.fixture
def toy_distribution(tmp_path):
    """A real distribution as importlib.metadata sees it: a module plus a .dist-info with entry points."""
    (tmp_path / "toy_edit_plugin.py").write_text(TOY_MODULE)
    info = tmp_path / "toy_edit_plugin-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-edit-plugin\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[edit_plugins]\ntoy = toy_edit_plugin\n")
    (tmp_path / "toy.yaml").write_text("alg_name: Toy\nmodel_name: tiny-gpt2\nscale: 2.5\n")
    return tmp_path


def run_python(code, path, **env):
    full_env = {**os.environ, "PYTHONPATH": str(path), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=path)


@pytest.mark.process
def test_third_party_plugin_is_found_by_entry_point_and_selectable_by_name(toy_distribution):
    out = run_python(textwrap.dedent('''
        from edit_plugins.plugins import get_method
        from edit_plugins import hparams
        hp = hparams.load("toy.yaml")
        print(type(hp).__name__, hp.scale, get_method("Toy").apply.__name__, get_method("Toy").plugin)
        print(sorted(__import__("edit_plugins.plugins").plugins.registry().methods))
    '''), toy_distribution)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first == "ToyHyperParams 2.5 apply_toy_to_model toy (toy-edit-plugin 0.3)"
    assert second == "['LEMoE', 'LocFT', 'Toy', 'WilKE']"  # built-ins come through the same entry-point group


@pytest.mark.process
def test_cli_lists_plugins_with_their_origin(toy_distribution):
    out = run_python("from edit_plugins.cli import main; main(['plugins'])", toy_distribution)
    assert out.returncode == 0, out.stderr
    assert "Toy" in out.stdout and "from toy (toy-edit-plugin 0.3)" in out.stdout
    assert "WilKE" in out.stdout and "from wilke (edit-plugins" in out.stdout


@pytest.mark.process
def test_env_var_selects_which_plugins_load(toy_distribution):
    code = "from edit_plugins.plugins import registry; print(sorted(registry().methods))"
    only_toy = run_python(code, toy_distribution, EDIT_PLUGINS_LOAD="toy")
    assert only_toy.stdout.strip() == "['Toy']", only_toy.stderr
    none = run_python(code, toy_distribution, EDIT_PLUGINS_NO_ENTRY_POINTS="1")
    assert none.stdout.strip() == "[]", none.stderr
    missing = run_python(code, toy_distribution, EDIT_PLUGINS_LOAD="nonesuch")
    assert missing.returncode != 0 and "nonesuch" in missing.stderr


@pytest.mark.process
def test_a_name_registered_twice_is_an_error(toy_distribution):
    (toy_distribution / "toy_edit_plugin.py").write_text(TOY_MODULE.replace('register("Toy"', 'register("WilKE"'))
    out = run_python("from edit_plugins.plugins import registry; registry()", toy_distribution)
    assert out.returncode != 0 and "'WilKE' is registered twice" in out.stderr
