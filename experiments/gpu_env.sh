# The set-up that the one-command GPU runs share (sourced by gpu_bench.sh
# and gpu_table1.sh from the repository root, with $OUT set).
#
# The GPU machine has jax (CUDA), flax, optax, orbax, numpy, pillow and
# tensorboard but no TensorFlow, TFDS, grain, clu or ml_collections, and no
# network. What nasty_jax needs beyond that is pure Python, carried as
# wheels in .whl/ (git-ignored) and installed here when present. Fetch them
# once, on a machine with network, from the repository root:
#
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl \
#       clu==0.0.12 ml_collections==1.1.0
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl \
#       --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       wrapt==2.5.2
#
# (wrapt: clu.metrics imports it; ~0.4 MiB for the three.) Without
# TensorFlow, stages write their TensorBoard files with tensorboard's own
# writer (nasty_jax/summaries.py).
#
# PYTHON picks the interpreter (default python3), e.g. a venv's for a CPU
# rehearsal.
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
if compgen -G '.whl/*.whl' > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target /tmp/nasty_jax_site .whl/*.whl
  export PYTHONPATH="/tmp/nasty_jax_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# A rerun on the same machine reuses the compiled programs.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/nasty_xla}"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm \
    --format=csv 2>/dev/null || true
