"""Measuring knowledge superposition in a model ("Knowledge in Superposition", Hu et al. 2024).

For N facts, the key k_i at each layer is the FFN output projection's input at the subject's last
token (template "{}"). Per layer, over off-diagonal entries of four N×N matrices:
    P[i, j] = k_iᵀC⁻¹k_j / k_iᵀC⁻¹k_i            (asymmetric, unit diagonal: the interference factor)
    Q[i, j] = k_i·k_j
    whitened cosine = k_iᵀC⁻¹k_j / √(k_iᵀC⁻¹k_i · k_jᵀC⁻¹k_j)
    raw cosine
C is the uncentred second moment from the same statistics engine WilKE uses.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats
import torch

from ..errors import UserError
from ..files import read_json
from ..editing.covariance import safe_inverse, second_moments
from ..editing.keys import compute_keys
from ..editing.layers import check_layer_index, ffn_output_template, num_layers
from ..editing.requests import EditRequest
from .superposition_degree import superposition_degrees, whitened_gram

MATRICES = ("P", "Q", "whitened_cos", "raw_cos")
GAUSSIAN_TAIL_3SIGMA = 0.0027
MIN_FACTS = 3


class SuperpositionError(UserError, ValueError):
    pass


def superposition_matrices(keys: torch.Tensor, c_inv: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four N×N matrices for keys (N, d) and C⁻¹ (d, d), in float64."""
    K = keys.double()
    W = whitened_gram(K, c_inv)
    diag = W.diagonal()
    norms = K.norm(dim=1)
    return {
        "P": superposition_degrees(W),
        "Q": K @ K.T,
        "whitened_cos": W / torch.sqrt(diag[:, None] * diag[None, :]),
        "raw_cos": (K @ K.T) / (norms[:, None] * norms[None, :]),
    }


def off_diagonal(matrix: torch.Tensor) -> np.ndarray:
    n = matrix.shape[0]
    return matrix[~torch.eye(n, dtype=torch.bool)].cpu().numpy()


