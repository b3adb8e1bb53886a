"""Batched evaluation with EasyEdit's metric definitions.

- ``rewrite_acc`` / ``rephrase_acc`` / ``portability``: teacher-forced token accuracy of the answer
  after the prompt (EasyEdit's ``token_em``).
- locality: agreement of the current model's predicted tokens with the unedited model's, teacher-forced
  on the locality prompt + answer. In a lifelong stream a record's locality prompt can name a subject
  that another edit changed ("Nintendo 3DS is developed by" beside the edit "Nintendo 3DS, developed
  by → Intel"); there the change is the edit working, so checkpoints also report locality without them.
- ``*_gen_em``: generation exact match: greedy decoding from the prompt produces the whole answer first.
  Teacher forcing overstates success; both are reported.
- CounterFact probability comparisons: efficacy P(new) > P(true) on the rewrite prompt, paraphrase
  success likewise on rephrasings, neighbourhood success P(true) > P(new) on neighbourhood prompts
  (probabilities as mean token log-likelihood, as in ROME).
Targets are tokenised as the model continues the prompt, with a leading space.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..editing.layers import input_device
from ..editing.requests import with_leading_space
from ..editing.tokens import encode, pad_batch, pad_id, target_ids


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
def generated_answers(model, tok, pairs, batch_size: int = 32) -> list[bool]:
    """Generation exact match of each ``(prompt, answer)``: greedy decoding with the KV cache on (as
    ``generate()`` runs by default) produces the answer's tokens first, all of them.

    Teacher forcing feeds the gold prefix and so overstates success; this scores what a user sees.
    Prompts are batched by token length, so no row is padded.
    """
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
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, num_beams=1, use_cache=True, pad_token_id=pad_id(tok))
            for row, i in enumerate(batch):
                answer = encoded[i][1]
                results[i] = out[row, length : length + len(answer)].tolist() == answer
    return results


def score_groups(model, tok, groups: dict[str, list]) -> dict[str, list[TargetScore]]:
    """Score named groups of ``(prompt, answer)`` pairs in one batched pass; the scores come back grouped."""
    flat = score_answers(model, tok, [pair for pairs in groups.values() for pair in pairs])
    scores, start = {}, 0
    for name, pairs in groups.items():
        scores[name], start = flat[start : start + len(pairs)], start + len(pairs)
    return scores


def agreement(current: list[TargetScore], reference_predictions: list[list[int]]) -> list[float]:
    """Locality: share of answer positions where the current prediction equals the unedited one."""
    return [sum(a == b for a, b in zip(s.predicted, ref)) / len(ref) for s, ref in zip(current, reference_predictions)]


def names_any(texts: list[str], names) -> list[bool]:
    """Which texts contain one of ``names`` as a whole phrase (not inside a longer word)."""
    names = sorted({n for n in names if n}, key=len, reverse=True)
    if not names:
        return [False] * len(texts)
    pattern = re.compile("|".join(r"(?<!\w)" + re.escape(n) + r"(?!\w)" for n in names))
    return [pattern.search(t) is not None for t in texts]


def locality_by_edited_subjects(agree: list[float], prompts: list[str], subjects) -> dict:
    """Locality (per-prompt ``agree``) over all prompts, over those naming none of ``subjects``, and over
    those naming one; with how many name one."""
    named = names_any(prompts, subjects)
    return {"all": mean(agree), "unedited_subjects": mean(a for a, n in zip(agree, named) if not n),
            "naming_edited_subjects": mean(a for a, n in zip(agree, named) if n),
            "prompts_naming_edited_subjects": sum(named)}


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


def prefers(first: list[TargetScore], second: list[TargetScore]) -> float | None:
    """How often the first answer is the likelier one (mean token log-likelihood): ROME's comparisons."""
    return mean(float(a.mean_logprob > b.mean_logprob) for a, b in zip(first, second))


def neighbourhood_success(model, tok, records) -> float | None:
    """CounterFact's neighbourhood score over the records' neighbour prompts: P(true) > P(new)."""
    scores = score_groups(model, tok, {
        "true": [(p, a) for r in records for p, a in r.locality],
        "new": [(p, r.request["target_new"]) for r in records for p, _ in r.locality]})
    return prefers(scores["true"], scores["new"])


