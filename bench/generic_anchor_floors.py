"""Which LEMoE anchors look like generic text, and what each anchor's floor (its best match among the reference
text's tokens, plus a margin) does to routing, on the adaptor a finished run saved (no retraining).

    .venv/bin/python -m bench.generic_anchor_floors --run runs/lemoe-generic-anchor-before/lemoe-0

The run: LEMoE's configuration 0 of the tuning sweep (50 CounterFact dev edits, 5 experts), made before anchors had
floors. Generic text: pydoc texts 64-191 (beyond the 64 that standardise the features and give the floors). Routed:
an anchor reached at any position but the first (the edit's own expert for its prompts and paraphrases, any
expert for the rest). Writes bench/results/generic_anchor_floors.json.
"""
import argparse
import json
from pathlib import Path

import torch

from bench.common import ROOT, SHARED, setup, write_result

MARGINS = (None, 0.0, 0.02, 0.05)  # None: the threshold alone


def main():
    from edit_plugins.editing.keys import module_input_sequences
    from edit_plugins.files import load_tensors
    from edit_plugins.methods.lemoe import find_adaptor, load_adaptor_state
    from edit_plugins.methods.lemoe.injection import reference_inputs
    from edit_plugins.models import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "lemoe-generic-anchor-before" / "lemoe-0")
    parser.add_argument("--dev", type=Path, default=ROOT / "runs" / "bench-tune" / "dev_counterfact.json")
    args = parser.parse_args()
    setup(2)
    model, tok = load_model("smollm2-135m", "cpu")
    tensors, metadata = load_tensors(args.run / "state" / "method_state.safetensors")
    load_adaptor_state(model, tensors, metadata)
    name, adaptor = find_adaptor(model)
    router = adaptor.router
    first = len(reference_inputs(model, tok, name, "pydoc", 64))  # the tokens that gave the floors
    generic = router.features(reference_inputs(model, tok, name, "pydoc", 192)[first:])
    generic_max = (generic @ router.anchors.T).max(dim=0).values

    dev = json.loads(args.dev.read_text())
    groups = {"own prompts": [d["prompt"] for d in dev], "paraphrases": [d["rephrase_prompt"] for d in dev],
              "neighbours": [d["locality_prompt"] for d in dev],
              "known facts": [k["prompt"] for k in json.loads((SHARED / "known_1000.json").read_text())[:200]],
              "unrelated questions": [z["loc"] for z in json.loads((SHARED / "zsre_mend_eval.json").read_text())[:200]]}
    cosines = {g: [router.features(x[1:]) @ router.anchors.T
                   for x in module_input_sequences(model, tok, prompts, name)] for g, prompts in groups.items()}
    rows = []
    for margin in MARGINS:
        required = torch.full_like(generic_max, router.threshold)
        if margin is not None:
            required = torch.maximum(required, generic_max + margin)
        row = {"margin": margin, "anchors_that_cannot_fire": int((required > 1).sum())}
        for group, sims in cosines.items():
            reached = [(s >= required).any(dim=0) for s in sims]
            if group in ("own prompts", "paraphrases"):
                routed = [bool(r[router.anchor_expert == router.anchor_expert[i]].any()) for i, r in enumerate(reached)]
            else:
                routed = [bool(r.any()) for r in reached]
            row[group] = sum(routed) / len(routed)
        rows.append(row)
        print(row, flush=True)
    write_result("generic_anchor_floors", {
        "run": str(args.run.relative_to(ROOT)) if args.run.is_relative_to(ROOT) else str(args.run),
        "threshold": router.threshold, "anchors": len(router.anchors), "generic_tokens": len(generic),
        "generic_max_per_anchor": [round(v, 3) for v in generic_max.tolist()], "rows": rows})


if __name__ == "__main__":
    main()
