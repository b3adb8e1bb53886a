"""Choosing the edit layer: WilKE's l* = argmin_l ‖ΔW_l‖_F / ‖W_l‖_F."""
from __future__ import annotations

import contextlib

import torch

from ...editing.layers import get_module, input_device, weight_out_in
from ...editing.values import SuffixRunner, add_at_positions, frozen_parameters, rewrite_nll


def estimate_layer_scores(model, runner: SuffixRunner, module_names, keys, mean_keys, c_invs) -> dict[str, float]:
    """fast_scan: estimate LA_l for every candidate from one forward/backward pass.

    With δ = 0 at every candidate at once, the gradient g_l of the target NLL tells how far δ_l
    must move: to first order ‖δ_l‖ ≈ NLL/‖g_l‖. Then ‖ΔW_l‖ = ‖δ_l‖·‖u‖/(kᵀu), u = C⁻¹k̄.
    """
    batch = runner.batch
    rows = torch.arange(len(batch.seqs), device=input_device(model))
    deltas = {}
    with frozen_parameters(model), contextlib.ExitStack() as stack:
        for name in module_names:
            module = get_module(model, name)
            width = module.weight.shape[1] if type(module).__name__ == "Conv1D" else module.weight.shape[0]
            deltas[name] = torch.zeros(width, device=module.weight.device, requires_grad=True)
            stack.enter_context(add_at_positions(module, rows, runner.lookup, lambda _n=name: deltas[_n]))
        log_probs = runner.log_probs(batch.loss_rows, batch.loss_pos)
        nll = rewrite_nll(batch, log_probs)
        nll.backward()
    scores = {}
    for name in module_names:
        k = keys[name]
        u = mean_keys[name] if c_invs[name] is None else c_invs[name] @ mean_keys[name]
        grad_norm = float(deltas[name].grad.norm()) or 1e-12
        delta_norm = float(nll.detach()) / grad_norm
        scores[name] = delta_norm * float(u.norm()) / float(torch.dot(k, u)) / float(
            weight_out_in(get_module(model, name)).detach().norm())
    return scores