def edit_metrics(model, tok, record, locality_reference) -> dict:
    """One record's metrics right after its edit (also used for retention of all metrics)."""
    request = record.request
    new, true = request["target_new"], request.get("ground_truth")
    groups = {
        "rewrite": [(request["prompt"], new)],
        "rephrase": [(p, new) for p in record.rephrase_prompts],
        "locality": list(record.locality),
        "portability": list(record.portability),
    }
    if true:
        groups["true_rewrite"] = [(request["prompt"], true)]
        groups["true_rephrase"] = [(p, true) for p in record.rephrase_prompts]
        groups["new_on_neighbours"] = [(p, new) for p, _ in record.locality] if record.kind == "counterfact" else []
    scores = score_groups(model, tok, groups)
    rewrite, rephrase, locality = scores["rewrite"][0], scores["rephrase"], scores["locality"]
    out = {
        "rewrite_acc": rewrite.accuracy,
        "rephrase_acc": mean(s.accuracy for s in rephrase),
        "locality_acc": mean(agreement(locality, locality_reference)) if locality else None,
        "portability_acc": mean(s.accuracy for s in scores["portability"]),
    }
    generated = generated_answers(model, tok, groups["rewrite"] + groups["rephrase"])
    out["rewrite_gen_em"] = float(generated[0])
    out["rephrase_gen_em"] = mean(float(g) for g in generated[1:])
    if true:
        out["efficacy"] = float(rewrite.mean_logprob > scores["true_rewrite"][0].mean_logprob)
        out["paraphrase"] = prefers(rephrase, scores["true_rephrase"])
        if record.kind == "counterfact" and locality:
            out["neighbourhood"] = prefers(locality, scores["new_on_neighbours"])
    return out


def retention(model, tok, records) -> dict:
    """Are past edits still in place? Token accuracy and exact match of target_new on each edit prompt,
    rephrase accuracy, and for CounterFact records whether the new object still beats the true one."""
    if not records:
        return {"retention_acc": None, "retention_exact": None, "lost_case_ids": []}
    ranked = [i for i, r in enumerate(records) if r.kind == "counterfact" and r.request.get("ground_truth")]
    ranked_set = set(ranked)
    rephrase_at = [(i, p) for i, r in enumerate(records) for p in r.rephrase_prompts]
    scores = score_groups(model, tok, {
        "new_on_prompt": [(r.request["prompt"], r.request["target_new"]) for r in records],
        "new_on_rephrase": [(p, records[i].request["target_new"]) for i, p in rephrase_at],
        "true_on_prompt": [(records[i].request["prompt"], records[i].request["ground_truth"]) for i in ranked],
        "true_on_rephrase": [(p, records[i].request["ground_truth"]) for i, p in rephrase_at if i in ranked_set],
    })
    on_prompt = scores["new_on_prompt"]
    out = {
        "retention_acc": mean(s.accuracy for s in on_prompt),
        "retention_exact": mean(float(s.exact) for s in on_prompt),
        "lost_case_ids": [r.case_id for r, s in zip(records, on_prompt) if not s.exact],
    }
    generated = generated_answers(model, tok, [(r.request["prompt"], r.request["target_new"]) for r in records]
                                  + [(p, records[i].request["target_new"]) for i, p in rephrase_at])
    out["retention_gen_em"] = mean(float(g) for g in generated[: len(records)])
    if rephrase_at:  # generality of every past edit on the current model
        out["retention_rephrase_acc"] = mean(s.accuracy for s in scores["new_on_rephrase"])
        out["retention_rephrase_gen_em"] = mean(float(g) for g in generated[len(records):])
    if ranked:  # CounterFact's own comparison, re-measured: does the new object still beat the true one?
        out["retention_efficacy"] = mean(float(on_prompt[i].mean_logprob > t.mean_logprob)
                                         for i, t in zip(ranked, scores["true_on_prompt"]))
        new_ranked = [s for (i, _), s in zip(rephrase_at, scores["new_on_rephrase"]) if i in ranked_set]
        if new_ranked:
            out["retention_paraphrase"] = prefers(new_ranked, scores["true_on_rephrase"])
    return out


def checkpoint(model, tok, step: int, past, locality_reference, probe_pairs, probe_reference) -> dict:
    """A checkpoint row: retention of every past edit, locality on never-edited probe facts, and locality
    on the past edits' own locality prompts (also without those naming a subject edited so far)."""
    row = {"step": step, **retention(model, tok, past)}
    pairs = [(pair, ref) for r, refs in zip(past, locality_reference) for pair, ref in zip(r.locality, refs)]
    scores = score_groups(model, tok, {"probes": probe_pairs, "locality": [p for p, _ in pairs]})
    if scores["probes"]:
        row["probe_locality"] = mean(agreement(scores["probes"], probe_reference))
    if pairs:
        # Prompts about a subject that some edit so far changed are expected to change.
        split = locality_by_edited_subjects(agreement(scores["locality"], [r for _, r in pairs]),
                                            [p for (p, _), _ in pairs], {r.request.get("subject") for r in past})
        row["locality_acc"] = split["all"]
        row["locality_acc_unedited_subjects"] = split["unedited_subjects"]
        row["locality_prompts_naming_edited_subjects"] = split["prompts_naming_edited_subjects"]
    return row


