"""Every lifelong editor side by side on SmolLM2-135M: the same records, order, checkpoints and probes.

    PYTHONPATH=../shared/easyedit-head .venv-easyedit-head/bin/python -m bench.compare_methods run \
        --stream counterfact --edits 100 --methods rome,wilke,lemoe,easyedit-rome,memit,grace
    .venv/bin/python -m bench.compare_methods report --stream counterfact --edits 100

EasyEdit's methods need EasyEdit HEAD importable: run in the environment the test command builds for it
(`.venv-easyedit-head`, HEAD on PYTHONPATH); ours run there too, so every row shares one transformers.
`run` fills the covariance methods' statistics offline (`edit-plugins stats`), then runs one
`edit-plugins compare` over the chosen methods: each method in its own process, a complete run folder
kept, a stopped one resumed. Methods left out are listed with the reason (``NOT_RUN``).

Streams: ``counterfact``, the CounterFact facts SmolLM2 knows (first token of ``target_true``), those of
``counterfact_known.json`` in file order (139 of its 300); ``zsre``, ``wiki_counterfact`` and ``wiki_recent``,
the KnowEdit files in file order. Unrelated questions: 200 of ``zsre_mend_eval.json``'s NQ questions, the rest
WISE's training pool.
Probes: 100 facts of ``known_1000.json``. ``report`` (also run after ``run``) merges the run folders' rows
into bench/results/compare_<stream>_<edits>.json, keeping rows whose folders are gone (they do not outlive
a session), and writes the table and retention plot into docs/comparison/.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from bench.common import (ROOT, SHARED, bench_device, device_suffix, fill_covariance_stats, known_counterfact, setup,
                          write_result)

METHODS = {  # name (its run folder): (hparams file under hparams/, fields set on it)
    "rome": ("WilKE/smollm2-135m-rome.yaml", {}),  # our fixed-layer baseline
    "wilke": ("WilKE/smollm2-135m-fast.yaml", {}),
    "wilke-guard": ("WilKE/smollm2-135m-fast.yaml", {"interference_guard": True}),
    "lemoe": ("LEMoE/smollm2-135m.yaml", {"order_planning": False}),  # the stream's order, as every row
    "lemoe-planned": ("LEMoE/smollm2-135m.yaml", {}),  # its own planned order: an extra row
    "easyedit-rome": ("easyedit/ROME/smollm2-135m.yaml", {}),
    "memit": ("easyedit/MEMIT/smollm2-135m.yaml", {}),
    "alphaedit": ("easyedit/AlphaEdit/smollm2-135m.yaml", {}),
    "wise": ("easyedit/WISE/smollm2-135m.yaml", {}),
    "grace": ("easyedit/GRACE/smollm2-135m.yaml", {}),
    "ultraedit": ("easyedit/ULTRAEDIT/smollm2-135m.yaml", {}),
    "ft-m": ("easyedit/FT/smollm2-135m.yaml", {}),
    "locft": ("LocFT/smollm2-135m.yaml", {}),
}
COVARIANCE_METHODS = {"easyedit-rome", "memit", "alphaedit"}  # EasyEdit reads their C through layer_stats
# Methods not in a stream's table, and why, as measured here (reported beside the table).
NOT_RUN = {
    "wilke-guard": "its runs on the same facts are in the interference guard section",
    "grace": "its rows, measured before the adapter scored GRACE as its authors do (docs/comparison/README.md): "
             "GRACE.edit leaves its codebook's query position at the last edited prompt's end, and the bare model"
             " was scored with every later prompt looked up there; they measured that position, not GRACE; "
             "removed, to be re-run",
    "wise": "its rows, measured before the adapter fixes (docs/comparison/README.md): WISE was scored in batches "
            "of up to 64 rows, which its adaptor routes as one by their mean distance, trained with the tokenizer"
            " padding on the right (BaseEditor pads on the left for it), and beside the record's own locality "
            "prompt, which is also scored. Its hparams are still those of EasyEdit's llama-7b file (act_margin "
            "[5, 20, 10]; its routing loss was 33-68 after 70 steps). Rows removed, to be re-run, tuned",
    "ultraedit": "its rows, measured before the adapter fixes (docs/comparison/README.md): trained with the "
                 "tokenizer padding on the right (UltraEdit aligns labels to the last positions, so shorter rows "
                 "trained on the wrong tokens) and with its lifelong normaliser rebuilt at every call; its lr "
                 "(1e-6) is EasyEdit's for 3,584-5,376-wide models and enters multiplied by the squared norm of "
                 "standardised keys (about the input width, 576 here). Rows removed, to be re-run, tuned",
}
STREAM_FILES = {"zsre": "knowedit_zsre.json", "wiki_counterfact": "knowedit_wiki_counterfact.json",
                "wiki_recent": "knowedit_wiki_recent.json"}  # in file order; counterfact: the known facts
SLOW_FOR_LONG_RUNS = 10.0  # s/edit: slower methods get no 1,000-edit row on this CPU (about 3 hours a run)
KNOWN_IN_ROME_FILE = 139
NOTES = {  # what a row's numbers mean, as measured here (reported under the table)
    "ultraedit": "EasyEdit's gemma-3-27b settings, untuned (lr 1e-6): scored as EasyEdit scores it (its differential "
                 "test agrees edit by edit), the edits do not take hold here; its lr enters multiplied by the squared "
                 "norm of standardised keys (about the input width: 576 here against 3,584-5,376 in EasyEdit's files). "
                 "The tuning sweep comes next",
    "ft-m": "EasyEdit's llama-7b FT-M settings, untuned: 0.000 generation exact match already right after each edit; "
            "its element-wise norm constraint (5e-5) most likely holds the weights where they were. The tuning sweep "
            "comes next",
    "locft": "the paper's settings, untuned, in one call of all 100 edits: mini-batches of 100 over 25 epochs are 25 "
             "Adam steps (750 for the paper's 3,000 edits); the steps must scale with T. The tuning sweep comes next",
    "lemoe-planned": "on KnowEdit ZsRE, locality (agreement with the unedited model on the records' locality prompts) is "
             "about 0.5 from the first edits on (0.366 at step 10, 0.505 at 1,000) while probe locality stays 0.97: "
             "every KnowEdit ZsRE locality prompt asks another relation of the edited subject (\"The strand "
             "orientation of ZIC3 is\"), and LEMoE routes by the subject's key, so those prompts reach the edit's "
             "expert",
}


def not_run_reason(method, edits) -> str:
    """Why a method has no row: past the bound on 1,000-edit rows, its measured s/edit at T=100 says why."""
    if edits >= 1000:
        shorter = ROOT / "bench" / "results" / "compare_counterfact_100.json"
        rows = json.loads(shorter.read_text())["rows"] if shorter.is_file() else []
        seconds = next((r["seconds_per_edit"] for r in rows if r["label"] == method), None)
        if seconds is not None and seconds > SLOW_FOR_LONG_RUNS:
            return (f"{seconds:.1f} s/edit in the 100-edit CounterFact run, above the {SLOW_FOR_LONG_RUNS:.0f} s/edit "
                    f"bound for {edits}-edit rows on this CPU")
    return NOT_RUN.get(method, "not run yet")


def out_dir(stream, edits):
    return ROOT / "runs" / f"bench-compare-{stream}-{edits}{device_suffix()}"


def stream_file(stream, edits) -> tuple:
    """The data file and the number of its records to edit, in order."""
    if stream in STREAM_FILES:
        return SHARED / STREAM_FILES[stream], edits
    if edits > KNOWN_IN_ROME_FILE:
        sys.exit(f"--stream counterfact has {KNOWN_IN_ROME_FILE} known facts in one file; ask for at most that")
    path = out_dir(stream, edits) / "known_counterfact.json"
    if not path.is_file():
        from edit_plugins.files import atomic_write_text
        from edit_plugins.models import load_model

        model, tok = load_model("smollm2-135m", bench_device())
        keep = [r.case_id for r in known_counterfact(model, tok, limit=edits)]
        raw = {r["case_id"]: r for r in json.loads((SHARED / "counterfact_known.json").read_text())}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps([raw[i] for i in keep]))
        del model
    return path, edits


def hparams_file(stream, edits, name) -> Path:
    """The method's hparams, copied as <name>.yaml (compare names each run folder after its file's stem)."""
    file, fields = METHODS[name]
    path = out_dir(stream, edits) / "hparams" / f"{name}.yaml"
    config = yaml.safe_load((ROOT / "hparams" / file).read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# hparams/{file}" + "".join(f", {k}: {v}" for k, v in fields.items()) + "\n"
                    + yaml.safe_dump({**config, **fields}, sort_keys=False))
    return path


def run(args):
    names = args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    data, edits = stream_file(args.stream, args.edits)
    files = {name: hparams_file(args.stream, args.edits, name) for name in names}
    for name in names:
        if name in COVARIANCE_METHODS:
            fill_covariance_stats(files[name])
    cli = [sys.executable, "-m", "edit_plugins.cli"]
    command = [*cli, "compare", "--data", str(data), "--num-edits", str(edits), "--out", str(out_dir(args.stream, args.edits)),
               "--probe-data", str(SHARED / "known_1000.json"), "--num-probes", "100",
               "--unrelated-data", str(SHARED / "zsre_mend_eval.json"), "--num-unrelated", "200"]
    for name in names:
        command += ["--hparams", str(files[name])]
    subprocess.run(command, check=True, cwd=ROOT)  # cwd: EasyEdit hparams name stats_dir relative to it
    report(args)


def report(args):
    """Rows for every run folder of the stream, finished or not, merged with the rows already in its result
    file (run folders do not outlive a session; results do); the table and plot into docs/comparison/."""
    from edit_plugins.files import atomic_write_text
    from edit_plugins.lifelong.compare import plot, rows, table

    base = out_dir(args.stream, args.edits)
    folders = sorted(p for p in base.iterdir() if (p / "summary.json").is_file()) if base.is_dir() else []
    name = f"{args.stream}_{args.edits}{device_suffix()}"
    result = ROOT / "bench" / "results" / f"compare_{name}.json"
    fresh = rows(folders)
    for row in fresh:
        row["hparams"], row["fields"] = METHODS[row["label"]]
    kept = json.loads(result.read_text())["rows"] if result.is_file() else []
    by_label = {r["label"]: r for r in kept} | {r["label"]: r for r in fresh}
    out = [by_label[m] for m in METHODS if m in by_label]
    if not out:
        sys.exit(f"{base}: no run folders yet")
    docs = ROOT / "docs" / "comparison"
    docs.mkdir(exist_ok=True)
    atomic_write_text(docs / f"{name}.md", table(out))
    plot(out, docs / f"{name}_retention.png")
    missing = {m: not_run_reason(m, args.edits) for m in METHODS if m not in by_label}
    notes = {m: NOTES[m] for m in by_label if m in NOTES}
    write_result(f"compare_{args.stream}_{args.edits}", {"stream": args.stream, "edits": args.edits, "rows": out,
                                                          "notes": notes, "not_run": missing}, echo=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("run", "report"):
        p = sub.add_parser(mode)
        p.add_argument("--stream", choices=["counterfact", *STREAM_FILES], required=True)
        p.add_argument("--edits", type=int, default=100)
        if mode == "run":
            p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {sorted(METHODS)}")
    args = parser.parse_args()
    setup(2)
    {"run": run, "report": report}[args.mode](args)
