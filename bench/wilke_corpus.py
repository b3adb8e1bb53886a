"""How the size of the covariance corpus changes a single-layer edit (ROME, layer 4) on SmolLM2.

    python -m bench.wilke_corpus --edits 30

C = E[kkᵀ] is estimated from the first n documents of the offline default corpus (pydoc, 395
documents of ~1,000 characters), for several n, and compared with no C at all (identity,
`mom2_adjustment: false`). Each edit starts from the unedited model. Writes
bench/results/wilke_corpus.json.
"""
import argparse

from bench.common import ROOT, known_counterfact, setup, write_result
from edit_plugins import hparams
from edit_plugins.lifelong import metrics
from edit_plugins.lifelong.scoring import Scorer
from edit_plugins.methods.wilke import apply_wilke_to_model
from edit_plugins.models import load_model
from edit_plugins.plugins import get_method


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 100, 400])
    args = parser.parse_args()
    setup(2)

    model, tok = load_model("smollm2-135m", "cpu")
    records = known_counterfact(model, tok, limit=args.edits)
    settings = [("identity (no corpus)", None)] + [(f"pydoc, {n} documents", n) for n in args.sizes]
    result = {"edits": len(records), "rows": []}
    for label, n in settings:
        hp = hparams.load(ROOT / "hparams" / "WilKE" / "smollm2-135m-rome.yaml")
        hp.stats_dir = str(ROOT / "data" / "stats")
        hp.mom2_adjustment = n is not None
        hp.mom2_n_samples = n or hp.mom2_n_samples
        rows = []
        for record in records:
            _, weights_copy = apply_wilke_to_model(model, tok, [record.request], hp, return_orig_weights=True)
            rows.append(metrics.edit_metrics(Scorer(model, tok), record, [[-1]] * len(record.locality)))
            get_method("WilKE").undo(model, weights_copy)
        row = {"corpus": label, "documents": n, **{m: metrics.mean(r.get(m) for r in rows)
                                                     for m in ("efficacy", "paraphrase", "neighbourhood", "rewrite_acc")}}
        result["rows"].append(row)
        print(row, flush=True)
    write_result("wilke_corpus", result)


if __name__ == "__main__":
    main()
