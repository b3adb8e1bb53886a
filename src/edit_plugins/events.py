"""What the after-edit hook receives, and the one place that fires it."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from .plugins import pm


@dataclass
class LinearEdit:
    """A closed-form edit W ← W + ΔW at one module, as the superposition algebra sees it."""

    module: str
    key: torch.Tensor  # k, mapped exactly to v*
    residual: torch.Tensor  # r = v* − W_before k
    c_inv_key: torch.Tensor  # the update's direction u: C⁻¹k (ROME/WilKE: C⁻¹k̄, k̄ the template mean)


@dataclass
class EditEvent:
    method: str
    request: dict
    model: Any
    hparams: Any
    modules: list = field(default_factory=list)  # names of the edited modules
    weight_deltas: dict | None = None  # {parameter name: ΔW as stored}, where the method has one
    linear_edits: list = field(default_factory=list)  # LinearEdit per module, for linear methods
    info: dict = field(default_factory=dict)  # method-specific report (WilKE: layer, layer_scores)
    step: int | None = None


_collectors: list[list] = []


@contextlib.contextmanager
def collect_events():
    """Collect ``(event, hook_results)`` for every edit fired inside the block (used by lifelong runs)."""
    sink: list = []
    _collectors.append(sink)
    try:
        yield sink
    finally:
        _collectors.remove(sink)


_requested_diagnostics: dict = {}


def _activate_requested_diagnostics(event: EditEvent) -> None:
    """Outside lifelong runs (which manage their own), start diagnostics that hparams or env ask for."""
    from .diagnostics import interference
    from .plugins import registry

    if _collectors or not interference.requested(event.hparams):
        return
    key = ("interference", id(event.model))
    if key not in _requested_diagnostics:
        factory = registry().diagnostics["interference"].factory
        diagnostic = factory(model=event.model, hparams=event.hparams, log_path=interference.default_log_path(event.hparams))
        pm.register(diagnostic, name=f"diagnostic:interference:{id(event.model)}")
        _requested_diagnostics[key] = diagnostic


def emit_after_edit(event: EditEvent) -> dict:
    """Run every after_edit hook; merge what they return (later plugins win on clashes)."""
    _activate_requested_diagnostics(event)
    merged = {}
    for result in reversed(pm.hook.after_edit(event=event)):  # pluggy calls last-registered first
        if result:
            merged.update(result)
    for sink in _collectors:
        sink.append((event, merged))
    return merged
