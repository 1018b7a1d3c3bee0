#!/usr/bin/env bash
# One command to set up and run nasty_jax on a fresh machine.
#
#   bash run.sh                 # set up, then the main job (digits pipeline)
#   bash run.sh --config=configs/cifar10.py:resnet18 --workdir=runs/c10
#   bash run.sh test            # set up, then the whole test suite
#
# Set-up: a virtualenv in .venv (Python 3.12 when available, else 3.11) with
# requirements.txt installed; reused on later calls.
set -euo pipefail
cd "$(dirname "$0")"

pick_python() {
  for p in "${PYTHON:-}" python3.12 "$HOME/.pyenv/versions/3.12."*/bin/python3.12 \
           /root/.pyenv/versions/3.12.*/bin/python3.12 python3.11 python3; do
    [ -n "$p" ] && command -v "$p" >/dev/null 2>&1 && "$p" -c \
      'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' \
      2>/dev/null && { echo "$p"; return; }
  done
  echo "run.sh: needs Python 3.11 or 3.12 (set PYTHON=/path/to/python)." >&2
  exit 1
}

if [ ! -x .venv/bin/python ] || [ requirements.txt -nt .venv/.installed ]; then
  py=$(pick_python)
  echo "run.sh: setting up .venv with $($py --version)" >&2
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  touch .venv/.installed
fi

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
if [ "${1:-}" = "test" ]; then
  shift
  # Two workers: CI has 2 cores, and the suite is compile-bound.
  exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" "$@"
fi
exec .venv/bin/python -m nasty_jax.main "$@"
