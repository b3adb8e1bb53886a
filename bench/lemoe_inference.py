"""LEMoE's inference overhead, measured on the adaptors that finished lifelong runs saved.

    python -m bench.lemoe_inference      # the saved adaptor of every full-method run in the table

A forward pass on the run's first 48 edit prompts (one padded batch), with and without the adaptor. The
two are timed alternately, so that load on the machine slows both alike; each figure is the median of
``--repeats`` passes. Writes bench/results/lemoe_inference.json.
"""
import argparse
import statistics
import time

import torch

from bench.common import bench_device, device_suffix, ROOT, SHARED, known_counterfact, setup, write_result
from edit_plugins.files import load_tensors
from edit_plugins.lifelong.data import load_records
from edit_plugins.methods.lemoe import load_adaptor_state, remove_adaptor
from edit_plugins.models import load_model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--prompts", type=int, default=48)
    args = parser.parse_args()
    setup(2)

    model, tok = load_model("smollm2-135m", bench_device())
    rows = []
    for state in sorted([*ROOT.glob(f"runs/bench-lemoe-*-full-*{device_suffix()}/state/method_state.safetensors"),
                         *ROOT.glob(f"runs/bench-lemoe-*-full-*{device_suffix()}/state/adaptor.safetensors")]):
        dataset, edits = state.parent.parent.name.split("-")[2], int(state.parent.parent.name.split("-")[-1])
        if not (ROOT / "bench" / "results" / f"lemoe_{dataset}_full_{edits}{device_suffix()}.json").is_file():
            continue  # only the runs in the benchmark table
        records = (load_records(SHARED / "zsre_mend_eval.json", num_edits=args.prompts) if dataset == "zsre"
                   else known_counterfact(model, tok, limit=max(args.prompts, 139)))[: args.prompts]
        batch = tok([r.request["prompt"] for r in records], return_tensors="pt", padding=True).to(model.device)
        tensors, metadata = load_tensors(state)

        def forward_seconds():
            start = time.perf_counter()
            with torch.no_grad():
                model(**batch)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        times = {"with": [], "without": []}
        for repeat in range(args.repeats + 1):  # the first round warms up and is not kept
            for condition in (("with", "without") if repeat % 2 else ("without", "with")):
                if condition == "with":
                    adaptor = load_adaptor_state(model, tensors, metadata, source=str(state))
                seconds = forward_seconds()
                remove_adaptor(model)
                if repeat:
                    times[condition].append(seconds)
        with_adaptor, without = statistics.median(times["with"]), statistics.median(times["without"])
        rows.append({"dataset": dataset, "edits": edits, "experts": len(adaptor.experts), "prompts": len(records),
                     "tokens": int(batch.attention_mask.sum()), "forward_seconds_with_adaptor": with_adaptor,
                     "forward_seconds_without": without, "overhead": with_adaptor / without - 1})
        print(rows[-1], flush=True)
    write_result("lemoe_inference", {"repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
