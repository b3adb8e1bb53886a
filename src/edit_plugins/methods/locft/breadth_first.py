"""Breadth-first fine-tuning: every epoch passes over all of a call's edits in shuffled mini-batches, rather
than optimising each edit to convergence before the next (the depth-first pipeline the paper blames)."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ...editing.layers import input_device
from ...editing.tokens import encode, pad_batch, target_ids


def training_rows(tok, requests, append_eos: bool) -> list[tuple[list[int], int]]:
    """(prompt + target ids, prompt length) per edit: the target as the model continues the prompt, with its
    leading space, and end-of-text after it where asked."""
    rows = []
    for request in requests:
        prompt = encode(tok, request.text)
        target = target_ids(tok, request.target_new) + ([tok.eos_token_id] if append_eos else [])
        rows.append((prompt + target, len(prompt)))
    return rows


def target_loss(model, tok, rows) -> torch.Tensor:
    """Mean over rows of the mean next-token loss on the target positions only."""
    ids, mask = pad_batch(tok, [seq for seq, _ in rows], input_device(model))
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    labels = ids[:, 1:]
    token_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="none")
    token_loss = token_loss.view(labels.shape)
    on_target = torch.zeros_like(token_loss, dtype=torch.bool)
    for row, (seq, prompt_len) in enumerate(rows):
        on_target[row, prompt_len - 1 : len(seq) - 1] = True  # predictions of the target's tokens
    return ((token_loss * on_target).sum(1) / on_target.sum(1)).mean()


def train_breadth_first(model, tok, requests, params: list, hparams) -> dict:
    """Adam on ``params`` over shuffled mini-batches of all ``requests``, epoch after epoch, until an epoch's
    mean loss is below the threshold. Returns what happened, for the log."""
    rows = training_rows(tok, requests, hparams.append_eos)
    optimiser = torch.optim.Adam(params, lr=hparams.lr, weight_decay=hparams.weight_decay)
    order = list(range(len(rows)))
    epoch_loss, epochs = None, 0
    with torch.enable_grad():
        for epochs in range(1, hparams.epochs + 1):
            random.shuffle(order)  # the run's seeded Python RNG: a replay shuffles alike
            total = 0.0
            for start in range(0, len(order), hparams.mini_batch_size):
                batch = [rows[i] for i in order[start : start + hparams.mini_batch_size]]
                loss = target_loss(model, tok, batch)
                value = float(loss.detach())
                total += value * len(batch)
                if value >= hparams.loss_threshold:
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
            epoch_loss = total / len(rows)
            if epoch_loss < hparams.loss_threshold:
                break
    return {"epochs": epochs, "final_epoch_loss": round(epoch_loss, 5)}
