"""The scales GRACE's radius and WISE's margins are measured in, on SmolLM2's dev stream (bench.tune's).

    .venv/bin/python -m bench.activation_scales [--layer 27]

GRACE keys a codebook entry by the down_proj input at the prompt's last token and answers a query within
``eps`` of a key (Euclidean): the sensible radii lie between the distance from a prompt to its own rephrase
(what should match) and the distance between different facts' prompts (what should not). WISE routes by
the mean over tokens of ‖silu(W'x) − silu(Wx)‖ at the down_proj output; ``act_margin`` [out-of-scope upper
bound, in-scope lower bound, gap] are in those units, which scale with the size of silu(Wx) itself.
Writes bench/results/activation_scales_layer<layer>.json.
"""
import argparse
import json

import torch

from bench.common import bench_device, setup, write_result
from bench.tune import dev_stream

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5)


def down_proj_io(model, tok, prompt: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The down_proj input and output at every token of the prompt."""
    seen = {}
    module = model.model.layers[layer].mlp.down_proj
    handle = module.register_forward_hook(lambda m, args, out: seen.update(x=args[0][0], y=out[0]))
    try:
        with torch.no_grad():
            model(**tok(prompt, return_tensors="pt").to(model.device))
    finally:
        handle.remove()
    return seen["x"].float().cpu(), seen["y"].float().cpu()


def quantiles(values: torch.Tensor) -> dict:
    return {f"q{int(q * 100):02d}": float(torch.quantile(values, q)) for q in QUANTILES}


def measure(layer: int) -> dict:
    from edit_plugins.models import load_model

    model, tok = load_model("smollm2-135m", bench_device())
    records = json.loads(dev_stream().read_text())
    act = torch.nn.functional.silu
    keys, rephrase_gap, locality_gap, token_norms, token_gaps = [], [], [], [], []
    for r in records:
        x, y = down_proj_io(model, tok, r["prompt"], layer)
        keys.append(x[-1])
        rephrase_gap.append(torch.dist(x[-1], down_proj_io(model, tok, r["rephrase_prompt"], layer)[0][-1]))
        locality_gap.append(torch.dist(x[-1], down_proj_io(model, tok, r["locality_prompt"], layer)[0][-1]))
        token_norms.append(act(y).norm(dim=-1))
        token_gaps.append((act(y[1:]) - act(y[:-1])).norm(dim=-1))
    keys = torch.stack(keys)
    pairs = torch.cdist(keys, keys)[torch.triu_indices(len(keys), len(keys), 1).unbind()]
    return {"layer": layer, "records": len(records),
            "grace_key_distance": {"other_facts": quantiles(pairs),
                                   "own_rephrase": quantiles(torch.stack(rephrase_gap)),
                                   "own_locality_prompt": quantiles(torch.stack(locality_gap)),
                                   "key_norm_median": float(keys.norm(dim=-1).median())},
            "wise_activation": {"silu_output_norm": quantiles(torch.cat(token_norms)),
                                "next_token_silu_output_distance": quantiles(torch.cat(token_gaps))}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--layer", type=int, default=27, help="SmolLM2 layer of GRACE's and WISE's shipped hparams")
    args = parser.parse_args()
    setup(2)
    write_result(f"activation_scales_layer{args.layer}", measure(args.layer))
