"""LEMoE lifelong benchmark on SmolLM2-135M: one variant, one dataset, one fresh process.

    python -m bench.lemoe_lifelong --dataset zsre --edits 300 --variant full
    variants: full | templates | token_span | token_span_templates | token_span_templates_longer | softmax_router | no_order_planning | unfrozen | negatives | layer11 | negatives_layer11 | wilke | rome
    datasets: zsre (MEND's, NQ locality) | knowedit_zsre (same-subject locality; 200 NQ questions scored beside) | counterfact

A run stopped before its end (a session's end, a kill) continues from its last saved state when the same
command is run again (``--fresh`` starts it over); its wall time is then this process's.

Writes bench/results/lemoe_<dataset>_<variant>_<edits>.json: the run's summary, wall time, peak RSS,
and for LEMoE the adaptor's size and training seconds per expert (inference overhead:
bench/lemoe_inference.py, on the adaptor the run saves).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time

import torch

from bench.common import bench_device, device_suffix, FAST_SCAN_ESTIMATE, ROOT, SHARED, known_counterfact, peak_rss_mb, setup, write_result
from bench.relation_negatives import NEGATIVES
from edit_plugins import hparams
from edit_plugins.lifelong.data import load_records
from edit_plugins.lifelong.run_log import read_checkpoints, read_edits, read_timing
from edit_plugins.lifelong import RunOptions, resume_lifelong, run_lifelong
from edit_plugins.models import load_model


def main():
    setup()

    VARIANTS = {
        "full": ("LEMoE/smollm2-135m.yaml", {}),
        "templates": ("LEMoE/smollm2-135m.yaml", {"context_template_length_params": [[10, 2]]}),
        "token_span": ("LEMoE/smollm2-135m.yaml", {"routing_span": "token"}),
        "token_span_templates": ("LEMoE/smollm2-135m.yaml", {"routing_span": "token",
                                                             "context_template_length_params": [[10, 4]]}),
        "token_span_templates_longer": ("LEMoE/smollm2-135m.yaml", {"routing_span": "token", "steps": 60,
                                                                    "early_stop_loss": 0.01,
                                                                    "context_template_length_params": [[10, 4]]}),
        "softmax_router": ("LEMoE/smollm2-135m.yaml", {"routing": "softmax"}),
        "no_order_planning": ("LEMoE/smollm2-135m.yaml", {"order_planning": False}),
        "unfrozen": ("LEMoE/smollm2-135m.yaml", {"freeze_previous_experts": False}),
        "negatives": ("LEMoE/smollm2-135m.yaml", {"negative_templates": NEGATIVES}),
        "layer11": ("LEMoE/smollm2-135m.yaml", {"layer": 11}),
        "negatives_layer11": ("LEMoE/smollm2-135m.yaml", {"layer": 11, "negative_templates": NEGATIVES}),
        "wilke": ("WilKE/smollm2-135m-fast.yaml", {}),
        "rome": ("WilKE/smollm2-135m-rome.yaml", {}),
    }

    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=["zsre", "knowedit_zsre", "counterfact"], required=True)
    parser.add_argument("--edits", type=int, default=300)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="full")
    parser.add_argument("--fresh", action="store_true", help="start over instead of continuing a stopped run")
    args = parser.parse_args()

    model, tok = load_model("smollm2-135m", bench_device())
    if args.dataset == "zsre":
        records = load_records(SHARED / "zsre_mend_eval.json", num_edits=args.edits)
    elif args.dataset == "knowedit_zsre":
        records = load_records(SHARED / "knowedit_zsre.json", num_edits=args.edits)
    else:
        records = known_counterfact(model, tok, limit=args.edits)  # only facts the model knows
    path, changes = VARIANTS[args.variant]
    hp = hparams.load(ROOT / "hparams" / path)
    for key, value in changes.items():
        setattr(hp, key, value)
    if hasattr(hp, "stats_dir"):
        hp.stats_dir = str(ROOT / "data" / "stats")

    # KnowEdit's locality prompts ask about the edited subjects: unrelated questions are scored beside them
    unrelated = ({"unrelated_data": str(SHARED / "zsre_mend_eval.json"), "num_unrelated": 200}
                 if args.dataset == "knowedit_zsre" else {})
    folder = ROOT / "runs" / f"bench-lemoe-{args.dataset}-{args.variant}-{args.edits}{device_suffix()}"
    started = time.perf_counter()
    resumed = (folder / "config.yaml").is_file() and not args.fresh
    if resumed:  # with the settings it started with, which the result then records
        import yaml

        hp = hparams.from_dict(yaml.safe_load((folder / "config.yaml").read_text())["hparams"],
                               f"{folder}/config.yaml: hparams")
        summary = resume_lifelong(folder, model=model, tok=tok, records=records, progress_bar=False)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        summary = run_lifelong(hp, records, folder, model=model, tok=tok,
                               options=RunOptions(probe_data=str(SHARED / "known_1000.json"), num_probes=100,
                                                  save_every=50, checkpoints=[1, 10, 50, 100, 200, 300],
                                                  **unrelated),
                               progress_bar=False)
    result = {"dataset": args.dataset, "variant": args.variant, "edits": len(records), "fast_scan_estimate": FAST_SCAN_ESTIMATE,
              "wall_seconds": round(time.perf_counter() - started, 1), "resumed": resumed,
              "threads": torch.get_num_threads(),
              "peak_rss_mb": round(peak_rss_mb()),
              "hparams": {k: v for k, v in vars(hp).items() if isinstance(v, (int, float, str, bool, list, type(None)))},
              "summary": summary, "checkpoints": read_checkpoints(folder),
              "timing": read_timing(folder)}

    if hp.alg_name == "LEMoE":
        from edit_plugins.methods.lemoe import adaptor_size

        edits = read_edits(folder)
        per_expert = {e["info"]["expert"]: e["info"]["train_seconds"] for e in edits if "expert" in e.get("info", {})}
        result["experts"] = len(per_expert)
        result["train_seconds_per_expert_median"] = statistics.median(per_expert.values())
        result["adaptor"] = adaptor_size(model)
    write_result(f"lemoe_{args.dataset}_{args.variant}_{args.edits}", result)


if __name__ == "__main__":
    main()
