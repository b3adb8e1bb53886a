#!/usr/bin/env bash
# All LEMoE benchmark rows, one after another (each a fresh process), then the docs table.
# COMPARE_EDITS sets the size of the ablation and WilKE/ROME rows (default 20).
set -euo pipefail
cd "$(dirname "$0")"
PY=../.venv/bin/python
N=${COMPARE_EDITS:-20}
if [ "${SKIP_MAIN:-0}" != 1 ]; then
  $PY lemoe_lifelong.py --dataset zsre --edits 300 --variant full
fi
for v in full softmax_router no_order_planning unfrozen token_span wilke rome; do
  $PY lemoe_lifelong.py --dataset zsre --edits "$N" --variant "$v"
done
$PY lemoe_lifelong.py --dataset counterfact --edits 300 --variant full
for v in full token_span_templates; do  # CounterFact generality: the default against the best lead
  $PY lemoe_lifelong.py --dataset counterfact --edits 50 --variant "$v"
done
$PY make_table.py
