#!/usr/bin/env bash
# Command 1: set up everything, then run the main job: a lifelong WilKE run on the embedded
# SmolLM2-135M over CounterFact facts from ../shared/data, printing the summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export EDIT_PLUGINS_CACHE="${EDIT_PLUGINS_CACHE:-$PWD/.cache/edit_plugins}"
DATA="${DATA:-../shared/data/counterfact_known.json}"
OUT="${OUT:-runs/main-$(date +%Y%m%d-%H%M%S)}"
.venv/bin/edit-plugins plugins
.venv/bin/edit-plugins lifelong --hparams hparams/WilKE/smollm2-135m-fast.yaml --data "$DATA" \
    --num-edits "${NUM_EDITS:-32}" --probe-data ../shared/data/known_1000.json --num-probes 100 \
    --out "$OUT" "$@"
