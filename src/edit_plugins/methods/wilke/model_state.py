"""What WilKE keeps about one model between edits, on the model object itself (as LEMoE's adaptor and
peft's tuners are): C⁻¹ per layer, the layer norms LA divides by (``la_norm: original``), the original
weights the change budget measures from, and the interference guard. ``serialization`` saves and loads it."""
from __future__ import annotations

import dataclasses

from .guard.model import ModelGuard
from .guard.settings import GuardSettings

ATTRIBUTE = "_edit_plugins_wilke"  # a plain attribute: not a parameter, buffer or submodule of the model


@dataclasses.dataclass
class WilKEState:
    inverses: dict = dataclasses.field(default_factory=dict)  # (module, statistics settings) -> C⁻¹
    original_norms: dict = dataclasses.field(default_factory=dict)  # module -> ‖W‖_F before the first edit
    budget_layers: dict = dataclasses.field(default_factory=dict)  # module -> change_budget.BudgetLayer
    guard: ModelGuard | None = None
    pending_guard: dict = dataclasses.field(default_factory=dict)  # loaded guard state not yet used since

    def __deepcopy__(self, memo):
        # A copy of the model starts as a model WilKE has not seen: its weights as they are now, no history.
        # History moves with a saved state (serialization), which checks what it loads.
        return WilKEState()


def wilke_state(model) -> WilKEState:
    state = model.__dict__.get(ATTRIBUTE)
    if state is None:
        state = model.__dict__[ATTRIBUTE] = WilKEState()
    return state


def guard_for(model, settings: GuardSettings) -> ModelGuard | None:
    """The model's guard (made on first use, and made anew when the settings change), or None when no part
    of the guard is on."""
    settings = settings.settings()
    if not settings.guard_active:
        return None
    state = wilke_state(model)
    if state.guard is None or state.guard.settings != settings:
        state.guard = ModelGuard(settings, state.pending_guard)
        saved_log = state.pending_guard.pop("__edit_log__", None)
        if saved_log is not None:
            state.guard.edit_log = saved_log
            state.guard.sources = state.pending_guard.pop("__sources__", [])
    return state.guard


def model_guard(model) -> ModelGuard | None:
    """The model's guard as it is, without making one."""
    return wilke_state(model).guard


def drop_guard(model) -> None:
    """Forget the model's guard: the next guarded edit starts a fresh one."""
    wilke_state(model).guard = None
