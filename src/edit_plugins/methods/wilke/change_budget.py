"""Each layer's accumulated change ‖W − W₀‖_C / ‖W₀‖_C, and WilKE's budget on it (``layer_change_budget``).

With C = E[x xᵀ] over the statistics' inputs, ‖A‖_C = √tr(A C Aᵀ) is the RMS of A x: the ratio is how much
the edits have moved the layer's output on ordinary text, relative to that output. W₀ is the layer's weight
before WilKE first edited it on this model. A layer at its budget takes no more edits (docs/wilke.md).
"""
from __future__ import annotations

import dataclasses

import torch

from ...editing.layers import get_module, weight_digest, weight_out_in
from ...errors import CapacityReached
from .model_state import wilke_state


class LayerBudgetSpent(CapacityReached):
    pass


@dataclasses.dataclass
class BudgetLayer:
    original: torch.Tensor  # W₀ (out, in), float32 on the CPU
    digest: str | None = None  # of W when ``change`` was measured
    change: float = 0.0


def remember_original(model, module_name: str) -> None:
    """Keep W₀, if WilKE has not edited this layer of the model before (call before anything is written)."""
    layers = wilke_state(model).budget_layers
    if module_name not in layers:
        layers[module_name] = BudgetLayer(weight_out_in(get_module(model, module_name)).detach().float().cpu().clone())


def layer_change(model, module_name: str, second_moment) -> float:
    """‖W − W₀‖_C / ‖W₀‖_C now; 0 for a layer WilKE has not edited. ``second_moment(name)`` gives C (in, in).
    Measured again only when W changed since (EasyEdit's weights_copy may have put it back)."""
    layer = wilke_state(model).budget_layers.get(module_name)
    if layer is None:
        return 0.0
    W = weight_out_in(get_module(model, module_name)).detach()
    digest = weight_digest(W)
    if digest != layer.digest:
        C = second_moment(module_name).to(W.device, torch.float32)
        W0 = layer.original.to(W.device)
        A = W.float() - W0
        layer.change = (max(float(((A @ C) * A).sum()), 0.0) / float(((W0 @ C) * W0).sum())) ** 0.5
        layer.digest = digest
    return layer.change


def spent_layers(model, module_names, budget: float, second_moment) -> dict[str, float]:
    """The layers among ``module_names`` whose change has reached ``budget``, with their change."""
    changes = {name: layer_change(model, name, second_moment) for name in module_names}
    return {name: change for name, change in changes.items() if change >= budget}


def originals(model) -> dict[str, torch.Tensor]:
    return {name: layer.original for name, layer in wilke_state(model).budget_layers.items()}


def set_originals(model, weights: dict[str, torch.Tensor]) -> None:
    wilke_state(model).budget_layers = {name: BudgetLayer(w.float().cpu().clone()) for name, w in weights.items()}
