"""How far the later updates of a lifelong run move the output of the keys its earlier edits left at each
edited layer, added up over many updates, beside what each update alone moves them (the interference log's
figure is per update):

    python -m bench.held_key_drift --method rome-soft-guard-spread-every-10-mean-key --edits 200 --watch 20

Watches the first ``--watch`` edits' subject keys k_j at every layer edited, read right after edit j, and
v_j = W k_j then. After each later edit t, per watched key and layer: the step ‖ΔW_t k_j‖ / ‖v_j‖, and the
drift ‖W k_j − v_j‖ / ‖v_j‖ with k_j as read then (the updates alone) and as it reads now (stale keys too).
If the steps added up in one direction the drift would be their sum; if at random, their root sum of
squares. Writes bench/results/held_key_drift_<stream>_<method>_<edits>.json as it goes.
"""
import argparse
import statistics

from bench.common import bench_device, setup, write_result
from bench.interference_guard import experiments, method_hparams, stream_records

REPORT_AT = (10, 25, 50, 100, 150, 200, 300, 500, 1000)


def median(values):
    return statistics.median(values) if values else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, choices=sorted(experiments()))
    parser.add_argument("--stream", default="counterfact", choices=("counterfact", "zsre"))
    parser.add_argument("--edits", type=int, default=200)
    parser.add_argument("--watch", type=int, default=20, help="how many of the first edits to follow")
    args = parser.parse_args(argv)
    if not 0 < args.watch < args.edits:
        parser.error(f"--watch must be between 1 and --edits - 1, got {args.watch}")
    setup()

    from edit_plugins.editing.keys import compute_keys
    from edit_plugins.editing.layers import get_module, weight_out_in
    from edit_plugins.editing.requests import normalize_requests
    from edit_plugins.events import collect_events
    from edit_plugins.methods.wilke import apply_wilke_to_model
    from edit_plugins.models import load_model

    model, tok = load_model("smollm2-135m", bench_device())
    records = stream_records(model, tok, args.stream, args.edits)
    hp = method_hparams(args.method)

    def weight(module):
        return weight_out_in(get_module(model, module)).detach().float()

    modules, watched, rows, totals = [], [], [], {}
    for t, record in enumerate(records, start=1):
        before = {m: weight(m).clone() for m in modules}
        with collect_events() as fired:
            apply_wilke_to_model(model, tok, [record.request], hp)
        for m in fired[0][0].modules:
            if m not in modules:
                modules.append(m)
        if watched:
            now = compute_keys(model, tok, [w["request"] for w in watched], modules)
            row = {"step": t, "layers": {}}
            for m in modules:
                W = weight(m)
                delta = W - before.get(m, W)  # a layer first edited now: no earlier key is watched there
                steps, drift, drift_now, summed, rss = [], [], [], [], []
                for j, w in enumerate(watched):
                    if m not in w["keys"]:
                        continue
                    k, v = w["keys"][m], w["values"][m]
                    scale = float(v.norm())
                    step = float((delta @ k).norm()) / scale
                    total = totals.setdefault((j, m), [0.0, 0.0])
                    total[0] += step
                    total[1] += step * step
                    steps.append(step)
                    drift.append(float((W @ k - v).norm()) / scale)
                    drift_now.append(float((W @ now[m][j] - v).norm()) / scale)
                    summed.append(total[0])
                    rss.append(total[1] ** 0.5)
                row["layers"][m] = {"step_median": median(steps), "drift_median": median(drift),
                                    "drift_now_median": median(drift_now), "drift_max": max(drift, default=None),
                                    "sum_of_steps_median": median(summed), "root_sum_squares_median": median(rss)}
            rows.append(row)
        if t <= args.watch:  # this edit's keys and values, as the edit left them
            request = normalize_requests([record.request])[0]
            keys = compute_keys(model, tok, [request], modules)
            watched.append({"request": request, "keys": {m: keys[m][0] for m in modules},
                            "values": {m: weight(m) @ keys[m][0] for m in modules}})
        if t in REPORT_AT or t == len(records):
            write_result(f"held_key_drift_{args.stream}_{args.method}_{args.edits}", {
                "method": args.method, "stream": args.stream, "edits_done": t, "watched": len(watched),
                "modules": modules, "rows": [r for r in rows if r["step"] in REPORT_AT or r["step"] == t]},
                echo=False)
            print(t, {m.split(".")[2]: (round(v["step_median"], 4), round(v["drift_median"], 4),
                                        round(v["sum_of_steps_median"], 4), round(v["root_sum_squares_median"], 4))
                      for m, v in rows[-1]["layers"].items()} if rows else "", flush=True)


if __name__ == "__main__":
    main()