SUMMARY_METRICS = ("rewrite_acc", "rephrase_acc", "locality_acc", "portability_acc", "efficacy", "paraphrase",
                   "neighbourhood", "rewrite_gen_em", "rephrase_gen_em")


def protocols(immediate: dict, checkpoint_rows: list[dict]) -> dict:
    """The three evaluation protocols of the literature, labelled:
    - immediate: each edit scored right after it was made (EasyEdit's sequential_edit);
    - end_of_sequence: every edit scored on the final model (WISE, AlphaEdit, UltraEdit);
    - retention_curve: every past edit re-scored at each checkpoint."""
    final = checkpoint_rows[-1] if checkpoint_rows else {}
    end = {"step": final.get("step"),
           "reliability": final.get("retention_acc"), "reliability_exact": final.get("retention_exact"),
           "reliability_gen_em": final.get("retention_gen_em"),
           "generality": final.get("retention_rephrase_acc"), "generality_gen_em": final.get("retention_rephrase_gen_em"),
           "locality": final.get("locality_acc"), "probe_locality": final.get("probe_locality")}
    curve = [{k: row.get(k) for k in ("step", "retention_acc", "retention_exact", "retention_gen_em",
                                      "retention_rephrase_acc", "probe_locality")} for row in checkpoint_rows]
    return {"immediate": {"reliability": immediate.get("rewrite_acc"), "reliability_gen_em": immediate.get("rewrite_gen_em"),
                          "generality": immediate.get("rephrase_acc"), "generality_gen_em": immediate.get("rephrase_gen_em"),
                          "locality": immediate.get("locality_acc"), "portability": immediate.get("portability_acc")},
            "end_of_sequence": end, "retention_curve": curve}


def run_summary(method: str, records, position: int, edits: list[dict], checkpoint_rows: list[dict],
                diagnostics=(), stopped_by: str | None = None) -> dict:
    """A lifelong run's summary: mean immediate metrics, the last checkpoint, and WilKE's score S, the
    harmonic mean of edit success, generalisation, locality, and retention of edits and of probe facts.
    ``stopped_by``: why the method could take no more edits, where it ended the run early."""
    immediate = {m: mean(e["metrics"].get(m) for e in edits) for m in SUMMARY_METRICS}
    final = checkpoint_rows[-1] if checkpoint_rows else {}
    es = immediate["efficacy"] if immediate["efficacy"] is not None else immediate["rewrite_acc"]
    gs = immediate["paraphrase"] if immediate["paraphrase"] is not None else immediate["rephrase_acc"]
    ls = immediate["neighbourhood"] if immediate["neighbourhood"] is not None else immediate["locality_acc"]
    components = {"ES": es, "GS": gs, "LS": ls, "ERS": final.get("retention_exact"), "ORS": final.get("probe_locality")}
    return {
        "method": method, "edits_done": len(records[:position]), "edits_planned": len(records),
        "complete": position == len(records), "stopped_by": stopped_by,
        "immediate": immediate, "final_checkpoint": {k: v for k, v in final.items() if k != "lost_case_ids"},
        "protocols": protocols(immediate, checkpoint_rows),
        "lost_edits_at_end": len(final.get("lost_case_ids", [])),
        "S": harmonic_mean(components.values()), "S_components": components,
        "layer_histogram": layer_histogram(edits),
        "edits_not_applied": edits_not_applied(edits),
        "diagnostics": {type(d).__name__: d.summarize(final.get("lost_case_ids", []))
                        for d in diagnostics if hasattr(d, "summarize")},
    }


def edits_not_applied(edits) -> int:
    """How many edits the method refused, leaving the model as it was (each log line's ``info`` carries
    ``not_applied``; WilKE: a spread that diverged). They stay in the stream and count as lost."""
    return sum(bool(e.get("info", {}).get("not_applied")) for e in edits)


def layer_histogram(edits) -> dict:
    """How often each layer was edited (from each log line's ``layer``, where the method reports one)."""
    hist = {}
    for e in edits:
        if e.get("layer") is not None:
            hist[str(e["layer"])] = hist.get(str(e["layer"]), 0) + 1
    return dict(sorted(hist.items(), key=lambda kv: int(kv[0])))
