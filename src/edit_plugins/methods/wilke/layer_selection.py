"""Choosing the edit layer: WilKE's l* = argmin_l ‖ΔW_l‖_F / ‖W_l‖_F."""
from __future__ import annotations

import contextlib

import torch

from ...editing.layers import get_module, input_device, weight_out_in
from ...editing.output_head import OutputHead
from ...editing.runtime import SuffixRunner, add_at_positions, frozen_parameters
from ...editing.values import rewrite_nll
from .model_state import wilke_state


# The norm LA divides by. "current": the layer's norm now (the paper's rule, for one edit). In a long sequence
# a layer's norm grows with the edits it takes, so each edit there looks smaller than the last and the layer
# draws ever more of them; "original" divides by the norm it had when the model first came to WilKE. That
# spreads the edits, and in lifelong runs breaks the model sooner (docs/wilke.md), so "current" stays the default.
LA_NORMS = ("current", "original")


def la_norms(model, module_names, reference: str) -> dict[str, float]:
    """‖W_l‖_F for each module, as LA's denominator: now, or as first seen by WilKE on this model."""
    def now(name):
        return float(weight_out_in(get_module(model, name)).detach().float().norm())

    if reference == "current":
        return {name: now(name) for name in module_names}
    seen = wilke_state(model).original_norms
    for name in module_names:
        if name not in seen:
            seen[name] = now(name)
    return {name: seen[name] for name in module_names}


def reachable_layers(model, runner: SuffixRunner, module_names) -> set[str]:
    """The candidates where δ has a path to the loss: a nonzero gradient of the target NLL.

    One forward/backward pass with δ = 0 at every candidate at once. The last layer has no path when
    the subject is not the prompt's last token; the faithful scan would find that δ cannot move the
    target there and reject it.
    """
    batch = runner.batch
    rows = torch.arange(len(batch.seqs), device=input_device(model))
    deltas = {}
    with frozen_parameters(model), contextlib.ExitStack() as stack:
        for name in module_names:
            module = get_module(model, name)
            width = weight_out_in(module).shape[0]
            deltas[name] = torch.zeros(width, device=module.weight.device, requires_grad=True)
            stack.enter_context(add_at_positions(module, rows, runner.lookup, lambda _n=name: deltas[_n]))
        rewrite_nll(batch, OutputHead(model), runner.hidden_at(batch.loss_rows, batch.loss_pos)).backward()
    return {name for name in module_names if deltas[name].grad is not None and bool(deltas[name].grad.any())}


def estimate_layer_scores(model, runner: SuffixRunner, module_names, keys, directions,
                          norms: dict[str, float]) -> dict[str, float]:
    """fast_scan: estimate LA_l for every candidate without optimising δ there.

    The v* loss measures δ in units of ‖v₀‖: the weight decay is ‖δ‖²/‖v₀‖² and the clamp is a multiple
    of ‖v₀‖. The optimised δ follows: in faithful scans on SmolLM2 (``bench/wilke_quality.py agreement``),
    ‖δ_l‖/‖v₀,l‖ spans a factor of about 2 over the layers of one edit, ‖v₀,l‖ a factor of 5–12. So
    ‖δ_l‖ ∝ ‖v₀,l‖ roughly and, with the update's direction u (``directions``: C⁻¹k̄, or the guard's),

        LA_l ≈ ‖v₀,l‖ · ‖u_l‖ / |k_lᵀu_l| / ‖W_l‖   (up to a factor common to all layers; ‖W_l‖ from ``la_norms``).

    Only candidates where δ can reach the loss are scored. (A first-order estimate ‖δ‖ ≈ NLL/‖g_l‖
    came first: it ignores that Adam moves every coordinate by about the learning rate whatever the
    gradient's size, and it put most edits in layer 0.)
    """
    scores = {}
    for name in reachable_layers(model, runner, module_names):
        module = get_module(model, name)
        W = weight_out_in(module).detach().float()
        k = keys[name].to(W.device)
        u = directions[name].to(W.device)
        v0 = W @ k
        if getattr(module, "bias", None) is not None:
            v0 = v0 + module.bias.detach().float()
        scores[name] = float(v0.norm() * u.norm() / torch.dot(k, u).abs()) / norms[name]  # ‖ΔW‖ has |kᵀu|
    return scores
