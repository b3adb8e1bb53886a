"""How long one checkpoint takes: re-checking every past edit (retention) plus locality, on SmolLM2.

    python -m bench.recheck_speed      # all 700 ZsRE records, 1,000 CounterFact records

Times what the lifelong runner does at a checkpoint, on the unedited model (the cost does not
depend on the edits): every record's prompt and rephrasings against target_new (and, for
CounterFact, against target_true), plus every record's locality prompts. Writes
bench/results/recheck_speed.json.
"""
import time

from bench.common import SHARED, peak_rss_mb, setup, write_result
from edit_plugins.lifelong import metrics, scoring
from edit_plugins.lifelong.data import load_records
from edit_plugins.models import load_model


def main():
    setup(2)

    model, tok = load_model("smollm2-135m", "cpu")
    SOURCES = {  # (file, past edits): ZsRE has 700 records here; the EasyEdit CounterFact file has 10,000
        "zsre": (SHARED / "zsre_mend_eval.json", 700),
        "counterfact_easyedit": (SHARED / "counterfact_easyedit.json", 1000),
    }
    scored = []  # how many answers each scoring pass got, counted where it happens
    _score_answers = scoring.score_answers
    scoring.score_answers = lambda model, tok, pairs, **kw: scored.append(len(pairs)) or _score_answers(model, tok, pairs, **kw)
    result = {}
    metrics.retention(scoring.Scorer(model, tok), load_records(SOURCES["zsre"][0], num_edits=8))  # warm-up
    for name, (path, count) in SOURCES.items():
        records = load_records(path, num_edits=count)
        scored.clear()
        started = time.perf_counter()
        metrics.retention(scoring.Scorer(model, tok), records)
        locality_pairs = [pair for r in records for pair in r.locality]
        scoring.score_answers(model, tok, locality_pairs)
        seconds = time.perf_counter() - started
        result[name] = {"records": len(records), "scored_pairs": sum(scored), "seconds": round(seconds, 1)}
        print(name, result[name], flush=True)
    result["peak_rss_mb"] = round(peak_rss_mb())
    write_result("recheck_speed", result)


if __name__ == "__main__":
    main()
