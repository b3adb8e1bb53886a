"""Saving and loading the adaptor: one safetensors file with its configuration in the metadata."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ...editing.layers import LayerError, get_module
from ...files import load_tensors, save_tensors
from .injection import AdaptorError, find_adaptor, remove_adaptor, hidden_size, new_adaptor
from .layer import LEMoELayer

STATE_FORMAT = "edit-plugins LEMoE adaptor v1"


def adaptor_state(model) -> tuple[dict, dict]:
    """(tensors, metadata) of the model's adaptor, without the frozen FFN it wraps."""
    found = find_adaptor(model)
    if found is None:
        raise AdaptorError("the model has no LEMoE adaptor to save")
    name, adaptor = found
    tensors = {k: v.detach().cpu().contiguous() for k, v in adaptor.state_dict().items() if not k.startswith("base.")}
    metadata = {"format": STATE_FORMAT, "module": name, "config": json.dumps(adaptor.config)}
    return tensors, metadata


def load_adaptor_state(model, tensors: dict, metadata: dict, source: str = "adaptor state") -> LEMoELayer:
    if metadata.get("format") != STATE_FORMAT:
        raise AdaptorError(f"{source}: not a LEMoE adaptor (format {metadata.get('format')!r}, "
                           f"expected {STATE_FORMAT!r})")
    remove_adaptor(model)
    config = json.loads(metadata["config"])
    name = metadata["module"]
    try:
        get_module(model, name)
    except LayerError:
        raise AdaptorError(f"{source}: the adaptor sits on module {name!r}, which this model does not have") from None
    if config["hidden"] != hidden_size(model):
        raise AdaptorError(f"{source}: the adaptor was made for hidden size {config['hidden']}, "
                           f"this model has {hidden_size(model)}")
    adaptor = new_adaptor(model, name, rank=config["rank"], scale=config["scale"], routing=config["routing"],
                           threshold=config["threshold"], temperature=config["temperature"],
                           span=config.get("span") or "sequence")
    for _ in range(config["n_experts"]):
        adaptor.add_expert()
    device = next(adaptor.base.parameters()).device
    with torch.no_grad():
        for key in ("feature_mean", "feature_std", "anchors", "anchor_expert", "anchor_floor"):
            if f"router.{key}" in tensors:
                setattr(adaptor.router, key, tensors[f"router.{key}"].to(device))
        if config["routing"] == "anchor" and "router.anchor_floor" not in tensors:  # saved before anchors had floors
            adaptor.router.anchor_floor = torch.full((len(adaptor.router.anchors),), -1.0, device=device)
        rest = {k: v for k, v in tensors.items() if not k.startswith("router.") or k.startswith("router.rows")}
        missing, unexpected = adaptor.load_state_dict(rest, strict=False)
    missing = [k for k in missing if not k.startswith("base.") and not k.startswith("router.")]
    if missing or unexpected:
        remove_adaptor(model)
        raise AdaptorError(f"{source}: tensors do not match the adaptor (missing {missing}, unexpected {unexpected})")
    return adaptor


def save_adaptor(model, path) -> Path:
    """Write the adaptor to one .safetensors file (atomically). Returns its path."""
    path = Path(path)
    tensors, metadata = adaptor_state(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, tensors, metadata)
    return path


def load_adaptor(model, path) -> LEMoELayer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adaptor file at {path}")
    tensors, metadata = load_tensors(path)
    return load_adaptor_state(model, tensors, metadata, source=str(path))


def adaptor_size(model) -> dict:
    tensors, _ = adaptor_state(model)
    return {"parameters": int(sum(t.numel() for k, t in tensors.items() if "experts" in k or "rows" in k)),
            "bytes": int(sum(t.numel() * t.element_size() for t in tensors.values()))}
