"""What LEMoE's routing threshold trades: paraphrases that reach their own edit's expert against
neighbourhood prompts that reach any expert, on the adaptor a finished lifelong run saved. Also the
final locality on the records' locality prompts, split by whether a prompt names an edited subject.

    python -m bench.lemoe_routing --dataset counterfact --edits 300 --variant full

Reads runs/bench-lemoe-<dataset>-<variant>-<edits>/state/method_state.safetensors (adaptor.safetensors in older
folders; from lemoe_lifelong.py);
no training. Writes bench/results/lemoe_routing_<dataset>_<variant>_<edits>.json.
"""
import argparse

import torch

from bench.common import bench_device, device_suffix, ROOT, SHARED, known_counterfact, setup, write_result
from edit_plugins.lifelong import metrics, scoring
from edit_plugins.lifelong.data import load_records
from edit_plugins.methods.lemoe import find_adaptor, load_adaptor
from edit_plugins.methods.lemoe.layer import valid_positions
from edit_plugins.models import load_model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=["zsre", "counterfact"], default="counterfact")
    parser.add_argument("--edits", type=int, default=300)
    parser.add_argument("--variant", default="full")
    args = parser.parse_args()
    setup(2)

    THRESHOLDS = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)

    model, tok = load_model("smollm2-135m", bench_device())
    records = (known_counterfact(model, tok, limit=args.edits) if args.dataset == "counterfact"
               else load_records(SHARED / "zsre_mend_eval.json")[: args.edits])
    locality_pairs = [pair for r in records for pair in r.locality]
    unedited_scores = scoring.score_answers(model, tok, locality_pairs)
    unedited_predictions = [s.predicted for s in unedited_scores]
    unedited_neighbourhood = metrics.neighbourhood_success(scoring.Scorer(model, tok), records) if args.dataset == "counterfact" else None
    state = ROOT / "runs" / f"bench-lemoe-{args.dataset}-{args.variant}-{args.edits}{device_suffix()}" / "state"
    load_adaptor(model, next(p for p in (state / "method_state.safetensors", state / "adaptor.safetensors") if p.is_file()))
    _, adaptor = find_adaptor(model)
    if adaptor.router.span != "sequence":
        # Below, a prompt's route is read at its last position, which holds only under sequence-span routing.
        raise SystemExit(f"this adaptor routes with routing_span {adaptor.router.span!r}; "
                         "bench/lemoe_routing.py measures sequence-span routing only")
    tok.padding_side = "left"  # the last column is every row's last token: its running best is the row's route


    def best_matches(prompts, batch_size=32):
        """{threshold: [(best margin over anchors and positions, that anchor's index) per prompt]}: a margin >= 0
        routes (the anchor's floor, where it has one, counts beside the threshold)."""
        captured = {}
        handle = adaptor.register_forward_pre_hook(lambda module, inputs: captured.update(x=inputs[0]))
        out = {t: [] for t in THRESHOLDS} | {"nearest": []}  # nearest: the anchor of highest cosine
        try:
            for start in range(0, len(prompts), batch_size):
                batch = tok(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(model.device)
                with torch.no_grad():
                    model.base_model(**batch)
                valid, _ = valid_positions(captured["x"], batch.attention_mask)
                cosine = (adaptor.router.features(captured["x"]) @ adaptor.router.anchors.T).masked_fill(
                    ~valid.unsqueeze(-1), -2.0)
                out["nearest"] += cosine.amax(dim=1).argmax(dim=-1).tolist()
                for t in THRESHOLDS:
                    margin, anchor = adaptor.router.best_match(captured["x"], valid, past=0, decoding=False,
                                                               threshold=t)
                    out[t] += list(zip(margin[:, -1].tolist(), anchor[:, -1].tolist()))
        finally:
            handle.remove()
        return out


    # Each edit's own anchor: the one its edit prompt matches best (cosine ≈ 1, the anchor was made from it).
    own = best_matches([r.request["prompt"] for r in records])["nearest"]
    paraphrases = [(i, p) for i, r in enumerate(records) for p in r.rephrase_prompts]
    neighbours = [p for r in records for p, _ in r.locality]
    para_matches, neigh_matches = best_matches([p for _, p in paraphrases]), best_matches(neighbours)
    rows = []
    for t in THRESHOLDS:
        para = [(own[i], match) for (i, _), match in zip(paraphrases, para_matches[t])]
        neigh = neigh_matches[t]
        rows.append({"threshold": t,
                     "paraphrase_own_expert": sum(m >= 0 and a == mine for mine, (m, a) in para) / len(para),
                     "paraphrase_any_expert": sum(m >= 0 for _, (m, _) in para) / len(para),
                     "neighbour_any_expert": sum(m >= 0 for m, _ in neigh) / len(neigh)})
        print(rows[-1], flush=True)
    final_scores = scoring.score_answers(model, tok, locality_pairs)
    locality = metrics.locality_by_edited_subjects(metrics.agreement(final_scores, unedited_predictions),
                                                    [p for p, _ in locality_pairs], {r.request.get("subject") for r in records})
    if unedited_neighbourhood is not None:
        locality["neighbourhood_success"] = {"unedited": unedited_neighbourhood,
                                             "final": metrics.neighbourhood_success(scoring.Scorer(model, tok), records)}
    print(locality)
    write_result(f"lemoe_routing_{args.dataset}_{args.variant}_{args.edits}",
                 {"dataset": args.dataset, "variant": args.variant, "edits": args.edits,
                  "anchors": len(adaptor.router.anchors), "threshold_used": adaptor.router.threshold,
                  "paraphrases": len(paraphrases), "neighbours": len(neighbours), "rows": rows, "locality": locality})


if __name__ == "__main__":
    main()
