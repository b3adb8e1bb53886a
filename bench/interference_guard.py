"""The interference guard in long lifelong runs on SmolLM2-135M: the runner. Each experiment is a data file,
bench/experiments/interference_guard/<name>.yaml (an hparams file under hparams/, and the fields set on it);
the analysis of its run folder is bench/guard_analysis.py.

    python -m bench.interference_guard run --stream counterfact --edits 1000 --method wilke-guard
    python -m bench.interference_guard run --stream zsre --edits 1000 --method rome-guard
    PYTHONPATH=../shared/easyedit-head .venv-easyedit-head/bin/python -m bench.interference_guard run \
        --stream counterfact --edits 300 --method alphaedit    # EasyEdit's methods need EasyEdit HEAD
    python -m bench.interference_guard report        # results of every run folder, finished or not, and the
                                                     # retention plots docs/img/guard_<stream>_retention.png

One method per process (its peak RSS is its own). A run folder that exists is resumed, so a run stopped by
the end of a session continues where it was saved. Streams: ``counterfact``, the 300 CounterFact facts
SmolLM2 knows (as in ``bench.wilke_quality sequential``) and then ``counterfact_easyedit.json`` in file order;
``zsre``, ``knowedit_zsre.json`` in file order. Writes bench/results/guard_<stream>_<method>_<edits>.json.
"""
import argparse
import functools
import json
import resource

import yaml

from bench.common import ROOT, SHARED, bench_device, device_suffix, fill_covariance_stats, known_counterfact, setup
from edit_plugins.hookspecs import hookimpl

EXPERIMENTS = ROOT / "bench" / "experiments" / "interference_guard"
CHECKPOINTS = (1, 10, 100, 300, 1000)


@functools.cache
def experiments() -> dict:
    """name: (hparams file under hparams/, fields set on it), one per file in EXPERIMENTS."""
    out = {}
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        out[path.stem] = (data["hparams"], data.get("fields") or {})
    return out


def is_easyedit(method) -> bool:
    """EasyEdit's own methods (hparams under hparams/easyedit/): their statistics are filled offline first."""
    return experiments()[method][0].startswith("easyedit/")


def folder_for(stream, method, edits):
    return ROOT / "runs" / f"bench-guard-{stream}-{method}-{edits}{device_suffix()}"


def stream_records(model, tok, stream, edits):
    from edit_plugins.lifelong.data import load_records

    if stream == "zsre":
        return load_records(SHARED / "knowedit_zsre.json", num_edits=edits)
    known = known_counterfact(model, tok, limit=min(edits, 300))
    if edits <= len(known):
        return known[:edits]
    used = {r.case_id for r in known}
    rest = load_records(SHARED / "counterfact_easyedit.json")
    for r in rest:  # the two files' case ids overlap; known_counterfact numbers EasyEdit's from 100000
        r.case_id = r.request["case_id"] = 100000 + r.case_id
    return known + [r for r in rest if r.case_id not in used][: edits - len(known)]


def method_hparams(method):
    """The hparams an experiment names, its fields set, the statistics in the checkout's data/stats."""
    from edit_plugins import hparams

    file, fields = experiments()[method]
    hp = hparams.load(ROOT / "hparams" / file)
    hp.stats_dir = str(ROOT / "data" / "stats")
    for name, value in fields.items():
        setattr(hp, name, value)
    if fields:  # checked as the run's config.yaml will be on resume (EasyEdit's hparams set none)
        hp.validate(f"bench method {method!r}")
    return hp


class PeakRss:
    """Adds the process's peak RSS so far, and the guard's largest layer state (MB), to every edit's log line."""

    @hookimpl
    def after_edit(self, event):
        from edit_plugins.methods.wilke.model_state import model_guard

        guard = model_guard(event.model)
        memory = max(guard.memory().values(), default=0) / 2**20 if guard is not None else None
        return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "guard_layer_mb_max": memory}


def run(args):
    from edit_plugins.lifelong import RunOptions, resume_lifelong, run_lifelong
    from edit_plugins.methods.wilke.model_state import model_guard
    from edit_plugins.models import load_model
    from edit_plugins.plugins import pm

    pm.register(PeakRss(), name="bench-peak-rss")
    if is_easyedit(args.method):
        fill_covariance_stats(ROOT / "hparams" / experiments()[args.method][0])
    model, tok = load_model("smollm2-135m", bench_device())
    records = stream_records(model, tok, args.stream, args.edits)
    hp = method_hparams(args.method)
    folder = folder_for(args.stream, args.method, args.edits)
    if (folder / "config.yaml").is_file():
        resume_lifelong(folder, model=model, tok=tok, records=records, progress_bar=False)
    else:
        options = RunOptions(probe_data=str(SHARED / "known_1000.json"), num_probes=100, save_every=25,
                             checkpoints=[c for c in CHECKPOINTS if c <= args.edits])
        run_lifelong(hp, records, folder, model=model, tok=tok, options=options, progress_bar=False)
    guard = model_guard(model)
    memory = {m: b / 2**20 for m, b in guard.memory().items()} if guard is not None else {}
    (folder / "guard_memory.json").write_text(json.dumps(memory))
    from bench.guard_analysis import report_one

    report_one(args.stream, args.method, args.edits)


def main():
    from bench.guard_analysis import held, report

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("run")
    p.add_argument("--stream", choices=["counterfact", "zsre"], required=True)
    p.add_argument("--edits", type=int, default=1000)
    p.add_argument("--method", choices=sorted(experiments()), required=True)
    sub.add_parser("report")
    p = sub.add_parser("held", help="per block of edits: held right after their own edit, and v*'s NLL")
    p.add_argument("folders", nargs="+")
    p.add_argument("--edits", type=int)
    args = parser.parse_args()
    setup(2)
    {"run": run, "report": report, "held": held}[args.mode](args)


if __name__ == "__main__":
    main()
