"""GRACE's generation exact match with the KV cache on (our headline, as generate() runs by default) and off
(as EasyEdit generates for GRACE), on the same edited model.

    PYTHONPATH=../shared/easyedit-head .venv-easyedit-head/bin/python -m bench.grace_generation_cache \
        --hparams hparams/easyedit/GRACE/smollm2-135m.yaml

With the cache off, every step re-reads the whole sequence, so the codebook is queried at the prompt's last
token each time. With it on, that position's replaced output is cached, and each new token's own input is the
query after the first step: the answer changes only where a new token falls within a key's radius, which
a larger radius makes likelier. Edits the tuning sweep's dev stream (bench.tune), then scores the edited
prompts, their rephrases and 100 known facts both ways. Writes bench/results/grace_generation_cache.json.
"""
import argparse
import json
from pathlib import Path

from bench.common import ROOT, SHARED, bench_device, setup, write_result
from bench.tune import DEV_EDITS, dev_stream

OUT = ROOT / "runs" / "bench-grace-cache"  # not bench.tune's folder: its report reads every run there as a sweep's


def measure(hparams_path: Path) -> dict:
    from edit_plugins import hparams
    from edit_plugins.easyedit_compat import grace_query_position
    from edit_plugins.lifelong import RunOptions, run_lifelong
    from edit_plugins.lifelong.data import load_records
    from edit_plugins.lifelong.scoring import generated_answers
    from edit_plugins.models import load_model

    model, tok = load_model("smollm2-135m", bench_device())
    hp = hparams.load(hparams_path)
    records = load_records(dev_stream(), num_edits=DEV_EDITS)
    run_lifelong(hp, records, OUT / hparams_path.stem, model=model, tok=tok,
                 options=RunOptions(checkpoints=[DEV_EDITS], num_probes=0), progress_bar=False)
    known = json.loads((SHARED / "known_1000.json").read_text())[:100]
    groups = {"rewrite": [(r.request["prompt"], r.request["target_new"]) for r in records],
              "rephrase": [(p, r.request["target_new"]) for r in records for p in r.rephrase_prompts],
              "known_facts": [(k["prompt"], k["attribute"]) for k in known]}
    result = {"hparams": str(hparams_path), "eps": hp.eps, "edits": len(records)}
    for name, pairs in groups.items():
        on, off = (generated_answers(model, tok, pairs, batch_size=1, before_forward=grace_query_position,
                                     use_cache=cache) for cache in (True, False))
        result[name] = {"pairs": len(pairs), "cache_on": sum(on) / len(on), "cache_off": sum(off) / len(off),
                        "pairs_that_differ": sum(a != b for a, b in zip(on, off))}
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--hparams", type=Path, required=True, help="a GRACE hparams file")
    args = parser.parse_args()
    setup(2)
    write_result("grace_generation_cache", measure(args.hparams))
