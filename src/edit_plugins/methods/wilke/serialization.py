"""WilKE's state in a lifelong run: the interference guard's, and the original layer norms LA divides by
(``la_norm: original``), so a resumed run ranks layers as the uninterrupted one did."""
from __future__ import annotations

import json

from ...editing.interference_guard import guard_state, load_guard_state
from .layer_selection import original_norms, set_original_norms

NORMS_KEY = "wilke_original_norms"


def wilke_state(model) -> tuple[dict, dict] | None:
    guarded, norms = guard_state(model), original_norms(model)
    if guarded is None and not norms:
        return None
    tensors, metadata = guarded if guarded is not None else ({}, {})
    return tensors, ({**metadata, NORMS_KEY: json.dumps(norms)} if norms else metadata)


def load_wilke_state(model, tensors: dict, metadata: dict) -> None:
    if NORMS_KEY in metadata:
        set_original_norms(model, json.loads(metadata[NORMS_KEY]))
    if set(metadata) - {NORMS_KEY}:  # the guard's part, which names its own format
        load_guard_state(model, tensors, metadata)
