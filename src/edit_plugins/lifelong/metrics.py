"""The metrics of a lifelong run, with EasyEdit's definitions, from ``scoring``'s scores.

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
"""
from __future__ import annotations

import re

from .scoring import Scorer, TargetScore


def agreement(current: list[TargetScore], reference_predictions: list[list[int]]) -> list[float]:
    """Locality: share of answer positions where the current prediction equals the unedited one."""
    return [sum(a == b for a, b in zip(s.predicted, ref)) / len(ref) for s, ref in zip(current, reference_predictions)]


def per_question(values: list[float], questions: list | None) -> list[float]:
    """One value per question, the best over its accepted answers (KnowEdit's aliases: any alias counts);
    ``questions`` gives each value's question (None: one value per question)."""
    if questions is None:
        return list(values)
    best: dict = {}
    for value, question in zip(values, questions):
        best[question] = max(best.get(question, value), value)
    return list(best.values())


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


def neighbourhood_success(scorer: Scorer, records) -> float | None:
    """CounterFact's neighbourhood score over the records' neighbour prompts: P(true) > P(new)."""
    scores = scorer.groups({
        "true": [(p, a) for r in records for p, a in r.locality],
        "new": [(p, r.request["target_new"]) for r in records for p, _ in r.locality]})
    return prefers(scores["true"], scores["new"])


def true_answers_on_rephrases(scorer: Scorer, records) -> dict | None:
    """How well the unedited model answers the records' rephrases with their true answer (generation exact
    match, token accuracy): the generality an edit reaches if it generalises as the model's own facts do.
    None where no record has both a true answer and a rephrase."""
    pairs = [(p, r.request["ground_truth"]) for r in records if isinstance(r.request.get("ground_truth"), str)
             for p in r.rephrase_prompts]
    if not pairs:
        return None
    return {"gen_em": mean(float(g) for g in scorer.generated(pairs)),
            "acc": mean(s.accuracy for s in scorer.teacher_forced(pairs)), "prompts": len(pairs)}


def edit_metrics(scorer: Scorer, record, locality_reference) -> dict:
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
    scores = scorer.groups(groups)
    rewrite, rephrase, locality = scores["rewrite"][0], scores["rephrase"], scores["locality"]
    out = {
        "rewrite_acc": rewrite.accuracy,
        "rephrase_acc": mean(s.accuracy for s in rephrase),
        "locality_acc": mean(per_question(agreement(locality, locality_reference), record.locality_questions))
        if locality else None,
        "portability_acc": mean(per_question([s.accuracy for s in scores["portability"]], record.portability_questions)),
    }
    generated = scorer.generated(groups["rewrite"] + groups["rephrase"])
    out["rewrite_gen_em"] = float(generated[0])
    out["rephrase_gen_em"] = mean(float(g) for g in generated[1:])
    if true:
        out["efficacy"] = float(rewrite.mean_logprob > scores["true_rewrite"][0].mean_logprob)
        out["paraphrase"] = prefers(rephrase, scores["true_rephrase"])
        if record.kind == "counterfact" and locality:
            out["neighbourhood"] = prefers(locality, scores["new_on_neighbours"])
    return out


def retention(scorer: Scorer, records) -> dict:
    """Are past edits still in place? Token accuracy and exact match of target_new on each edit prompt,
    rephrase accuracy, and for CounterFact records whether the new object still beats the true one."""
    if not records:
        return {"retention_acc": None, "retention_exact": None, "lost_case_ids": []}
    ranked = [i for i, r in enumerate(records) if r.kind == "counterfact" and r.request.get("ground_truth")]
    ranked_set = set(ranked)
    rephrase_at = [(i, p) for i, r in enumerate(records) for p in r.rephrase_prompts]
    scores = scorer.groups({
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
    generated = scorer.generated([(r.request["prompt"], r.request["target_new"]) for r in records]
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


def checkpoint(scorer: Scorer, step: int, past, locality_reference, probe_pairs, probe_reference,
               unrelated_pairs=(), unrelated_reference=()) -> dict:
    """A checkpoint row: retention of every past edit, locality three ways: on never-edited probe facts, on
    unrelated questions, and on the past edits' own locality prompts (also without those naming a subject
    edited so far)."""
    row = {"step": step, **retention(scorer, past)}
    pairs = [(pair, ref, (i, question)) for i, (r, refs) in enumerate(zip(past, locality_reference))
             for pair, ref, question in zip(r.locality, refs, r.locality_questions or range(len(r.locality)))]
    scores = scorer.groups({"probes": probe_pairs, "unrelated": list(unrelated_pairs),
                            "locality": [p for p, _, _ in pairs]})
    if scores["probes"]:
        row["probe_locality"] = mean(agreement(scores["probes"], probe_reference))
    if scores["unrelated"]:
        row["unrelated_locality"] = mean(agreement(scores["unrelated"], unrelated_reference))
    if pairs:
        questions = [q for _, _, q in pairs]
        best = per_question(agreement(scores["locality"], [r for _, r, _ in pairs]), questions)
        prompts = list({q: p for (p, _), _, q in pairs}.values())
        # Prompts about a subject that some edit so far changed are expected to change.
        split = locality_by_edited_subjects(best, prompts, {r.request.get("subject") for r in past})
        row["locality_acc"] = split["all"]
        row["locality_acc_unedited_subjects"] = split["unedited_subjects"]
        row["locality_prompts_naming_edited_subjects"] = split["prompts_naming_edited_subjects"]
    return row
