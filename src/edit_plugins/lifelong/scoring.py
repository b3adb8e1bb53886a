"""Scoring answers on a model, batched: teacher-forced (per-token predictions and log-likelihoods) and by
greedy generation. Targets are tokenised as the model continues the prompt, with a leading space."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..editing.layers import input_device
from ..editing.requests import with_leading_space
from ..editing.tokens import encode, pad_batch, pad_id, target_ids
from ..plugins import Scoring


@dataclass
class TargetScore:
    predicted: list  # argmax token at each answer position
    correct: int
    n_tokens: int
    mean_logprob: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n_tokens

    @property
    def exact(self) -> bool:
        return self.correct == self.n_tokens


def _length_batches(lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length, each group padded to at most ``max_tokens`` tokens.

    Sorting first means short prompts are not padded to the longest one in the run, and the token
    budget bounds the memory of one forward pass however long the prompts are.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches, current = [], []
    for i in order:
        if current and (len(current) >= max_rows or (len(current) + 1) * lengths[i] > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


@torch.no_grad()
def score_answers(model, tok, pairs, batch_size: int = 64, max_tokens: int = 2048) -> list[TargetScore]:
    """Teacher-forced scores of each ``(prompt, answer)``; logits only at the answer positions.

    Pairs whose input tokens are identical (one prompt with two one-token answers, as in CounterFact's
    new-vs-true comparisons) share one row of the forward pass.
    """
    device = input_device(model)
    head = model.get_output_embeddings()
    row_of, sequences, readers = {}, [], []  # readers[u]: (pair index, first answer position, answer ids)
    for index, (prompt, answer) in enumerate(pairs):
        prompt_ids = encode(tok, prompt)
        answer_ids = target_ids(tok, with_leading_space(answer))
        seq = tuple(prompt_ids + answer_ids[:-1])
        if seq not in row_of:
            row_of[seq] = len(sequences)
            sequences.append(list(seq))
            readers.append([])
        readers[row_of[seq]].append((index, len(prompt_ids) - 1, answer_ids))
    results: list[TargetScore | None] = [None] * len(pairs)
    for batch in _length_batches([len(seq) for seq in sequences], batch_size, max_tokens):
        rows, positions, labels, spans = [], [], [], []
        for row, u in enumerate(batch):
            for index, first, answer_ids in readers[u]:
                spans.append((index, len(labels), len(answer_ids)))
                rows += [row] * len(answer_ids)
                positions += range(first, first + len(answer_ids))
                labels += answer_ids
        ids, mask = pad_batch(tok, [sequences[u] for u in batch], device)
        hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        picked = hidden[torch.tensor(rows, device=hidden.device), torch.tensor(positions, device=hidden.device)]
        log_probs = F.log_softmax(head(picked.to(head.weight.device)).float(), dim=-1)
        labels_t = torch.tensor(labels, device=log_probs.device)
        token_lp = log_probs.gather(1, labels_t[:, None])[:, 0].cpu()
        predicted = log_probs.argmax(-1).cpu()
        for index, start, n in spans:
            pred, gold = predicted[start : start + n].tolist(), labels[start : start + n]
            results[index] = TargetScore(pred, sum(p == g for p, g in zip(pred, gold)), n,
                                         float(token_lp[start : start + n].mean()))
    return results


@torch.no_grad()
def score_rows_alone(model, tok, pairs, target=None, before_forward=None) -> list[TargetScore]:
    """Teacher-forced scores, one unpadded row per forward of ``target`` (default: ``model``), whose output has
    ``logits``; ``before_forward(model, prompt length)`` runs before each."""
    target = model if target is None else target
    device = input_device(model)
    scored: dict = {}  # rows with identical input tokens are run once
    results = []
    for prompt, answer in pairs:
        prompt_ids = encode(tok, prompt)
        answer_ids = target_ids(tok, with_leading_space(answer))
        seq = tuple(prompt_ids + answer_ids[:-1])
        if (seq, len(prompt_ids)) not in scored:
            if before_forward is not None:
                before_forward(model, len(prompt_ids))
            ids = torch.tensor([seq], device=device)
            logits = target(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0]
            scored[seq, len(prompt_ids)] = F.log_softmax(logits[len(prompt_ids) - 1 :].float(), dim=-1).cpu()
        log_probs = scored[seq, len(prompt_ids)]
        labels = torch.tensor(answer_ids)
        token_lp = log_probs[torch.arange(len(answer_ids)), labels]
        predicted = log_probs[: len(answer_ids)].argmax(-1).tolist()
        results.append(TargetScore(predicted, sum(p == g for p, g in zip(predicted, answer_ids)), len(answer_ids),
                                   float(token_lp.mean())))
    return results


@torch.no_grad()
def generated_answers(model, tok, pairs, batch_size: int = 32, target=None, before_forward=None,
                      use_cache: bool = True) -> list[bool]:
    """Generation exact match of each ``(prompt, answer)``: greedy decoding with the KV cache on (as
    ``generate()`` runs by default) produces the answer's tokens first, all of them.

    Teacher forcing feeds the gold prefix and so overstates success; this scores what a user sees.
    Prompts are batched by token length, so no row is padded. ``target`` (default: ``model``) is what
    ``generate()`` is called on; ``before_forward(model, None)`` runs before each call. ``use_cache=False``
    re-reads the whole sequence at every step (EasyEdit generates so for GRACE).
    """
    target = model if target is None else target
    device = input_device(model)
    encoded = [(encode(tok, prompt), target_ids(tok, with_leading_space(answer))) for prompt, answer in pairs]
    by_length: dict[int, list[int]] = {}
    for index, (prompt_ids, _) in enumerate(encoded):
        by_length.setdefault(len(prompt_ids), []).append(index)
    results = [False] * len(pairs)
    for length, indices in sorted(by_length.items()):
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            ids = torch.tensor([encoded[i][0] for i in batch], device=device)
            new_tokens = max(len(encoded[i][1]) for i in batch)
            if before_forward is not None:
                before_forward(model, None)
            out = target.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, num_beams=1, use_cache=use_cache, pad_token_id=pad_id(tok))
            for row, i in enumerate(batch):
                answer = encoded[i][1]
                results[i] = out[row, length : length + len(answer)].tolist() == answer
    return results


class Scorer:
    """Scores answers on a model as its method must be scored (``plugins.Scoring``): batched forwards of the
    bare model, or one row at a time, through the object the method's last apply call returned."""

    def __init__(self, model, tok, scoring: Scoring | None = None):
        self.model, self.tok = model, tok
        self.scoring = scoring or Scoring()
        self.editor = None  # what the last apply call returned, where scoring goes through it

    def _target(self):
        return self.editor if self.scoring.through_editor and self.editor is not None else self.model

    def teacher_forced(self, pairs) -> list[TargetScore]:
        if self.scoring.rows_alone or self.scoring.through_editor or self.scoring.before_forward is not None:
            return score_rows_alone(self.model, self.tok, pairs, self._target(), self.scoring.before_forward)
        return score_answers(self.model, self.tok, pairs)

    def generated(self, pairs) -> list[bool]:
        return generated_answers(self.model, self.tok, pairs, batch_size=1 if self.scoring.rows_alone else 32,
                                 target=self._target(), before_forward=self.scoring.before_forward)

    def groups(self, groups: dict[str, list]) -> dict[str, list[TargetScore]]:
        """Score named groups of ``(prompt, answer)`` pairs in one pass; the scores come back grouped."""
        flat = self.teacher_forced([pair for pairs in groups.values() for pair in pairs])
        scores, start = {}, 0
        for name, pairs in groups.items():
            scores[name], start = flat[start : start + len(pairs)], start + len(pairs)
        return scores


def score_groups(model, tok, groups: dict[str, list]) -> dict[str, list[TargetScore]]:
    """``Scorer.groups`` on a bare model."""
    return Scorer(model, tok).groups(groups)
