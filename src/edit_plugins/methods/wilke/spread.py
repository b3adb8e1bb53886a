"""One edit spread over the chosen layer and the ones below it (MEMIT's schedule, one request at a time).

v* was found at the top layer L as a change δ of the residual stream after block L at the subject's last
token, so the goal there is z = h_L + δ. The layers are edited lowest first; each takes an equal share of
what is left, (z − h_L now) / (layers left), as a rank-one update at its own key (the guard's direction
where the guard is on), so the top layer closes the gap and no layer carries the whole change.

Each piece maps the bare prompt's key k along its own direction C⁻¹k, not ROME's C⁻¹k̄ (k̄: the template
mean): a subject at position 0 meets the first token's outsized activations, its k is then nearly
C⁻¹-orthogonal to k̄, and mapping k along C⁻¹k̄ takes an update tens of times larger. With
``spread_direction: own_and_mean_key`` each piece maps k̄ too, to the same share: u is the least-norm
combination of C⁻¹k and C⁻¹k̄ with uᵀk = uᵀk̄ = 1, which costs about the sum of the two single updates
where k and k̄ are far apart instead of blowing up (ROME's k̄ is there for the paraphrases).

With the guard's ``refresh_within_edit`` off, one pass before the first piece recomputes every stale
layer's keys.

Each piece should leave less for the ones above it. Where a piece instead moves the top layer's output
away from the goal, the spread diverges: on SmolLM2 a subject at position 0 does so at layers 8-11, where
the first token's activation grows to thousands (the attention sink), and the rest of the edit would
break the model for every prompt. The pieces are then taken back and the edit is not applied.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...editing.keys import compute_keys, key_and_block_output
from ...editing.layers import add_to_weight, get_module, weight_out_in
from ...editing.rank_one import direction_for_keys, rank_one_update, update_direction
from ...editing.requests import EditRequest
from .guard.model import ModelGuard


# The gap to the goal, over v*'s own change δ, that means the spread diverges: over 1,300 CounterFact edits
# spread over layers 3-7 it reached at most 1.8; the diverging edits reach hundreds within two layers
DIVERGED_GAP_RATIO = 10.0


class SpreadDiverged(Exception):
    """The edit could not be spread: a piece moved the top layer's output away from v*. Nothing is left
    written: the pieces applied before were taken back."""

    def __init__(self, layer: int, gap: float, delta_norm: float):
        super().__init__(f"spreading the edit diverged at layer {layer}: the gap to v* at the top layer grew to "
                         f"{gap:.3g}, {gap / max(delta_norm, 1e-12):.3g} times v*'s change ({delta_norm:.3g}); "
                         f"the edit is not applied")
        self.layer, self.gap, self.delta_norm = layer, gap, delta_norm


@dataclass
class Piece:
    layer: int
    module: str
    delta: torch.Tensor  # this layer's ΔW, (out, in), as applied (a repair before it is in ``repair``)
    key: torch.Tensor  # k at this layer when it was edited
    residual: torch.Tensor  # the share r: k is mapped to W k + r
    direction: torch.Tensor  # u
    target: torch.Tensor  # W k + r
    repair: torch.Tensor | None = None  # the guard's repair at this layer just before the piece
    guard: dict = field(default_factory=dict)

    def report(self) -> dict:
        out = {"layer": self.layer, "residual_norm": float(self.residual.norm()),
               "delta_norm": float(self.delta.norm())}
        if self.guard:
            out["guard"] = self.guard
        return out


def spread_layers(top: int, count: int) -> list[int]:
    """The layers that share an edit chosen at ``top``: it and the count − 1 below it (as many as exist)."""
    return list(range(max(top - count + 1, 0), top + 1))


def spread_edit(model, tok, request: EditRequest, rewrite_module_tmp: str, top: int, top_module: str,
                delta: torch.Tensor, count: int, c_inverse, guard: ModelGuard | None,
                before_write, templates: list[str] | None = None) -> list[Piece]:
    """Apply the edit whose value at ``top`` is W k + ``delta`` over ``spread_layers(top, count)``.
    ``c_inverse(module)`` gives C⁻¹ (or None); ``before_write(module)`` is called before a layer's weight
    is first written (so the caller can keep the original). With ``templates``, each piece also maps the
    key averaged over them (k̄) to its share."""
    _, start = key_and_block_output(model, tok, request, top_module, top)
    goal = start + delta.to(start.device)
    layers = spread_layers(top, count)
    names = [rewrite_module_tmp.format(layer) for layer in layers]
    refreshed = {}
    if guard is not None and not guard.settings.guard_refresh_within_edit:
        for name in names:
            before_write(name)  # a repair in the refresh writes
        refreshed = guard.refresh_stale(model, tok, [guard.layer(model, name, layer, c_inverse(name))
                                                     for name, layer in zip(names, layers)])
    pieces: list[Piece] = []
    written = []  # (module, its weight before the piece): taken back if the spread diverges
    delta_norm = float(delta.norm())
    for i, (layer, name) in enumerate(zip(layers, names)):
        module = get_module(model, name)
        before_write(name)
        info, repair = {}, None
        if guard is not None:
            layer_guard = guard.layer(model, name, layer, c_inverse(name))
            info = {**refreshed.get(name, {}),
                    **guard.prepare(model, tok, layer_guard, edited_now=tuple(p.layer for p in pieces))}
            repair = info.pop("repair_delta", None)
        key, now = key_and_block_output(model, tok, request, name, top)
        gap = float((goal - now).norm())
        if gap > DIVERGED_GAP_RATIO * max(delta_norm, 1e-3):
            with torch.no_grad():
                for written_module, weight in reversed(written):
                    written_module.weight.copy_(weight)
            raise SpreadDiverged(pieces[-1].layer if pieces else layer, gap, delta_norm)
        share = (goal - now) / (len(layers) - i)
        W = weight_out_in(module).detach().float()
        keys = [key] if templates is None else [key, compute_keys(model, tok, [request], [name], templates)[name][0]]
        directions = []
        for k in keys:
            if guard is None:
                directions.append(update_direction(k, c_inverse(name)))
            else:
                d = layer_guard.direction(k, k)
                directions.append(d.u)
                info = {**d.report(), **info} if k is key else {**info, "mean_key_path": d.path}
        u = directions[0] if templates is None else direction_for_keys(keys, directions)
        key, share = key.to(W.device), share.to(W.device)
        target = W @ key + share
        update = rank_one_update(W, key, target, None, direction=u)
        written.append((module, module.weight.detach().clone()))
        add_to_weight(module, update)
        pieces.append(Piece(layer, name, update, key, share, u.to(W.device), target, repair, info))
    return pieces
