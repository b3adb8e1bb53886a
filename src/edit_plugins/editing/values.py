"""The target value v* = W k + δ: δ is optimised at one layer's FFN output (ROME's compute_v).

Loss = NLL(target | rewrite prompts) + kl_factor · KL(essence prompt) + v_weight_decay · ‖δ‖²/‖v₀‖²,
with δ clamped to clamp_norm_factor · ‖v₀‖. Fast on CPU because:
- the blocks below the edited layer do not depend on δ, so their outputs are computed once and
  replayed on every step;
- the head is read only at the positions the loss reads, once per step (``output_head``);
- no parameter gradients are kept, only δ's;
- several layers' δ can share a pass, one copy of the batch each (``optimise_deltas``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .layers import get_module, input_device
from .output_head import OutputHead
from .runtime import EditBatch, SuffixRunner, add_at_positions, frozen_parameters, replay_lower_layers


@dataclass
class ValueResult:
    delta: torch.Tensor  # δ, the change of the FFN output at the subject's last token
    steps: int
    nll: float
    initial_nll: float


def rewrite_nll(batch: EditBatch, head: OutputHead, hidden: torch.Tensor, log_z=None) -> torch.Tensor:
    """Mean over templates of the target's mean token NLL (ROME's nll_loss); ``hidden`` at the loss positions."""
    return -head.token_log_probs(hidden, batch.labels, log_z).sum() / (batch.n_rewrite * batch.target_len)


@dataclass
class Candidate:
    """Where to optimise a δ: a layer, its FFN output projection, and v₀ there."""
    layer: int
    module_name: str
    v0: torch.Tensor


def optimise_deltas(model, runner: SuffixRunner, candidates: list[Candidate], hp) -> list[ValueResult]:
    """One δ per candidate layer, each in its own copy of the request's batch (``runner.repeated``).

    The copies' losses are independent and each δ has its own Adam state, so every δ takes the steps
    it would take alone (and stops early alone). One pass serves all of them: on a CPU the per-step
    products of a single edit are too small to run at full speed, and a batch of copies is not.
    """
    runner = runner.repeated(len(candidates))
    batch = runner.batch
    device = input_device(model)
    base_rows = torch.cat([batch.loss_rows, batch.kl_rows])
    per_group, n_loss = len(base_rows), len(batch.loss_rows)
    rows = torch.cat([runner.group_rows(base_rows, g) for g in range(len(candidates))])
    positions = torch.cat([batch.loss_pos, batch.kl_pos]).repeat(len(candidates))
    v0s = [c.v0.detach().float() for c in candidates]
    v0_norms = [float(v0.norm()) for v0 in v0s]
    head = OutputHead(model)
    deltas = [torch.zeros_like(v0, requires_grad=True) for v0 in v0s]
    optimiser = torch.optim.Adam(deltas, lr=hp.v_lr)  # per element, so one optimiser is one per δ
    active = [True] * len(candidates)
    steps = [0] * len(candidates)
    nll_values, initial_nlls = [float("nan")] * len(candidates), [float("nan")] * len(candidates)
    essences = [None] * len(candidates)  # each copy's essence-prompt distribution before the edit
    all_rows = torch.arange(len(batch.seqs), device=device)
    with frozen_parameters(model), contextlib.ExitStack() as stack:
        stack.enter_context(replay_lower_layers(model, min(c.layer for c in candidates), runner.hidden))
        for g, candidate in enumerate(candidates):
            group = runner.group_rows(all_rows, g)
            # a stopped δ is a constant: no gradient reaches it, so Adam leaves it where it stopped
            stack.enter_context(add_at_positions(get_module(model, candidate.module_name), group, runner.lookup[group],
                                                 lambda _g=g: deltas[_g] if active[_g] else deltas[_g].detach()))
        for step in range(hp.v_num_grad_steps):
            optimiser.zero_grad()
            hidden = runner.hidden_at(rows, positions)
            log_z = head.log_partition(hidden)  # one read of the head serves every term of every copy
            loss = None
            for g in range(len(candidates)):
                if not active[g]:
                    continue
                part = slice(g * per_group, (g + 1) * per_group)
                h, z = hidden[part], log_z[part]
                nll = rewrite_nll(batch, head, h[:n_loss], z[:n_loss])
                if essences[g] is None:
                    essences[g] = head.reference(h[n_loss:])
                    initial_nlls[g] = float(nll.detach())
                kl = head.kl_from(essences[g], h[n_loss:], z[n_loss:])
                nll_values[g], steps[g] = float(nll.detach()), step
                if nll_values[g] + hp.kl_factor * float(kl.detach()) < hp.v_early_stop_loss:
                    active[g] = False
                    continue
                weight_decay = hp.v_weight_decay * deltas[g].pow(2).sum() / (v0_norms[g] ** 2)
                term = nll + hp.kl_factor * kl + weight_decay
                loss = term if loss is None else loss + term
                steps[g] = step + 1
            if loss is None:
                break
            loss.backward()
            for g in range(len(candidates)):
                if not active[g]:
                    deltas[g].grad = None  # stopped this step: Adam skips a parameter with no gradient
            optimiser.step()
            with torch.no_grad():
                for g, delta in enumerate(deltas):
                    max_norm = hp.clamp_norm_factor * v0_norms[g]
                    norm = delta.norm()
                    if active[g] and norm > max_norm:
                        delta.mul_(max_norm / norm)
    return [ValueResult(d.detach(), s, v, i) for d, s, v, i in zip(deltas, steps, nll_values, initial_nlls)]
