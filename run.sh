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
# tcmalloc keeps a step's large temporaries mapped between steps, where
# glibc hands them back to the kernel and faults them in again zeroed every
# step (a CPU train step ~10% faster; docs/performance.md). Used when
# installed (Debian/Ubuntu: libtcmalloc-minimal4); NASTY_JAX_TCMALLOC=0
# turns it off.
tcmalloc=$(ldconfig -p 2>/dev/null | awk '/libtcmalloc_minimal\.so\.4 /{print $NF; exit}')
if [ -n "$tcmalloc" ] && [ "${NASTY_JAX_TCMALLOC:-1}" != 0 ] && \
   [[ "${LD_PRELOAD:-}" != *tcmalloc* ]]; then
  export LD_PRELOAD="$tcmalloc${LD_PRELOAD:+:$LD_PRELOAD}"
fi
if [ "${1:-}" = "test" ]; then
  shift
  # Two workers: CI has 2 cores, and the suite is compile-bound. Tests
  # marked `serial` (two jax.distributed processes, whose collectives time
  # out if a third process starves one of them) run after, alone.
  if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" "$@"
  fi
  .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" -m "not serial"
  exec .venv/bin/python -m pytest -q -m serial
fi
exec .venv/bin/python -m nasty_jax.main "$@"
