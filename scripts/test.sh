#!/usr/bin/env bash
# Command 2: set up everything, then run the whole test suite in both environments:
# the main one (transformers 5.x, no easyeditor) and PyPI easyeditor 0.0.1.dev0 (transformers 4.55).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --easyedit
export EDIT_PLUGINS_CACHE="${EDIT_PLUGINS_CACHE:-$PWD/.cache/edit_plugins}"
.venv/bin/python -m pytest -q -m "not easyeditor" "$@"
.venv-easyedit/bin/python -m pytest -q -m "easyeditor or dev0_compatible" "$@"
