#!/usr/bin/env bash
# Command 2: set up everything, then run the whole test suite in four environments (scripts/setup.sh):
#   .venv            the main suite, newest tested transformers (locks/main.txt), no easyeditor;
#   .venv-oldest     the model-facing tests at the oldest transformers pyproject.toml allows, building the
#                    embedded models itself (its own cache);
#   .venv-easyedit   the EasyEdit tests against PyPI easyeditor 0.0.1.dev0 (transformers 4.55); the model-facing
#                    tests run at the oldest and the newest transformers, which bracket it;
#   .venv-easyedit-head  the EasyEdit tests against EasyEdit HEAD (../shared/easyedit-head, or EASYEDIT_HEAD).
# Every environment runs even if an earlier one fails; the exit status is the first failure's.
# Each runs on two pytest-xdist workers of one thread each (two cores), an idle one taking tests from the
# other (work stealing); TEST_WORKERS changes the count.
# --quick: the inner loop: the main environment only, without the process and slow tests (tests/conftest.py).
set -uo pipefail
cd "$(dirname "$0")/.."
# Bytecode is kept (where the machine sets PYTHONDONTWRITEBYTECODE, every test process would compile
# transformers, and EasyEdit, again): in the environments and this checkout, and for EasyEdit HEAD, whose
# folder is not ours to write in, under .cache/pycache.
unset PYTHONDONTWRITEBYTECODE
QUICK=0
args=()
for arg in "$@"; do
  if [ "$arg" = "--quick" ]; then QUICK=1; else args+=("$arg"); fi
done
set -- "${args[@]+"${args[@]}"}"
WORKERS=(-n "${TEST_WORKERS:-2}" --dist worksteal)
CACHE="${EDIT_PLUGINS_CACHE:-$PWD/.cache/edit_plugins}"
if [ $QUICK = 1 ]; then
  bash scripts/setup.sh || exit $?
  exec env EDIT_PLUGINS_CACHE="$CACHE" .venv/bin/python -m pytest -q "${WORKERS[@]}" \
      -m "not easyeditor and not process and not slow" "$@"
fi
bash scripts/setup.sh --all || exit $?
HEAD="$(cd "${EASYEDIT_HEAD:-../shared/easyedit-head}" && pwd)"
status=0
run() {
  local name=$1; shift
  echo "== $name"
  "$@" || { rc=$?; [ $status -ne 0 ] || status=$rc; echo "== $name: FAILED (exit $rc)"; }
}
run "main suite (.venv)" env EDIT_PLUGINS_CACHE="$CACHE" .venv/bin/python -m pytest -q "${WORKERS[@]}" \
    -m "not easyeditor" --smollm2-stats "$@"
run "oldest transformers (.venv-oldest)" env EDIT_PLUGINS_CACHE="$CACHE-oldest" \
    .venv-oldest/bin/python -m pytest -q "${WORKERS[@]}" -m "oldest_transformers and not easyeditor" "$@"
run "easyeditor 0.0.1.dev0 (.venv-easyedit)" env EDIT_PLUGINS_CACHE="$CACHE" \
    .venv-easyedit/bin/python -m pytest -q "${WORKERS[@]}" -m easyeditor "$@"
run "EasyEdit HEAD (.venv-easyedit-head)" env EDIT_PLUGINS_CACHE="$CACHE" EASYEDIT_HEAD="$HEAD" PYTHONPATH="$HEAD" \
    PYTHONPYCACHEPREFIX="$PWD/.cache/pycache" \
    .venv-easyedit-head/bin/python -m pytest -q "${WORKERS[@]}" -m easyeditor "$@"
exit $status
