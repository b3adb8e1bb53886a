"""How far a lifelong run has moved each edited layer, from its run folder's saved state (SmolLM2-135M):

    python -m bench.edited_layers runs/bench-guard-counterfact-wilke-100 [more run folders]

Per edited FFN output projection: ‖ΔW‖/‖W‖, ΔW's and W's largest singular values, and the median of
‖ΔW x‖/‖W x‖ over its inputs x on three kinds of text: CPython's docs (the default C's corpus), text the
model samples itself, and the probe prompts (100 facts of known_1000.json). Writes
bench/results/edited_layers_<run folder>.json.
"""
import argparse
import json
from pathlib import Path

import torch

from bench.common import SHARED, setup, write_result


def layer_report(model, tok, edited: dict, texts: dict) -> list[dict]:
    from edit_plugins.editing.keys import module_input_sequences

    params = dict(model.named_parameters())
    rows = []
    for name in sorted(edited, key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")]):
        W0 = params[name].detach().float()
        delta = edited[name].float() - W0
        row = {"parameter": name, "delta_rel_norm": float(delta.norm() / W0.norm()),
               "delta_top_singular": float(torch.linalg.svdvals(delta)[0]),
               "weight_top_singular": float(torch.linalg.svdvals(W0)[0])}
        module = name.rsplit(".", 1)[0]
        for label, batch in texts.items():
            xs = torch.cat([x[1:] for x in module_input_sequences(model, tok, batch, module)]).float()
            row[f"output_change_median_{label}"] = float(((xs @ delta.T).norm(dim=1) / (xs @ W0.T).norm(dim=1)).median())
        rows.append(row)
    return rows


def main(args):
    from safetensors.torch import load_file

    from edit_plugins.editing.corpora import pydoc_texts, self_generated_texts
    from edit_plugins.models import load_model

    model, tok = load_model("smollm2-135m", "cpu")
    known = json.loads((SHARED / "known_1000.json").read_text())
    texts = {"pydoc": [t[:400] for t in pydoc_texts()[:40]],  # position 0 (an attention sink) is left out below
             "self": [tok.decode(s) for s in self_generated_texts(model, tok, 32)],
             "probes": [k["prompt"] for k in known[:100]]}
    for folder in map(Path, args.folders):
        edited = load_file(str(folder / "state" / "edited_parameters.safetensors"))
        progress = json.loads((folder / "state" / "progress.json").read_text())
        rows = layer_report(model, tok, edited, texts)
        name = folder.name if folder.parent.name == "runs" else f"{folder.parent.name}-{folder.name}"  # compare's
        write_result(f"edited_layers_{name}", {"run": name, "step": progress.get("position"), "layers": rows},
                     echo=False)
        print(f"{name} (step {progress.get('position')})")
        for r in rows:
            print(f"  {r['parameter']}: ‖ΔW‖/‖W‖ {r['delta_rel_norm']:.3f}, top σ {r['delta_top_singular']:.1f} "
                  f"(W {r['weight_top_singular']:.1f}), ‖ΔWx‖/‖Wx‖ " + ", ".join(
                      f"{k} {r[f'output_change_median_{k}']:.3f}" for k in texts))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    setup(2)
    main(args)
