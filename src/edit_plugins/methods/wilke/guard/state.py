"""Saving a model's guard with a lifelong run's state (safetensors and JSON), and reading it back."""
from __future__ import annotations

import json

import torch

STATE_FORMAT = "edit-plugins interference guard v1"


def guard_state(guard, pending: dict) -> tuple[dict, dict] | None:
    """(tensors, metadata): each layer's G, keys, values and their sources (the soft guard keeps no keys or
    values); the basis is rebuilt on load by the same steps and G is loaded as summed, so a resumed run
    continues with the same numbers. ``pending``: what was loaded and not yet used since, saved as it was
    loaded. None where there is neither a guard nor anything pending."""
    pending = dict(pending)
    if guard is None and not pending:
        return None
    edit_log = guard.edit_log if guard is not None else pending.pop("__edit_log__", [])
    pending.pop("__edit_log__", None)
    sources = guard.sources if guard is not None else pending.pop("__sources__", [])
    pending.pop("__sources__", None)
    entries = {name: {"keys": g.keys, "values": g.values, "gram": g.gram,
                      "sources": g.sources, "edit_ids": g.edit_ids, "fresh_at": g.fresh_at}
               for name, g in (guard.layers.items() if guard is not None else ())}
    tensors, layers = {}, {}
    for name, entry in {**pending, **entries}.items():
        if not entry["sources"]:
            continue
        if entry.get("gram") is not None:
            tensors[f"{name}.gram"] = entry["gram"].detach().cpu().clone()  # G grows in place: not a view
        if entry["keys"]:
            tensors[f"{name}.keys"] = torch.stack(entry["keys"]).cpu().contiguous()
        if entry["values"]:
            tensors[f"{name}.values"] = torch.stack(entry["values"]).cpu().contiguous()
        # neither: a soft guard's keys undone and G not yet made again; it is made from the sources on load
        layers[name] = {k: entry[k] for k in ("sources", "edit_ids", "fresh_at")}
    metadata = {"format": STATE_FORMAT, "layers": json.dumps(layers), "edit_log": json.dumps(edit_log),
                "sources": json.dumps(sources)}
    return tensors, metadata


def load_guard_state(tensors: dict, metadata: dict) -> dict:
    """What ``guard_state`` saved, as the pending state a new ``ModelGuard`` takes its layers from."""
    if metadata.get("format") != STATE_FORMAT:
        raise ValueError(f"not an interference guard state (format {metadata.get('format')!r}, expected {STATE_FORMAT!r})")
    pending = {"__edit_log__": json.loads(metadata["edit_log"]),
               "__sources__": [(e, tuple(s)) for e, s in json.loads(metadata.get("sources", "[]"))]}
    for name, info in json.loads(metadata["layers"]).items():
        sources = [_source(s) for s in info.get("sources", info.get("prompts", []))]
        gram = tensors.get(f"{name}.gram")
        entry = {"keys": [], "values": [], "gram": None if gram is None else gram.double().clone(), "sources": sources,
                 "edit_ids": info.get("edit_ids", [-1] * len(sources)),  # states saved before edit ids
                 "fresh_at": info["fresh_at"]}
        if f"{name}.keys" in tensors:
            entry["keys"] = list(tensors[f"{name}.keys"].float())
        if f"{name}.values" in tensors:
            entry["values"] = list(tensors[f"{name}.values"].float())
        pending[name] = entry
    return pending


def _source(saved: list) -> tuple:
    """A saved key's source; states saved before positions were guarded hold (prompt, subject) only."""
    return tuple(saved) if len(saved) == 4 else (saved[0], saved[1], " x", None)
