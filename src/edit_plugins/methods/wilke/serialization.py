"""WilKE's state in a lifelong run (``model_state``): the interference guard's, the original layer norms LA
divides by (``la_norm: original``) and the original weights the change budget measures from
(``layer_change_budget``), so a resumed run ranks layers as the uninterrupted one did."""
from __future__ import annotations

import json

from .change_budget import originals, set_originals
from .guard.state import guard_state, load_guard_state
from .model_state import wilke_state

NORMS_KEY = "wilke_original_norms"
BUDGET_KEY = "wilke_budget_layers"  # modules whose W₀ is saved, each as the tensor BUDGET_PREFIX + module
BUDGET_PREFIX = "wilke_original_weight."
OWN_KEYS = {NORMS_KEY, BUDGET_KEY}


def save_guard(model) -> tuple[dict, dict] | None:
    """The guard's part of the state alone (None where the model has none)."""
    state = wilke_state(model)
    return guard_state(state.guard, state.pending_guard)


def load_guard(model, tensors: dict, metadata: dict) -> None:
    """Put a saved guard on the model: a fresh guard takes its layers from it as they are used."""
    state = wilke_state(model)
    state.guard = None
    state.pending_guard = load_guard_state(tensors, metadata)


def save_wilke_state(model) -> tuple[dict, dict] | None:
    state = wilke_state(model)
    guarded, norms, weights = save_guard(model), state.original_norms, originals(model)
    if guarded is None and not norms and not weights:
        return None
    tensors, metadata = guarded if guarded is not None else ({}, {})
    tensors, metadata = dict(tensors), dict(metadata)
    if norms:
        metadata[NORMS_KEY] = json.dumps(norms)
    if weights:
        metadata[BUDGET_KEY] = json.dumps(sorted(weights))
        tensors.update({BUDGET_PREFIX + name: w.contiguous() for name, w in weights.items()})
    return tensors, metadata


def load_wilke_state(model, tensors: dict, metadata: dict) -> None:
    state = wilke_state(model)
    if NORMS_KEY in metadata:
        state.original_norms = dict(json.loads(metadata[NORMS_KEY]))
    if BUDGET_KEY in metadata:
        set_originals(model, {name: tensors[BUDGET_PREFIX + name] for name in json.loads(metadata[BUDGET_KEY])})
    if set(metadata) - OWN_KEYS:  # the guard's part, which names its own format
        load_guard(model, tensors, metadata)
