"""How much of each guarded layer's input space a soft-guarded run holds, from its run folder's saved state:

    python -m bench.guard_spectrum runs/bench-guard-counterfact-rome-soft-guard-spread-every-10-mean-key-1000 [more]

The soft guard's update direction is u ∝ (C + λG)⁻¹k, with G = Σ_j k_j k_jᵀ over the keys it holds. Along an
eigen-direction of λG relative to C (λG x = μ C x) it divides an update's interference on the held keys by
about 1 + μ: a direction with μ ≪ 1 is free, one with μ ≫ 1 is held. Per layer this counts the directions
above 1, 10 and 100 out of the layer's width. Writes bench/results/guard_spectrum_<run folder>.json.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from bench.common import setup, write_result

THRESHOLDS = (1, 10, 100)


def relative_spectrum(gram: torch.Tensor, C: torch.Tensor, weight: float) -> torch.Tensor:
    """μ with λG x = μ C x, largest first."""
    L = torch.linalg.cholesky(C)
    inner = torch.linalg.solve_triangular(L, weight * gram, upper=False)
    inner = torch.linalg.solve_triangular(L, inner.T, upper=False)
    return torch.linalg.eigvalsh((inner + inner.T) / 2).flip(0)


def layer_covariance(hp: dict, module: str) -> torch.Tensor:
    """C as the guard uses it (M⁻¹: the cached second moment, damped as the edit damps it)."""
    from edit_plugins.editing.covariance import cache_path

    path = cache_path(hp["stats_dir"], hp["model_name"], hp["mom2_dataset"], module, hp["mom2_n_samples"])
    if not path.is_file():
        raise SystemExit(f"{path}: no cached statistics for {module}; run the method once to compute them")
    data = np.load(path)
    C = torch.from_numpy(data["mom2.mom2"] / float(data["mom2.count"])).double()
    return C + hp["mom2_damping"] * C.diagonal().mean() * torch.eye(C.shape[0], dtype=C.dtype)


def main(args):
    from safetensors.torch import load_file

    for folder in map(Path, args.folders):
        hp = yaml.safe_load((folder / "config.yaml").read_text())["hparams"]
        if hp.get("guard_preserved_knowledge") or hp.get("guard_max_keys_fraction", 0) > 0:
            raise SystemExit(f"{folder}: not a soft guard in the full input space (guard_preserved_knowledge "
                             "false and guard_max_keys_fraction 0 expected)")
        state = load_file(str(folder / "state" / "method_state.safetensors"))
        progress = json.loads((folder / "state" / "progress.json").read_text())
        layers = []
        for name in sorted(k for k in state if k.endswith(".gram")):
            module = name[: -len(".gram")]
            mu = relative_spectrum(state[name].double(), layer_covariance(hp, module), hp["guard_fallback_weight"])
            layers.append({"module": module, "width": len(mu), "rank_of_G": int(torch.linalg.matrix_rank(state[name])),
                           **{f"directions_above_{t}": int((mu > t).sum()) for t in THRESHOLDS},
                           "mu_median": float(mu.median()), "mu_max": float(mu[0])})
        write_result(f"guard_spectrum_{folder.name}", {"run": folder.name, "step": progress.get("position"),
                                                       "fallback_weight": hp["guard_fallback_weight"],
                                                       "layers": layers}, echo=False)
        print(f"{folder.name} (step {progress.get('position')}, λ = {hp['guard_fallback_weight']})")
        for row in layers:
            print(f"  {row['module']}: rank of G {row['rank_of_G']} of {row['width']}; directions with μ above "
                  + ", ".join(f"{t}: {row[f'directions_above_{t}']}" for t in THRESHOLDS)
                  + f"; median μ {row['mu_median']:.3g}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    setup(1)
    main(args)
