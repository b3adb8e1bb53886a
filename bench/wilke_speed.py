"""WilKE speed on SmolLM2-135M, CPU, 2 threads: single-layer vs faithful 30-layer scan vs fast_scan.

    python -m bench.wilke_speed --edits 5

Each edit starts from the unedited model. One-time statistics and templates are computed first and
excluded. Writes bench/results/wilke_speed.json.
"""
import argparse
import statistics
import time

from bench.common import FAST_SCAN_ESTIMATE, known_counterfact, peak_rss_mb, setup, write_result
from edit_plugins import hparams
from edit_plugins.events import collect_events
from edit_plugins.methods.wilke import apply_wilke_to_model
from edit_plugins.models import load_model
from edit_plugins.plugins import get_method


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--memory-edits", type=int, default=0, help="sequential edits for the memory-flatness check")
    parser.add_argument("--fast-candidates", default="1,2,3,4", help="fast_scan_candidates values to time")
    args = parser.parse_args()
    setup(2)

    model, tok = load_model("smollm2-135m", "cpu")
    records = known_counterfact(model, tok, limit=args.edits + 1)
    result = {"edits": args.edits, "configs": {}, "fast_scan_estimate": FAST_SCAN_ESTIMATE}
    configs = [("smollm2-135m-rome", 1)] + [("smollm2-135m-fast", int(k)) for k in args.fast_candidates.split(",")]
    for file, candidates in configs + [("smollm2-135m", 1)]:
        hp = hparams.load(f"hparams/WilKE/{file}.yaml")
        hp.fast_scan_candidates = candidates
        name = file if candidates == 1 else f"{file}-k{candidates}"
        apply_wilke_to_model(model, tok, [records[-1].request], hp, copy=True)  # warm-up: stats, templates
        times, layers, steps = [], [], []
        for record in records[: args.edits]:
            with collect_events() as events:
                start = time.perf_counter()
                _, weights_copy = apply_wilke_to_model(model, tok, [record.request], hp, return_orig_weights=True)
                times.append(time.perf_counter() - start)
            layers.append(events[0][0].info["layer"])
            steps.append(events[0][0].info["v_steps"])
            get_method("WilKE").undo(model, weights_copy)
        result["configs"][name] = {"median_seconds": statistics.median(times), "seconds": times, "layers": layers,
                                   "v_steps": steps}
        print(name, result["configs"][name], flush=True)
    base = result["configs"]["smollm2-135m-rome"]["median_seconds"]
    for name, r in result["configs"].items():
        r["ratio_to_single_layer"] = r["median_seconds"] / base
    if args.memory_edits:
        hp = hparams.load("hparams/WilKE/smollm2-135m-fast.yaml")
        rss = []
        for i, record in enumerate((records * 10)[: args.memory_edits]):
            apply_wilke_to_model(model, tok, [record.request], hp)
            rss.append(peak_rss_mb())
        result["peak_rss_mb_after_edits"] = {str(i + 1): rss[i] for i in (0, 9, len(rss) // 2, len(rss) - 1)}
    write_result("wilke_speed", result)


if __name__ == "__main__":
    main()
