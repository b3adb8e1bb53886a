"""The text that second-moment statistics are computed over: CPython's bundled documentation (offline,
the default), text the model samples itself, a local .txt/.jsonl/.json file, or a Hugging Face dataset
(which needs the network, and is refused unless downloading is allowed)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from .layers import input_device
from .tokens import pad_id

SELF_SOURCE = "self"  # offline: text the model samples itself (slow: autoregressive sampling)
PYDOC_SOURCE = "pydoc"  # offline default: the English documentation text bundled with CPython


class CorpusError(UserError, ValueError):
    pass


def pydoc_texts(chunk_chars: int = 1000) -> list[str]:
    """CPython's bundled documentation (``pydoc_data.topics``) cut into ~1000-character documents."""
    from pydoc_data.topics import topics

    texts = []
    for _, topic in sorted(topics.items()):
        chunk = ""
        for paragraph in topic.split("\n\n"):
            paragraph = " ".join(paragraph.split())
            if not paragraph:
                continue
            chunk = f"{chunk}\n\n{paragraph}" if chunk else paragraph
            if len(chunk) >= chunk_chars:
                texts.append(chunk)
                chunk = ""
        if chunk:
            texts.append(chunk)
    return texts


def read_texts(source: str, n_samples: int) -> list[str]:
    if source == PYDOC_SOURCE:
        return pydoc_texts()[:n_samples]
    path = Path(source)
    if path.suffix in (".txt", ".jsonl", ".json"):
        if not path.is_file():
            raise CorpusError(f"mom2_dataset: text file {source!r} does not exist")
        if path.suffix == ".txt":
            texts = [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
        else:
            lines = path.read_text().splitlines() if path.suffix == ".jsonl" else None
            records = [json.loads(l) for l in lines if l.strip()] if lines is not None else json.loads(path.read_text())
            texts = [r["text"] if isinstance(r, dict) else str(r) for r in records]
        if not texts:
            raise CorpusError(f"mom2_dataset: {source!r} holds no text")
        return texts[:n_samples]
    from ..models import ALLOW_DOWNLOAD_ENV, downloads_allowed

    if not downloads_allowed():
        raise CorpusError(f"mom2_dataset {source!r} is neither 'pydoc', 'self' nor a local .txt/.jsonl/.json file; "
                          f"reading it as a Hugging Face dataset downloads it: set {ALLOW_DOWNLOAD_ENV}=1 to allow that")
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"mom2_dataset {source!r} is neither 'self' nor a .txt/.jsonl file; loading it as a Hugging Face "
            "dataset needs `pip install datasets` and network access"
        ) from None
    name, _, config = source.partition(":")
    ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
    return [row["text"] for _, row in zip(range(n_samples), ds)]


def self_generated_texts(model, tok, n_samples: int, length: int = 64, batch: int = 32, seed: int = 1234) -> list[list[int]]:
    """Token sequences sampled from the model itself (temperature 1). Deterministic for a seed."""
    start = tok.bos_token or tok.eos_token
    device = input_device(model)
    out = []
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]), torch.no_grad():
        torch.manual_seed(seed)
        for first in tqdm(range(0, n_samples, batch), desc="sampling text for C", leave=False):
            count = min(batch, n_samples - first)
            ids = tok([start] * count, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                 max_new_tokens=length, min_new_tokens=length,
                                 pad_token_id=pad_id(tok))
            out.extend(row.tolist() for row in gen)
    return out
