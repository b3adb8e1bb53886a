"""Batched evaluation with EasyEdit's metric definitions.

- ``rewrite_acc`` / ``rephrase_acc`` / ``portability``: teacher-forced token accuracy of the answer
  after the prompt (EasyEdit's ``token_em``).
- locality: agreement of the current model's predicted tokens with the unedited model's, teacher-forced
  on the locality prompt + answer.
- CounterFact probability comparisons: efficacy P(new) > P(true) on the rewrite prompt, paraphrase
  success likewise on rephrasings, neighbourhood success P(true) > P(new) on neighbourhood prompts
  (probabilities as mean token log-likelihood, as in ROME).
Targets are tokenised as the model continues the prompt, with a leading space.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..editing.layers import input_device
from ..editing.requests import with_leading_space
from ..editing.tokens import encode, pad_batch, target_ids


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


@torch.no_grad()
def score_answers(model, tok, pairs, batch_size: int = 48) -> list[TargetScore]:
    """Teacher-forced scores of each ``(prompt, answer)``; logits only at the answer positions."""
    device = input_device(model)
    head = model.get_output_embeddings()
    results = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        seqs, rows, positions, labels, owners = [], [], [], [], []
        for i, (prompt, answer) in enumerate(chunk):
            prompt_ids = encode(tok, prompt)
            answer_ids = target_ids(tok, with_leading_space(answer))
            seqs.append(prompt_ids + answer_ids[:-1])
            for j, label in enumerate(answer_ids):
                rows.append(i)
                positions.append(len(prompt_ids) - 1 + j)
                labels.append(label)
                owners.append(i)
        ids, mask = pad_batch(tok, seqs, device)
        hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        picked = hidden[torch.tensor(rows, device=hidden.device), torch.tensor(positions, device=hidden.device)]
        log_probs = F.log_softmax(head(picked.to(head.weight.device)).float(), dim=-1)
        labels_t = torch.tensor(labels, device=log_probs.device)
        token_lp = log_probs.gather(1, labels_t[:, None])[:, 0].cpu()
        predicted = log_probs.argmax(-1).cpu()
        for i in range(len(chunk)):
            idx = [k for k, o in enumerate(owners) if o == i]
            pred = predicted[idx].tolist()
            gold = [labels[k] for k in idx]
            results.append(TargetScore(pred, sum(p == g for p, g in zip(pred, gold)), len(idx),
                                       float(token_lp[idx].mean())))
    return results


def agreement(current: list[TargetScore], reference_predictions: list[list[int]]) -> list[float]:
    """Locality: share of answer positions where the current prediction equals the unedited one."""
    return [sum(a == b for a, b in zip(s.predicted, ref)) / len(ref) for s, ref in zip(current, reference_predictions)]


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def harmonic_mean(values) -> float | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


def edit_metrics(model, tok, record, locality_reference) -> dict:
    """One record's metrics right after its edit (also used for retention of all metrics)."""
    request = record.request
    new, true = request["target_new"], request.get("ground_truth")
    pairs = [(request["prompt"], new)] + [(p, new) for p in record.rephrase_prompts]
    pairs += [(p, a) for p, a in record.locality] + [(p, a) for p, a in record.portability]
    if true:
        pairs += [(request["prompt"], true)] + [(p, true) for p in record.rephrase_prompts]
        pairs += [(p, new) for p, _ in record.locality] if record.kind == "counterfact" else []
    scores = score_answers(model, tok, pairs)
    n_r, n_l, n_p = len(record.rephrase_prompts), len(record.locality), len(record.portability)
    rewrite, rephrase = scores[0], scores[1 : 1 + n_r]
    locality = scores[1 + n_r : 1 + n_r + n_l]
    portability = scores[1 + n_r + n_l : 1 + n_r + n_l + n_p]
    out = {
        "rewrite_acc": rewrite.accuracy,
        "rephrase_acc": mean(s.accuracy for s in rephrase),
        "locality_acc": mean(agreement(locality, locality_reference)) if n_l else None,
        "portability_acc": mean(s.accuracy for s in portability),
    }
    if true:
        rest = scores[1 + n_r + n_l + n_p :]
        true_rewrite, true_rephrase = rest[0], rest[1 : 1 + n_r]
        out["efficacy"] = float(rewrite.mean_logprob > true_rewrite.mean_logprob)
        out["paraphrase"] = mean(float(a.mean_logprob > b.mean_logprob) for a, b in zip(rephrase, true_rephrase))
        if record.kind == "counterfact" and n_l:
            new_on_neighbours = rest[1 + n_r :]
            out["neighbourhood"] = mean(float(t.mean_logprob > n.mean_logprob) for t, n in zip(locality, new_on_neighbours))
    return out


def retention(model, tok, records) -> dict:
    """Are past edits still in place? Token accuracy and exact match of target_new on each edit prompt."""
    if not records:
        return {"retention_acc": None, "retention_exact": None, "lost_case_ids": []}
    scores = score_answers(model, tok, [(r.request["prompt"], r.request["target_new"]) for r in records])
    out = {
        "retention_acc": mean(s.accuracy for s in scores),
        "retention_exact": mean(float(s.exact) for s in scores),
        "lost_case_ids": [r.case_id for r, s in zip(records, scores) if not s.exact],
    }
    # Generality of every past edit on the current model (EasyEdit's rephrase_acc, re-measured).
    pairs = [(p, r.request["target_new"]) for r in records for p in r.rephrase_prompts]
    new_on_rephrase = []
    if pairs:
        new_on_rephrase = score_answers(model, tok, pairs)
        out["retention_rephrase_acc"] = mean(s.accuracy for s in new_on_rephrase)
    # CounterFact's own scores, re-measured: does the new object still beat the true one?
    ranked = [(i, r) for i, r in enumerate(records) if r.kind == "counterfact" and r.request.get("ground_truth")]
    if ranked:
        true_on_prompt = score_answers(model, tok, [(r.request["prompt"], r.request["ground_truth"]) for _, r in ranked])
        out["retention_efficacy"] = mean(float(scores[i].mean_logprob > t.mean_logprob)
                                         for (i, _), t in zip(ranked, true_on_prompt))
        offsets, start = [], 0
        for r in records:
            offsets.append(start)
            start += len(r.rephrase_prompts)
        new_scores = [new_on_rephrase[offsets[i] + j] for i, r in ranked for j in range(len(r.rephrase_prompts))]
        true_scores = score_answers(model, tok, [(p, r.request["ground_truth"]) for _, r in ranked
                                                 for p in r.rephrase_prompts])
        if true_scores:
            out["retention_paraphrase"] = mean(float(n.mean_logprob > t.mean_logprob)
                                               for n, t in zip(new_scores, true_scores))
    return out
