"""Keys: the input of the FFN output projection at the subject's last token, for many layers at once
(and, for the interference guard, at every position a prompt's score reads)."""
from __future__ import annotations

import contextlib

import torch

from .layers import get_module, input_device
from .requests import EditRequest, with_leading_space
from .tokens import encode, pad_batch, subject_last_index, target_ids


class _EnoughCaptured(Exception):
    pass


@contextlib.contextmanager
def capture_inputs(model, module_names, stop_early: bool = False):
    """Record the first positional input of each named module during forward passes.

    With ``stop_early`` the forward pass is cut off once every module has been seen (use
    :func:`run_until_captured`), so no layer above the deepest one, and no LM head, is computed.
    """
    captured, handles = {}, []
    for name in module_names:
        def hook(module, args, _name=name):
            captured[_name] = args[0]
            if stop_early and len(captured) == len(module_names):
                raise _EnoughCaptured
        handles.append(get_module(model, name).register_forward_pre_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def run_until_captured(model, **inputs):
    try:
        model.base_model(**inputs, use_cache=False)
    except _EnoughCaptured:
        pass


@torch.no_grad()
def compute_keys(model, tok, requests: list[EditRequest], module_names: list[str], templates=("{}",),
                 batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Keys averaged over context templates: ``{module_name: (len(requests), d_in)}``.

    One forward pass per batch of prompts serves every layer.
    """
    rows = [(i, t) for i in range(len(requests)) for t in templates]
    sums = {}
    device = input_device(model)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        seqs = [encode(tok, requests[i].in_template(t)) for i, t in chunk]
        positions = torch.tensor([subject_last_index(tok, t, requests[i]) for i, t in chunk], device=device)
        ids, mask = pad_batch(tok, seqs, device)
        with capture_inputs(model, module_names, stop_early=True) as captured:
            run_until_captured(model, input_ids=ids, attention_mask=mask)
        owners = torch.tensor([i for i, _ in chunk], device=device)
        for name in module_names:
            acts = captured[name]
            picked = acts[torch.arange(len(chunk), device=acts.device), positions.to(acts.device)].float()
            if name not in sums:
                sums[name] = torch.zeros(len(requests), picked.shape[-1], device=picked.device)
            sums[name].index_add_(0, owners.to(picked.device), picked)
    return {name: s / len(templates) for name, s in sums.items()}


@torch.no_grad()
def module_input_sequences(model, tok, texts: list[str], module_name: str, batch_size: int = 32) -> list[torch.Tensor]:
    """Each text's input sequence (T, d) to one module: a forward pass cut off at that module."""
    return _module_inputs(model, tok, [encode(tok, t) for t in texts], [module_name], batch_size)[module_name]


@torch.no_grad()
def scored_position_keys(model, tok, requests: list[EditRequest], module_names: list[str],
                         batch_size: int = 32) -> dict[str, list[torch.Tensor]]:
    """Each module's input (T, d) at every position a teacher-forced score of each request reads: the
    prompt and the target less its last token, tokenised as the scoring does. One pass serves every module."""
    sequences = [encode(tok, r.text) + target_ids(tok, with_leading_space(r.target_new))[:-1] for r in requests]
    return _module_inputs(model, tok, sequences, module_names, batch_size)


def _module_inputs(model, tok, sequences: list[list[int]], module_names: list[str],
                   batch_size: int) -> dict[str, list[torch.Tensor]]:
    device = input_device(model)
    out = {name: [] for name in module_names}
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        ids, mask = pad_batch(tok, chunk, device)
        with capture_inputs(model, module_names, stop_early=True) as captured:
            run_until_captured(model, input_ids=ids, attention_mask=mask)
        for name in module_names:
            acts = captured[name].detach()
            out[name].extend(acts[i, : len(s)].clone() for i, s in enumerate(chunk))
    return out


def pad_sequences(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T_max, d) right-padded with zeros, and the (N, T_max) attention mask."""
    width = max(len(x) for x in sequences)
    batch = sequences[0].new_zeros(len(sequences), width, sequences[0].shape[-1])
    mask = torch.zeros(len(sequences), width, dtype=torch.long, device=batch.device)
    for i, x in enumerate(sequences):
        batch[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return batch, mask


@torch.no_grad()
def key_and_block_output(model, tok, request: EditRequest, module_name: str, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At the subject's last token of the bare prompt: the module's input (the key) and the residual stream
    after decoder block ``block`` (where a spread edit's target is set), in one pass cut off there."""
    from .layers import decoder_layers

    device = input_device(model)
    ids, mask = pad_batch(tok, [encode(tok, request.in_template("{}"))], device)
    position = subject_last_index(tok, "{}", request)
    out = {}

    def hook(module, args, output):
        out["block"] = output[0] if isinstance(output, tuple) else output
        raise _EnoughCaptured

    handle = decoder_layers(model)[block].register_forward_hook(hook)
    try:
        with capture_inputs(model, [module_name]) as captured:
            run_until_captured(model, input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    return captured[module_name][0, position].float(), out["block"][0, position].float()
