"""Context templates: "{}" plus short prefixes that the model itself generates, cached per model."""
from __future__ import annotations

import hashlib
import json

import torch

from ..files import atomic_write_text
from ..models import cache_root
from .layers import input_device
from .tokens import pad_id


def _cache_file(model, length_params):
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    key = hashlib.sha1(json.dumps([name, length_params, model.config.to_json_string()]).encode()).hexdigest()[:16]
    return cache_root() / "templates" / f"{key}.json"


def context_templates(model, tok, length_params, seed: int = 0) -> list[str]:
    """``["{}"] + [prefix + ". {}" ...]`` for each ``[length, count]`` in length_params.

    Generated once per model (sampling with a fixed seed) and cached on disk, so every edit and
    every process sees the same templates.
    """
    length_params = [list(map(int, p)) for p in length_params]
    path = _cache_file(model, length_params)
    if path.is_file():
        return json.loads(path.read_text())
    templates = ["{}"]
    start = tok.bos_token or tok.eos_token
    device = input_device(model)
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]), torch.no_grad():
        torch.manual_seed(seed)
        for length, count in length_params:
            ids = tok([start] * count, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=5, max_new_tokens=length,
                pad_token_id=pad_id(tok),
            )
            for row in out[:, ids.shape[1]:]:
                text = tok.decode(row, skip_special_tokens=True).replace("{", " ").replace("}", " ")
                templates.append(text.strip() + ". {}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(templates))
    return templates
