"""Tokenising prompts ourselves (right padding, explicit masks): never trust the padding side we are handed."""
from __future__ import annotations

import torch

from .requests import EditRequest, fill


def encode(tok, text: str) -> list[int]:
    return tok(text).input_ids


def pad_id(tok) -> int:
    """The padding token, or end-of-text where the tokenizer has none (GPT-2)."""
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def pad_batch(tok, sequences: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    padding = pad_id(tok)
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), padding, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def subject_last_index(tok, template: str, request: EditRequest) -> int:
    """Token index of the subject's last token in the prompt placed in ``template``."""
    text = fill(template, request.prompt)
    prefix = text[: text.index("{}")] + request.subject
    return len(encode(tok, prefix)) - 1


def target_ids(tok, target: str) -> list[int]:
    ids = tok(target, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return ids
