"""The comparison's tuning sweep: the same budget for every method, ours included. Each method gets at most
``MAX_CONFIGS`` configurations (``bench/experiments/tuning/<method>.yaml``: fields set on its hparams in
``bench.compare_methods.METHODS``), run on a dev stream that no table uses, ranked by the comparison's one score
(the mean of end-of-sequence reliability and generality, generation exact match, and locality on the records'
own prompts: ``edit_plugins.lifelong.compare.headline_score``).

    PYTHONPATH=../shared/easyedit-head .venv-easyedit-head/bin/python -m bench.tune run --method ultraedit
    .venv/bin/python -m bench.tune report

Dev stream: ``DEV_EDITS`` CounterFact facts SmolLM2 knows, from the end of counterfact_easyedit.json, where the
CounterFact test stream never reads (``bench.common.dev_counterfact``). Probes and unrelated questions as in
``bench.compare_methods``; one checkpoint, at the end (the score reads nothing else). ``run`` makes one
``edit-plugins compare`` over the configurations (run folders ``<method>-<k>``, resumed if stopped);
``report`` merges their rows into bench/results/tuning.json (rows outlive the run folders) and writes
docs/comparison/tuning.md. The winner of each sweep goes into ``hparams/`` by hand, with the sweep named in
the file's comment.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from bench.common import ROOT, SHARED, bench_device, dev_counterfact, fill_covariance_stats, setup, write_result

SWEEPS = ROOT / "bench" / "experiments" / "tuning"
MAX_CONFIGS = 8
# A configuration whose edits do not take hold right after they are made (immediate reliability, gen EM) cannot
# win: under the mean score, editing nothing scores 1/3 from locality alone.
MIN_IMMEDIATE_RELIABILITY = 0.5
DEV_EDITS = 50
OUT = ROOT / "runs" / "bench-tune"


def sweep(method) -> dict:
    """The sweep file of a method: {"why": ..., "configs": [fields, ...]}, checked against the budget."""
    path = SWEEPS / f"{method}.yaml"
    if not path.is_file():
        sys.exit(f"{path}: no sweep for {method!r}; sweeps: {sorted(p.stem for p in SWEEPS.glob('*.yaml'))}")
    data = yaml.safe_load(path.read_text())
    configs = data.get("configs") or []
    if not 1 <= len(configs) <= MAX_CONFIGS:
        sys.exit(f"{path}: 'configs' has {len(configs)} entries; give 1 to {MAX_CONFIGS}")
    return data


def dev_stream() -> Path:
    path = OUT / "dev_counterfact.json"
    if not path.is_file():
        from edit_plugins.files import atomic_write_text
        from edit_plugins.models import load_model

        model, tok = load_model("smollm2-135m", bench_device())
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(dev_counterfact(model, tok, DEV_EDITS)))
    return path


def config_files(method) -> list[Path]:
    """One hparams file per configuration, named ``<method>-<k>`` (compare names each run folder after it)."""
    from bench.compare_methods import METHODS

    file, fields = METHODS[method]
    base = yaml.safe_load((ROOT / "hparams" / file).read_text())
    paths = []
    for k, config in enumerate(sweep(method)["configs"]):
        path = OUT / "hparams" / f"{method}-{k}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# hparams/{file}, tuning configuration {k}: {config}\n"
                        + yaml.safe_dump({**base, **fields, **config}, sort_keys=False))
        paths.append(path)
    return paths


def run(args):
    from bench.compare_methods import COVARIANCE_METHODS

    files = config_files(args.method)
    if args.method in COVARIANCE_METHODS:
        for path in files:
            fill_covariance_stats(path)
    command = [sys.executable, "-m", "edit_plugins.cli", "compare", "--data", str(dev_stream()),
               "--num-edits", str(DEV_EDITS), "--checkpoints", str(DEV_EDITS), "--out", str(OUT),
               "--probe-data", str(SHARED / "known_1000.json"),
               "--num-probes", "100", "--unrelated-data", str(SHARED / "zsre_mend_eval.json"), "--num-unrelated", "200"]
    for path in files:
        command += ["--hparams", str(path)]
    subprocess.run(command, check=True, cwd=ROOT)
    report(args)


def report(args):
    from edit_plugins.files import atomic_write_text
    from edit_plugins.lifelong.compare import headline_score, rows

    result = ROOT / "bench" / "results" / "tuning.json"
    kept = json.loads(result.read_text())["rows"] if result.is_file() else []
    folders = sorted(p for p in OUT.iterdir() if (p / "summary.json").is_file()) if OUT.is_dir() else []
    fresh = []
    for row in rows(folders):
        method, k = row["label"].rsplit("-", 1)
        fields = sweep(method)["configs"][int(k)]
        fresh.append({"label": row["label"], "method": method, "config": int(k), "fields": fields,
                      "edits": row["edits"], "complete": row["complete"], "score": headline_score(row["end"]),
                      "end": row["end"], "immediate_reliability_gen_em": row["immediate"].get("reliability_gen_em"),
                      "seconds_per_edit": row["seconds_per_edit"]})
    by_label = {r["label"]: r for r in kept} | {r["label"]: r for r in fresh}
    out = sorted(by_label.values(), key=lambda r: (r["method"], r["config"]))
    if not out:
        sys.exit(f"{OUT}: no run folders yet")
    write_result("tuning", {"dev_edits": DEV_EDITS, "rows": out}, echo=False)
    atomic_write_text(ROOT / "docs" / "comparison" / "tuning.md", tuning_page(out))


def tuning_page(rows_) -> str:
    """One table per method, its configurations in sweep order, the best score in bold."""
    lines = ["# The tuning sweep", "",
             f"Every method gets at most {MAX_CONFIGS} configurations, run on the same {DEV_EDITS}-edit dev stream "
             "(CounterFact facts SmolLM2 knows, from the end of `counterfact_easyedit.json`, which no table reads), "
             "ranked by the comparison's one score: the mean of end-of-sequence reliability and generality "
             "(generation exact match) and locality on the records' own prompts. A configuration whose edits do not "
             f"take hold right after they are made (reliability right after each edit below {MIN_IMMEDIATE_RELIABILITY})"
             " cannot win: editing nothing would score 1/3 from locality alone. The winner goes into `hparams/`. "
             "Made by `python -m bench.tune` (its docstring has the commands); the configurations and why they "
             "were chosen are in `bench/experiments/tuning/`.", ""]
    for method in sorted({r["method"] for r in rows_}):
        runs = [r for r in rows_ if r["method"] == method]
        planned = len(sweep(method)["configs"])
        best = max((r["score"] for r in runs if r["score"] is not None and r["complete"] and eligible(r)), default=None)
        if len(runs) < planned:  # no winner before every configuration has run
            best = None
        progress = [f"In progress: {len(runs)} of {planned} configurations so far, no winner yet.", ""] \
            if len(runs) < planned else []
        lines += [f"## {method}", "", f"{sweep(method).get('why', '').strip()}", "", *progress,
                  "| # | fields | score | reliability, right after each edit (gen EM) | reliability, end (gen EM) "
                  "| generality, end (gen EM) | locality, end: records' own prompts / unrelated questions / known facts "
                  "| s/edit |", "|" + "---|" * 8]
        for r in runs:
            end = r["end"]
            score = "—" if r["score"] is None else f"{r['score']:.3f}"
            if r["score"] is not None and r["score"] == best:
                score = f"**{score}**"
            if not r["complete"]:
                score += f" ({r['edits']} edits, stopped)"
            if not eligible(r):
                score += " (edits do not take hold: cannot win)"
            fields = ", ".join(f"{k}: {_short(v)}" for k, v in r["fields"].items())
            locality = " / ".join(_f(end.get(k)) for k in ("locality", "unrelated_locality", "probe_locality"))
            lines.append(f"| {r['config']} | {fields} | {score} | {_f(r.get('immediate_reliability_gen_em'))} "
                         f"| {_f(end.get('reliability_gen_em'))} | {_f(end.get('generality_gen_em'))} | {locality} "
                         f"| {_f(r['seconds_per_edit'], 2)} |")
        notes = sweep(method).get("notes")  # what a reader of the table must know
        lines += ["", notes.strip(), ""] if notes else [""]
    for method in sorted({p.stem for p in SWEEPS.glob("*.yaml")} - {r["method"] for r in rows_}):
        notes = sweep(method).get("notes") or ""
        lines += [f"## {method}", "", sweep(method).get("why", "").strip(), "",
                  f"Not run yet: none of its {len(sweep(method)['configs'])} configurations. {notes.strip()}".strip(), ""]
    return "\n".join(lines)


def eligible(row) -> bool:
    """Whether a configuration may win: its edits took hold right after they were made."""
    immediate = row.get("immediate_reliability_gen_em")
    return immediate is not None and immediate >= MIN_IMMEDIATE_RELIABILITY


def _short(value) -> str:
    """A long list (UltraEdit's inner_params) as its first and last entries and its length."""
    return f"[{value[0]} ... {value[-1]}] ({len(value)})" if isinstance(value, list) and len(value) > 3 else str(value)


def _f(value, digits=3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("run")
    p.add_argument("--method", required=True, help="a sweep under bench/experiments/tuning/")
    sub.add_parser("report")
    args = parser.parse_args()
    setup(2)
    {"run": run, "report": report}[args.mode](args)
