#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv (first time only), installs the project,
# then runs the main job or the tests.
#   bash run.sh demo [ndae demo options]   simulated federation on the shipped demo cohort → survival report
#   bash run.sh test [pytest options]      the full test suite
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${NDAE_VENV:-.venv}

if [ ! -x "$VENV/bin/ndae" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    echo "== installing ndae-fed into $VENV (first run only: a few minutes; pip's progress follows)"
    [ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch>=2.4,<2.14 (in pyproject.toml) takes the local CPU wheel here, not GBs of CUDA packages.
    # Not --quiet: a first-time user must see that minutes of install are progress, not a hang.
    "$VENV/bin/python" -m pip install -e ".[test]"
    echo "== installed"
    touch "$VENV/.installed"
fi
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac  # NDAE_VENV may be absolute
export PATH="$VENV/bin:$PATH"

command=${1:-demo}
shift || true
case "$command" in
    demo) exec ndae demo "$@" ;;
    # Two workers (pytest-xdist): a module, with the modules sharing its expensive session fixtures,
    # runs on one worker, slow ones first (tests/conftest.py). NDAE_TEST_WORKERS=0: one process.
    test) exec python -m pytest -q -p no:cacheprovider -n "${NDAE_TEST_WORKERS:-2}" --dist loadgroup --no-loadscope-reorder "$@" ;;
    *) echo "usage: bash run.sh demo|test [options]" >&2; exit 2 ;;
esac
