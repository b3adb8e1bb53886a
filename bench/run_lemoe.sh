#!/usr/bin/env bash
# Every CPU row of the LEMoE benchmark table, one after another (each a fresh process), then the table.
# Rows marked GPU in the table were run with BENCH_DEVICE=cuda on a lent GPU (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
row() { $PY -m bench.lemoe_lifelong --dataset "$1" --edits "$2" --variant "$3"; }
# ZsRE, 300 edits: the method, two ablations, and WilKE and ROME on the same stream
for v in full no_order_planning unfrozen wilke rome; do row zsre 300 "$v"; done
# ZsRE, 20 edits: every ablation, and ROME
for v in full softmax_router no_order_planning unfrozen token_span rome; do row zsre 20 "$v"; done
# KnowEdit ZsRE, 300 edits (same-subject locality, issue 49): the method, routing at layer 11, negative templates
for v in full layer11 negatives negatives_layer11; do row knowedit_zsre 300 "$v"; done
# CounterFact: the method at 300; at 50 against the best lead for generality, WilKE and ROME
row counterfact 300 full
for v in full token_span_templates token_span_templates_longer wilke rome; do row counterfact 50 "$v"; done
# inference overhead, on the adaptors the full-method runs saved
$PY -m bench.lemoe_inference
# the scale for CounterFact generality: the unedited model on the paraphrases of facts it knows
for n in 50 300; do $PY -m bench.known_fact_generality --edits "$n"; done
$PY -m bench.make_table
