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


def test_a_configuration_that_edits_nothing_cannot_win_its_sweep():
    from bench.tune import tuning_page

    def row(config, immediate, reliability, locality):
        end = {"reliability_gen_em": reliability, "generality_gen_em": 0.0, "locality": locality}
        return {"label": f"ft-m-{config}", "method": "ft-m", "config": config, "fields": {}, "edits": 50,
                "complete": True, "score": (reliability + locality) / 3, "end": end,
                "immediate_reliability_gen_em": immediate, "seconds_per_edit": 1.0}

    rows = [row(0, 0.0, 0.0, 1.0)] + [row(k, 0.96, 0.5 - 0.01 * k, 0.3) for k in range(1, 8)]  # the sweep's 8
    table = [line for line in tuning_page(rows).splitlines() if line.startswith(("| 0 ", "| 1 ", "| 2 "))]
    assert "0.333 (edits do not take hold: cannot win)" in table[0] and "**" not in table[0]
    assert "| **0.263** | 0.960 |" in table[1] and "**" not in table[2]
    # before every configuration has run, none is the winner
    assert "In progress: 2 of 8 configurations so far, no winner yet." in tuning_page(rows[:2])
    assert "**" not in tuning_page(rows[:2])


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
