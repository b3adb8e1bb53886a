"""WilKE quality on SmolLM2-135M over the ../shared/data CounterFact facts that the model knows.

    python bench/wilke_quality.py independent --edits 40     # each edit from the unedited model
    python bench/wilke_quality.py agreement --edits 10       # fast_scan vs the faithful 30-layer scan
    python bench/wilke_quality.py sequential --edits 300 --method smollm2-135m-rome   # no rollback
    python bench/wilke_quality.py sequential --edits 300 --method smollm2-135m-fast   # (WilKE, fast_scan)

Writes bench/results/wilke_<mode>.json, or wilke_sequential_<method>_<edits>.json (sequential runs also
leave full lifelong run folders under runs/, and record peak RSS and the interference hook's cost).
"""
import argparse
import collections
import json
import resource
import shutil
import time

from common import ROOT, SHARED, known_counterfact, setup_threads, write_result

parser = argparse.ArgumentParser()
parser.add_argument("mode", choices=["independent", "agreement", "sequential"])
parser.add_argument("--edits", type=int, default=40)
parser.add_argument("--method", default="smollm2-135m-rome", help="sequential mode: the hparams file's name")
args = parser.parse_args()
setup_threads(2)

from edit_plugins import hparams  # noqa: E402
from edit_plugins.events import collect_events  # noqa: E402
from edit_plugins.lifelong import evaluate  # noqa: E402
from edit_plugins.lifelong.runner import RunOptions, run_lifelong  # noqa: E402
from edit_plugins.methods.wilke import apply_wilke_to_model  # noqa: E402
from edit_plugins.hookspecs import hookimpl  # noqa: E402
from edit_plugins.models import load_model  # noqa: E402
from edit_plugins.plugins import pm  # noqa: E402


class PeakRss:
    """Adds the process's peak RSS so far, and its RSS now, to every edit's log line."""

    @hookimpl
    def after_edit(self, event):
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "rss_mb": round(resident_pages * resource.getpagesize() / 2**20)}


pm.register(PeakRss(), name="bench-peak-rss")

model, tok = load_model("smollm2-135m", "cpu")
records = known_counterfact(model, tok, limit=args.edits if args.mode == "sequential" else None)
print(f"{len(records)} CounterFact records known to the model (first token of target_true)")
HP = {name: hparams.load(ROOT / "hparams" / "WilKE" / f"{name}.yaml")
      for name in ("smollm2-135m-rome", "smollm2-135m-fast", "smollm2-135m")}
for hp in HP.values():
    hp.stats_dir = str(ROOT / "data" / "stats")  # the project's cache, whatever the working directory


def edit_and_measure(hp, record):
    with collect_events() as events:
        _, weights_copy = apply_wilke_to_model(model, tok, [record.request], hp, return_orig_weights=True)
    metrics = evaluate.edit_metrics(model, tok, record, [[-1]] * len(record.locality))
    # neighbourhood success needs no reference; locality_acc (vs unedited) is not used here
    for param, value in weights_copy.items():
        model.get_parameter(param).data.copy_(value)
    return events[0][0].info, metrics


if args.mode == "independent":
    out = {"known_records": len(records), "edits": args.edits}
    for name in ("smollm2-135m-rome", "smollm2-135m-fast"):
        rows, layers = [], {}
        for record in records[: args.edits]:
            info, metrics = edit_and_measure(HP[name], record)
            rows.append(metrics)
            layers[str(info["layer"])] = layers.get(str(info["layer"]), 0) + 1
        out[name] = {m: evaluate.mean(r.get(m) for r in rows) for m in ("efficacy", "paraphrase", "neighbourhood", "rewrite_acc")}
        out[name]["layer_histogram"] = dict(sorted(layers.items(), key=lambda kv: int(kv[0])))
        print(name, out[name], flush=True)
    write_result("wilke_independent", out)

elif args.mode == "agreement":
    same, rows = 0, []
    for record in records[: args.edits]:
        t0 = time.perf_counter()
        faithful, f_metrics = edit_and_measure(HP["smollm2-135m"], record)
        t1 = time.perf_counter()
        fast, s_metrics = edit_and_measure(HP["smollm2-135m-fast"], record)
        t2 = time.perf_counter()
        same += faithful["layer"] == fast["layer"]
        rows.append({"case_id": record.case_id, "faithful_layer": faithful["layer"], "fast_layer": fast["layer"],
                     "faithful_efficacy": f_metrics["efficacy"], "fast_efficacy": s_metrics["efficacy"],
                     "faithful_seconds": t1 - t0, "fast_seconds": t2 - t1,
                     "faithful_ineligible": faithful["ineligible_layers"]})
        print(rows[-1], flush=True)
    write_result("wilke_agreement", {"edits": len(rows), "same_layer_rate": same / len(rows),
                                     "faithful_efficacy": evaluate.mean(r["faithful_efficacy"] for r in rows),
                                     "fast_efficacy": evaluate.mean(r["fast_efficacy"] for r in rows), "rows": rows})

else:
    # One method per process, so that its peak RSS is its own.
    name = args.method
    folder = ROOT / "runs" / f"bench-sequential-{name}-{args.edits}"
    shutil.rmtree(folder, ignore_errors=True)
    checkpoints = sorted({1, 10, 50, 100, 200, 300, args.edits} & set(range(1, args.edits + 1)))
    summary = run_lifelong(HP[name], records[: args.edits], folder, model=model, tok=tok,
                           options=RunOptions(probe_data=str(SHARED / "known_1000.json"), num_probes=100,
                                              save_every=25, checkpoints=checkpoints),
                           progress_bar=False)
    edits = [json.loads(line) for line in (folder / "edits.jsonl").read_text().splitlines()]
    hook_s = [e["hooks"].get("after_edit_seconds", 0.0) for e in edits]
    edit_s = [e["seconds"] for e in edits]
    late = slice(max(0, len(edits) - 50), len(edits))  # the last 50 edits, where the stored history is longest
    out = {"method": name, "edits": len(edits), "summary": summary,
           "checkpoints": [json.loads(line) for line in (folder / "checkpoints.jsonl").read_text().splitlines()],
           "timing": json.loads((folder / "timing.json").read_text()),
           "layer_histogram": dict(sorted(collections.Counter(str(e["layer"]) for e in edits).items(),
                                          key=lambda kv: int(kv[0]))),
           "peak_rss_mb_at": {str(e["step"]): e["hooks"]["peak_rss_mb"] for e in edits
                              if e["step"] in (1, 50, 100, 300, len(edits))},
           # interference logging's share of each edit: hook time / (edit time without the hooks)
           "interference_cost": sum(hook_s) / (sum(edit_s) - sum(hook_s)),
           "interference_cost_last_50": sum(hook_s[late]) / (sum(edit_s[late]) - sum(hook_s[late]))}
    write_result(f"wilke_sequential_{name}_{args.edits}", out)
