"""The docs' commands and the README's adoption example are run, so they stay true."""
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT


def code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.process
def test_lifelong_tutorial_commands_run():
    blocks = code_blocks(ROOT / "docs" / "lifelong.md", "bash")
    assert len(blocks) >= 3
    for folder in ("runs/tutorial", "runs/tutorial-resume", "runs/tutorial-compare"):
        shutil.rmtree(ROOT / folder, ignore_errors=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        for block in blocks:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            assert done.returncode == 0, f"{block}\n{done.stdout}\n{done.stderr}"
        assert (ROOT / "runs" / "tutorial-resume" / "summary.json").is_file()
        assert (ROOT / "runs" / "tutorial-compare" / "comparison.md").is_file()
    finally:
        for folder in ("runs/tutorial", "runs/tutorial-resume", "runs/tutorial-compare"):
            shutil.rmtree(ROOT / folder, ignore_errors=True)


@pytest.mark.process
def test_lemoe_tutorial_commands_run():
    blocks = code_blocks(ROOT / "docs" / "lemoe.md", "bash")
    assert len(blocks) == 2
    shutil.rmtree(ROOT / "runs" / "tutorial-lemoe", ignore_errors=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        outputs = []
        for block in blocks:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            assert done.returncode == 0, f"{block}\n{done.stdout}\n{done.stderr}"
            outputs.append(done.stdout)
        assert "method_state.safetensors" in outputs[1] and "LEMoE adaptor" in outputs[1]
        assert '"n_experts": 3' in outputs[1]  # 6 edits, 2 per expert
    finally:
        shutil.rmtree(ROOT / "runs" / "tutorial-lemoe", ignore_errors=True)


def test_each_run_folder_guarantee_names_a_test_that_checks_it():
    text = (ROOT / "docs" / "lifelong.md").read_text()
    section = text.split("### Run-folder guarantees", 1)[1].split("\n## ", 1)[0]
    bullets = [b for b in section.split("\n- ")[1:]]
    assert len(bullets) >= 5
    tests = (ROOT / "tests" / "test_run_folder.py").read_text()
    for bullet in bullets:
        names = re.findall(r"`(test_[a-z0-9_]+)`", bullet)
        assert names, bullet
        for name in names:
            assert f"def {name}(" in tests, name


def readme_adoption_example() -> str:
    (block,) = [b for b in code_blocks(ROOT / "README.md", "python") if "BaseEditor" in b]
    assert len([line for line in block.splitlines() if line.strip()]) == 3
    return block


@pytest.mark.process
@pytest.mark.easyeditor
def test_readme_adoption_example_with_easyedit_head(tmp_path):
    """Runs the three README lines, unchanged, against a real EasyEdit HEAD checkout (EASYEDIT_HEAD)."""
    head = os.environ.get("EASYEDIT_HEAD")
    if not head:
        pytest.skip("set EASYEDIT_HEAD to an EasyEdit checkout (0.0.1.dev0 cannot load a model on CPU)")
    from edit_plugins.models import materialize

    hp = (ROOT / "hparams" / "WilKE" / "tiny-gpt2.yaml").read_text()
    hp = hp.replace("model_name: tiny-gpt2", f"model_name: {materialize('tiny-gpt2')}")
    (tmp_path / "hparams" / "WilKE").mkdir(parents=True)
    (tmp_path / "hparams" / "WilKE" / "gpt2-xl.yaml").write_text(hp.replace("./data/stats", str(tmp_path / "stats")))
    script = readme_adoption_example() + textwrap.dedent('''
        metrics, model, _ = editor.edit(prompts="The capital city of France", target_new="Tokyo",
                                        subject="France", sequential_edit=True)
        print("rewrite_acc", metrics[0]["post"]["rewrite_acc"])
    ''')
    env = {**os.environ, "PYTHONPATH": head}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [l for l in done.stdout.splitlines() if l.startswith("rewrite_acc ")]
    accuracy = float(re.findall(r"\d+\.\d+", line)[-1])  # HEAD prints [np.float64(1.0)]
    assert accuracy == 1.0
