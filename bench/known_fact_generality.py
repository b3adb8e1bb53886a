"""How far the unedited SmolLM2 carries the CounterFact facts it knows into their paraphrase prompts.

    python -m bench.known_fact_generality --edits 300

The scale for LEMoE's CounterFact generality target: the same token accuracy (EasyEdit's generality
metric), scored for each record's true object on the same paraphrase prompts, before any edit. The
facts are the ones the LEMoE benchmark edits (their first true token is the model's prediction on the
rewrite prompt). Writes bench/results/known_fact_generality_<edits>.json.
"""
import argparse

from bench.common import bench_device, known_counterfact, setup, write_result
from edit_plugins.lifelong import metrics, scoring
from edit_plugins.models import load_model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=300, help="the first N known facts, as lemoe_lifelong.py takes them")
    args = parser.parse_args()
    setup(2)

    model, tok = load_model("smollm2-135m", bench_device())
    records = known_counterfact(model, tok, limit=args.edits)
    true_on_rewrite = scoring.score_answers(model, tok, [(r.request["prompt"], r.request["ground_truth"]) for r in records])
    true_on_paraphrase = scoring.score_answers(
        model, tok, [(p, r.request["ground_truth"]) for r in records for p in r.rephrase_prompts])
    write_result(f"known_fact_generality_{args.edits}", {
        "records": len(records), "paraphrase_prompts": len(true_on_paraphrase),
        "rewrite_token_acc": metrics.mean(s.accuracy for s in true_on_rewrite),
        "paraphrase_token_acc": metrics.mean(s.accuracy for s in true_on_paraphrase),
        "paraphrase_exact": metrics.mean(float(s.exact) for s in true_on_paraphrase),
    })


if __name__ == "__main__":
    main()
