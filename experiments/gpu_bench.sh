#!/usr/bin/env bash
# One-shot GPU benchmark of the speed issue's targets (nasty_jax/bench.py).
#
#   bash experiments/gpu_bench.sh [extra bench flags]
#
# With no arguments runs `--preset=h100`; otherwise the given bench flags
# (e.g. `--preset=h100 --steps=10 --repeats=2` to shorten it;
# `--archs=resnet18 --dtypes=bfloat16 --batch_sizes=1024 --modes=normal
# --breakdown` for where a step's time goes; `--batch_sizes=2048` ...).
# Prints the step, epoch, ratio and target tables and writes
# $OUT/bench_h100.json and $OUT/bench_h100.log ($OUT: the device tool's
# output folder; /tmp/nasty_jax_bench elsewhere).
#
# Needs jax with a GPU, flax and optax; clu, ml_collections and wrapt come
# from carried wheels in .whl/ (git-ignored; experiments/gpu_env.sh says
# how to fetch them).
#
# On the lent H100: device run with carry ['.whl'], command
# 'bash experiments/gpu_bench.sh', timeout_s 580. XLA flags can be set
# through BENCH_XLA_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/nasty_jax_bench}"
source experiments/gpu_env.sh
export XLA_FLAGS="${BENCH_XLA_FLAGS:-${XLA_FLAGS:-}}"
if [[ $# -eq 0 ]]; then
  set -- --preset=h100
fi
"$PYTHON" -m nasty_jax.bench "$@" --json="$OUT/bench_h100.json" 2>&1 \
    | tee "$OUT/bench_h100.log"
