#!/usr/bin/env bash
# Command 1: set up everything, then run the main job: the best weight editor and the best memory editor
# measured so far, side by side on the same CounterFact edits to the embedded SmolLM2-135M: guarded WilKE
# (the interference guard's lifelong preset: docs/interference_guard.md, "Using it") and LEMoE (its 1,000-edit
# KnowEdit ZsRE row in docs/comparison/zsre_1000.md). To be revisited with the 1,000-edit tables.
# One table (printed) and one retention plot, in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export EDIT_PLUGINS_CACHE="${EDIT_PLUGINS_CACHE:-$PWD/.cache/edit_plugins}"
DATA="${DATA:-../shared/data/counterfact_known.json}"
OUT="${OUT:-runs/main-$(date +%Y%m%d-%H%M%S)}"
.venv/bin/edit-plugins plugins
.venv/bin/edit-plugins compare --hparams hparams/WilKE/smollm2-135m-lifelong.yaml \
    --hparams hparams/LEMoE/smollm2-135m.yaml --data "$DATA" --num-edits "${NUM_EDITS:-32}" \
    --probe-data ../shared/data/known_1000.json --num-probes 50 \
    --unrelated-data ../shared/data/zsre_mend_eval.json --num-unrelated 50 --out "$OUT" "$@"
