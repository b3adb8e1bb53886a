#!/usr/bin/env bash
# All LEMoE benchmark rows, one after another (each a fresh process), then the docs table.
set -euo pipefail
cd "$(dirname "$0")"
PY=../.venv/bin/python
$PY lemoe_lifelong.py --dataset zsre --edits 300 --variant full
$PY lemoe_lifelong.py --dataset counterfact --edits 300 --variant full
for v in softmax_router no_order_planning unfrozen wilke rome; do
  $PY lemoe_lifelong.py --dataset zsre --edits 50 --variant "$v"
done
$PY lemoe_lifelong.py --dataset zsre --edits 50 --variant full
$PY make_table.py
