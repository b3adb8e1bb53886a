"""bench/ as data and a runner: every module imports without work, and the docs it writes say what its results say."""
import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_MODULES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", BENCH_MODULES)
def test_a_bench_module_imports_without_loading_a_model_or_reading_arguments(name, monkeypatch):
    import edit_plugins.models

    def no_model(*args, **kwargs):
        raise AssertionError(f"bench.{name} loads a model on import")

    monkeypatch.setattr(edit_plugins.models, "load_model", no_model)
    monkeypatch.setattr(sys, "argv", ["bench", "--an-option-no-module-takes"])
    monkeypatch.delitem(sys.modules, f"bench.{name}", raising=False)
    module = importlib.import_module(f"bench.{name}")
    assert module.__name__ == f"bench.{name}"


def test_docs_benchmarks_is_what_make_table_makes_from_the_results():
    from bench.make_table import render

    assert render() == (ROOT / "docs" / "benchmarks.md").read_text()


def test_docs_tuning_page_is_what_the_tuning_results_make():
    from bench.tune import tuning_page

    rows = json.loads((ROOT / "bench" / "results" / "tuning.json").read_text())["rows"]
    assert tuning_page(rows) == (ROOT / "docs" / "comparison" / "tuning.md").read_text()


@pytest.mark.parametrize("path", sorted((ROOT / "bench" / "experiments" / "tuning").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_tuning_sweep_stays_in_budget_and_sets_only_fields_its_method_has(path):
    import dataclasses

    import yaml

    from bench.compare_methods import METHODS
    from bench.tune import MAX_CONFIGS, sweep
    from edit_plugins.methods.wilke.guard.settings import GuardSettings

    file, fields = METHODS[path.stem]
    known = set(yaml.safe_load((ROOT / "hparams" / file).read_text())) | set(fields)
    if file.startswith("WilKE/"):
        known |= {f.name for f in dataclasses.fields(GuardSettings)}
    configs = sweep(path.stem)["configs"]
    assert 1 <= len(configs) <= MAX_CONFIGS
    assert [sorted(set(c) - known) for c in configs] == [[] for _ in configs]