def distribution_stats(values: np.ndarray) -> dict:
    """Mean, std, skewness, Fisher excess kurtosis (scipy's biased estimator) and the 3σ tail mass."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std())
    tail = float(np.mean(np.abs(values - values.mean()) > 3 * std)) if std > 0 else 0.0
    return {"mean": float(values.mean()), "std": std, "skewness": float(scipy.stats.skew(values)),
            "kurtosis": float(scipy.stats.kurtosis(values, fisher=True, bias=True)),
            "tail_mass_3sigma": tail, "gaussian_tail_3sigma": GAUSSIAN_TAIL_3SIGMA}


@dataclass
class SuperpositionResult:
    model: str
    n_facts: int
    n_parameters: int
    layers: list
    stats: dict = field(default_factory=dict)  # {layer: {matrix: distribution_stats}}
    matrices: dict = field(default_factory=dict)  # {layer: {matrix: tensor}}

    def to_json(self) -> dict:
        return {"model": self.model, "n_facts": self.n_facts, "n_parameters": self.n_parameters,
                "layers": self.layers, "stats": {str(l): s for l, s in self.stats.items()}}


def facts_from_file(path, limit: int) -> list[EditRequest]:
    """(subject, prompt) facts from known_1000.json, a CounterFact or a ZsRE file."""
    raw = read_json(path)
    if not isinstance(raw, list):
        raise SuperpositionError(f"{path}: expected a JSON list of facts (known_1000.json, CounterFact or ZsRE)")
    facts = []
    for record in raw:
        rewrite = record.get("requested_rewrite", record) if isinstance(record, dict) else None
        subject = rewrite.get("subject") if isinstance(rewrite, dict) else None
        prompt = (rewrite.get("prompt") or rewrite.get("src")) if isinstance(rewrite, dict) else None
        if not isinstance(subject, str) or not isinstance(prompt, str) or not subject or not prompt:
            continue
        template = prompt if "{}" in prompt else prompt.replace(subject, "{}", 1)
        if "{}" not in template:
            continue
        facts.append(EditRequest(prompt=template, subject=subject, target_new=" x"))
        if len(facts) >= limit:
            break
    return facts


def analyze(model, tok, facts: list[EditRequest], layers="all", *, model_label="model", module_template=None,
            mom2_dataset="pydoc", mom2_n_samples=400, damping=1e-4, stats_dir="data/stats", keep_matrices=()) -> SuperpositionResult:
    if len(facts) < MIN_FACTS:
        raise SuperpositionError(f"superposition needs at least {MIN_FACTS} facts, got {len(facts)}")
    layers = list(range(num_layers(model))) if layers == "all" else list(layers)
    for layer in layers:
        check_layer_index(model, layer)
    template = module_template or ffn_output_template(model)
    modules = [template.format(l) for l in layers]
    keys = compute_keys(model, tok, facts, modules, templates=("{}",))  # one pass per batch serves all layers
    moments = second_moments(model, tok, modules, source=mom2_dataset, n_samples=mom2_n_samples,
                             stats_dir=stats_dir, model_key=model_label)
    result = SuperpositionResult(model_label, len(facts), sum(p.numel() for p in model.parameters()), layers)
    for layer, module in zip(layers, modules):
        c_inv = safe_inverse(moments[module], damping, what=f"C at {module}")
        matrices = superposition_matrices(keys[module].cpu(), c_inv)
        result.stats[layer] = {name: distribution_stats(off_diagonal(m)) for name, m in matrices.items()}
        if layer in keep_matrices:
            result.matrices[layer] = matrices
    return result


def write_outputs(result: SuperpositionResult, out_dir, heatmap_layers=()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "superposition.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    with open(out / "superposition.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "matrix", "mean", "std", "skewness", "kurtosis", "tail_mass_3sigma"])
        for layer, per_matrix in result.stats.items():
            for name, s in per_matrix.items():
                writer.writerow([layer, name, s["mean"], s["std"], s["skewness"], s["kurtosis"], s["tail_mass_3sigma"]])
    for layer in heatmap_layers:
        if layer not in result.matrices:
            continue
        P = result.matrices[layer]["P"].numpy()
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        limit = np.percentile(np.abs(P[~np.eye(len(P), dtype=bool)]), 99)
        im = axes[0].imshow(P, cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[0].set_title(f"P = p(k_i, k_j), layer {layer}")
        fig.colorbar(im, ax=axes[0])
        values = off_diagonal(result.matrices[layer]["whitened_cos"])
        axes[1].hist(values, bins=80, density=True, alpha=0.5, label="off-diagonal whitened cosine")
        grid = np.linspace(values.min(), values.max(), 300)
        axes[1].plot(grid, scipy.stats.gaussian_kde(values)(grid), label="KDE")
        axes[1].plot(grid, scipy.stats.norm.pdf(grid, values.mean(), values.std()), "--", label="normal fit")
        axes[1].set_title(f"layer {layer}: kurtosis {scipy.stats.kurtosis(values):.2f}")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"layer{layer}_P_heatmap_hist.png", dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in ("P", "whitened_cos", "raw_cos"):
        axes[0].plot(result.layers, [result.stats[l][name]["kurtosis"] for l in result.layers], marker=".", label=name)
        axes[1].plot(result.layers, [result.stats[l][name]["mean"] for l in result.layers], marker=".", label=name)
    axes[0].set(xlabel="layer", ylabel="excess kurtosis (symlog)", title="Kurtosis per layer")
    axes[0].set_yscale("symlog")
    axes[1].set(xlabel="layer", ylabel="mean", title="Mean per layer")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "kurtosis_mean_per_layer.png", dpi=110)
    plt.close(fig)


def text_summary(result: SuperpositionResult) -> str:
    lines = [f"{result.model}: {result.n_facts} facts, {result.n_parameters / 1e6:.1f}M parameters",
             f"{'layer':>5} {'P mean':>8} {'P std':>8} {'P kurt':>8} {'wcos std':>9} {'wcos kurt':>9} {'tail>3σ':>8}"]
    for layer in result.layers:
        p, w = result.stats[layer]["P"], result.stats[layer]["whitened_cos"]
        lines.append(f"{layer:>5} {p['mean']:>8.4f} {p['std']:>8.4f} {p['kurtosis']:>8.2f} "
                     f"{w['std']:>9.4f} {w['kurtosis']:>9.2f} {w['tail_mass_3sigma']:>8.4f}")
    lines.append(f"(a Gaussian puts {GAUSSIAN_TAIL_3SIGMA:.2%} beyond 3σ; excess kurtosis 0)")
    return "\n".join(lines)


def scaling_fit(results: list[SuperpositionResult], matrix="whitened_cos", statistic="kurtosis") -> dict:
    """Fit log(statistic averaged over layers) against log(parameter count)."""
    xs, ys, names = [], [], []
    for r in results:
        value = float(np.mean([r.stats[l][matrix][statistic] for l in r.layers]))
        if value <= 0:
            raise SuperpositionError(f"{r.model}: mean {statistic} of {matrix} is {value:.3g}; a log-log fit needs "
                                     "positive values (choose another statistic)")
        xs.append(math.log(r.n_parameters))
        ys.append(math.log(value))
        names.append(r.model)
    if len(xs) < 2:
        raise SuperpositionError("a scaling fit needs at least two models")
    fit = scipy.stats.linregress(xs, ys)
    return {"matrix": matrix, "statistic": statistic, "models": names, "log_params": xs, "log_value": ys,
            "slope": float(fit.slope), "r_squared": float(fit.rvalue ** 2) if len(xs) > 2 else 1.0}
