"""A lifelong run's summary: the immediate metrics averaged, the last checkpoint, the three protocols of
the literature, and the harmonic-mean score."""
from __future__ import annotations

from .metrics import harmonic_mean, mean


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
           "locality": final.get("locality_acc"), "probe_locality": final.get("probe_locality"),
           "unrelated_locality": final.get("unrelated_locality")}
    curve = [{k: row.get(k) for k in ("step", "retention_acc", "retention_exact", "retention_gen_em",
                                      "retention_rephrase_acc", "retention_rephrase_gen_em", "probe_locality",
                                      "unrelated_locality")} for row in checkpoint_rows]
    return {"immediate": {"reliability": immediate.get("rewrite_acc"), "reliability_gen_em": immediate.get("rewrite_gen_em"),
                          "generality": immediate.get("rephrase_acc"), "generality_gen_em": immediate.get("rephrase_gen_em"),
                          "locality": immediate.get("locality_acc"), "portability": immediate.get("portability_acc")},
            "end_of_sequence": end, "retention_curve": curve}


def run_summary(method: str, records, position: int, edits: list[dict], checkpoint_rows: list[dict],
                diagnostics=(), stopped_by: str | None = None, family: str | None = None,
                unedited_true_rephrase: dict | None = None) -> dict:
    """A lifelong run's summary: mean immediate metrics, the last checkpoint, and the harmonic mean of edit
    success (ES), generalisation (GS), locality (LS), retention of edits (ERS) and of probe facts (ORS),
    the score the WilKE paper reports as S. ``stopped_by``: why the method could take no more edits,
    where it ended the run early. ``unedited_true_rephrase``: the unedited model's own score on the rephrases
    with the true answers (``metrics.true_answers_on_rephrases``), beside generality."""
    immediate = {m: mean(e["metrics"].get(m) for e in edits) for m in SUMMARY_METRICS}
    final = checkpoint_rows[-1] if checkpoint_rows else {}
    es = immediate["efficacy"] if immediate["efficacy"] is not None else immediate["rewrite_acc"]
    gs = immediate["paraphrase"] if immediate["paraphrase"] is not None else immediate["rephrase_acc"]
    ls = immediate["neighbourhood"] if immediate["neighbourhood"] is not None else immediate["locality_acc"]
    components = {"ES": es, "GS": gs, "LS": ls, "ERS": final.get("retention_exact"), "ORS": final.get("probe_locality")}
    return {
        "method": method, "family": family, "edits_done": len(records[:position]), "edits_planned": len(records),
        "complete": position == len(records), "stopped_by": stopped_by,
        "immediate": immediate, "final_checkpoint": {k: v for k, v in final.items() if k != "lost_case_ids"},
        "protocols": protocols(immediate, checkpoint_rows),
        "unedited_model": {"true_answer_on_rephrases": unedited_true_rephrase},
        "lost_edits_at_end": len(final.get("lost_case_ids", [])),
        "harmonic_mean_score": harmonic_mean(components.values()), "harmonic_mean_components": components,
        "layer_histogram": layer_histogram(edits),
        "edits_not_applied": edits_not_applied(edits),
        "records_without": records_without(records),
        "diagnostics": {type(d).__name__: d.summarize(final.get("lost_case_ids", []))
                        for d in diagnostics if hasattr(d, "summarize")},
    }


def records_without(records) -> dict:
    """How many of the run's records have no rephrase, locality, portability or ground truth: parts the data
    lacks are counted here, never dropped in silence."""
    counts = {"rephrase": 0, "locality": 0, "portability": 0, "ground_truth": 0, "questions_without_answer": 0}
    for record in records:
        for part in record.missing_parts():
            counts[part] += 1
        counts["questions_without_answer"] += record.unanswered_questions
    return counts


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
