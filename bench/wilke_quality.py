"""WilKE quality on SmolLM2-135M over the ../shared/data CounterFact facts that the model knows.

    python -m bench.wilke_quality independent --edits 40     # each edit from the unedited model
    python -m bench.wilke_quality agreement --edits 50       # fast_scan vs the faithful 30-layer scan
    python -m bench.wilke_quality agreement --edits 50 --fast-candidates 4   # the 4 best estimates optimised
    python -m bench.wilke_quality sequential --edits 300 --method smollm2-135m-rome   # no rollback
    python -m bench.wilke_quality sequential --edits 300 --method smollm2-135m-fast   # (WilKE, fast_scan)
    python -m bench.wilke_quality sequential --edits 100 --mom2-samples 0             # ROME with no C

Writes bench/results/wilke_<mode>.json, or wilke_sequential_<method>_<edits>.json (sequential runs also
leave full lifelong run folders under runs/, and record peak RSS and the interference hook's cost).
Agreement also keeps every faithful scan in wilke_faithful_scans.json and reuses it on the next run.
"""
import argparse
import collections
import json
import resource
import shutil
import time

from bench.common import bench_device, device_suffix, FAST_SCAN_ESTIMATE, ROOT, SHARED, known_counterfact, setup, write_result
from edit_plugins import hparams
from edit_plugins.events import collect_events
from edit_plugins.hookspecs import hookimpl
from edit_plugins.lifelong.metrics import edit_metrics, mean
from edit_plugins.lifelong.scoring import Scorer
from edit_plugins.lifelong import RunOptions, run_lifelong
from edit_plugins.lifelong.run_log import read_checkpoints, read_edits, read_timing
from edit_plugins.methods.wilke import apply_wilke_to_model
from edit_plugins.models import load_model
from edit_plugins.plugins import get_method, pm


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["independent", "agreement", "sequential"])
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--method", default="smollm2-135m-rome", help="sequential mode: the hparams file's name")
    parser.add_argument("--fast-candidates", type=int, default=1,
                        help="agreement mode: fast_scan_candidates (writes wilke_agreement_k<N>.json when above 1)")
    parser.add_argument("--mom2-samples", type=int, default=None,
                        help="sequential mode: pydoc documents for C (0: no C, the identity); default: the hparams'")
    args = parser.parse_args()
    setup(2)


    class PeakRss:
        """Adds the process's peak RSS so far, and its RSS now, to every edit's log line."""

        @hookimpl
        def after_edit(self, event):
            with open("/proc/self/statm") as f:
                resident_pages = int(f.read().split()[1])
            return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                    "rss_mb": round(resident_pages * resource.getpagesize() / 2**20)}


    pm.register(PeakRss(), name="bench-peak-rss")

    model, tok = load_model("smollm2-135m", bench_device())
    records = known_counterfact(model, tok, limit=args.edits if args.mode == "sequential" else None)
    print(f"{len(records)} CounterFact records known to the model (first token of target_true)")
    HP = {name: hparams.load(ROOT / "hparams" / "WilKE" / f"{name}.yaml")
          for name in ("smollm2-135m-rome", "smollm2-135m-fast", "smollm2-135m")}
    for hp in HP.values():
        hp.stats_dir = str(ROOT / "data" / "stats")  # the project's cache, whatever the working directory


    def edit_and_measure(hp, record):
        with collect_events() as events:
            _, weights_copy = apply_wilke_to_model(model, tok, [record.request], hp, return_orig_weights=True)
        metrics = edit_metrics(Scorer(model, tok), record, [[-1]] * len(record.locality))
        # neighbourhood success needs no reference; locality_acc (vs unedited) is not used here
        get_method("WilKE").undo(model, weights_copy)
        return events[0][0].info, metrics


    if args.mode == "independent":
        out = {"known_records": len(records), "edits": args.edits, "fast_scan_estimate": FAST_SCAN_ESTIMATE}
        for name in ("smollm2-135m-rome", "smollm2-135m-fast"):
            rows, layers = [], {}
            for record in records[: args.edits]:
                info, metrics = edit_and_measure(HP[name], record)
                rows.append(metrics)
                layers[str(info["layer"])] = layers.get(str(info["layer"]), 0) + 1
            metric_names = ("efficacy", "paraphrase", "neighbourhood", "rewrite_acc", "rephrase_acc")
            out[name] = {m: mean(r.get(m) for r in rows) for m in metric_names}
            out[name]["layer_histogram"] = dict(sorted(layers.items(), key=lambda kv: int(kv[0])))
            print(name, out[name], flush=True)
        write_result("wilke_independent", out)

    elif args.mode == "agreement":
        HP["smollm2-135m-fast"].fast_scan_candidates = args.fast_candidates
        agreement_name = "wilke_agreement" + (f"_k{args.fast_candidates}" if args.fast_candidates > 1 else "")
        # The faithful scan is the slow side and does not depend on the estimate, so its results (every
        # candidate's LA) are kept in wilke_faithful_scans.json and reused: changing the estimate re-runs only
        # the fast side.
        faithful_file = ROOT / "bench" / "results" / f"wilke_faithful_scans{device_suffix()}.json"
        faithful_runs = json.loads(faithful_file.read_text()) if faithful_file.is_file() else {}
        rows = []
        for record in records[: args.edits]:
            key = str(record.case_id)
            if key not in faithful_runs:
                start = time.perf_counter()
                info, metrics = edit_and_measure(HP["smollm2-135m"], record)
                faithful_runs[key] = {"layer": info["layer"], "efficacy": metrics["efficacy"],
                                      "seconds": time.perf_counter() - start, "ineligible": info["ineligible_layers"],
                                      "scores": info["layer_scores"]}
                write_result("wilke_faithful_scans", faithful_runs, echo=False, stamp=False)  # survives an interrupted run
            faithful = faithful_runs[key]
            start = time.perf_counter()
            fast, fast_metrics = edit_and_measure(HP["smollm2-135m-fast"], record)
            rows.append({"case_id": record.case_id, "faithful_layer": faithful["layer"], "fast_layer": fast["layer"],
                         "faithful_efficacy": faithful["efficacy"], "fast_efficacy": fast_metrics["efficacy"],
                         "faithful_seconds": faithful["seconds"], "fast_seconds": time.perf_counter() - start,
                         "faithful_ineligible": faithful["ineligible"], "fast_scores": fast["layer_scores"]})
            print({k: v for k, v in rows[-1].items() if k != "fast_scores"}, flush=True)
            write_result(agreement_name, {  # after every edit: a stopped run still leaves its rows
                "fast_scan_estimate": FAST_SCAN_ESTIMATE, "fast_scan_candidates": args.fast_candidates, "edits": len(rows),
                "same_layer_rate": mean(r["faithful_layer"] == r["fast_layer"] for r in rows),
                "faithful_efficacy": mean(r["faithful_efficacy"] for r in rows),
                "fast_efficacy": mean(r["fast_efficacy"] for r in rows), "rows": rows}, echo=False)

    else:
        # One method per process, so that its peak RSS is its own.
        name = args.method
        corpus = ""  # the hparams' own C; otherwise the run and its result are named after the corpus size
        if args.mom2_samples is not None:
            corpus = f"_c{args.mom2_samples}"
            HP[name].mom2_adjustment = args.mom2_samples > 0
            HP[name].mom2_n_samples = args.mom2_samples or HP[name].mom2_n_samples
        folder = ROOT / "runs" / f"bench-sequential-{name}{corpus}-{args.edits}{device_suffix()}"
        shutil.rmtree(folder, ignore_errors=True)
        checkpoints = sorted({1, 10, 50, 100, 200, 300, args.edits} & set(range(1, args.edits + 1)))
        summary = run_lifelong(HP[name], records[: args.edits], folder, model=model, tok=tok,
                               options=RunOptions(probe_data=str(SHARED / "known_1000.json"), num_probes=100,
                                                  save_every=25, checkpoints=checkpoints),
                               progress_bar=False)
        edits = read_edits(folder)
        hook_s = [e["hooks"].get("after_edit_seconds", 0.0) for e in edits]
        edit_s = [e["seconds"] for e in edits]
        late = slice(max(0, len(edits) - 50), len(edits))  # the last 50 edits, where the stored history is longest
        out = {"method": name, "edits": len(edits), "summary": summary, "fast_scan_estimate": FAST_SCAN_ESTIMATE,
               "mom2": {"adjustment": HP[name].mom2_adjustment, "n_samples": HP[name].mom2_n_samples,
                        "dataset": HP[name].mom2_dataset},
               "checkpoints": read_checkpoints(folder), "timing": read_timing(folder),
               "layer_histogram": dict(sorted(collections.Counter(str(e["layer"]) for e in edits).items(),
                                              key=lambda kv: int(kv[0]))),
               "peak_rss_mb_at": {str(e["step"]): e["hooks"]["peak_rss_mb"] for e in edits
                                  if e["step"] in (1, 50, 100, 300, len(edits))},
               # interference logging's share of each edit: hook time / (edit time without the hooks)
               "interference_cost": sum(hook_s) / (sum(edit_s) - sum(hook_s)),
               "interference_cost_last_50": sum(hook_s[late]) / (sum(edit_s[late]) - sum(hook_s[late]))}
        write_result(f"wilke_sequential_{name}_{args.edits}{corpus}", out)


if __name__ == "__main__":
    main()
