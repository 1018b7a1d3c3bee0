#!/usr/bin/env bash
# Table 1's CNN column (CIFAR-10, ResNet-18 teachers) at the paper's full
# schedule on one GPU, in one command (experiments/gpu_table1.py):
#
#   bash experiments/gpu_table1.sh [DATA] [--tiny] [--budget_s=S]
#       [--dtype=float32] [--concurrency=N] [-- extra main flags]
#
# DATA is CIFAR-10 as a JPEG pack .npz (20 MB), an arrays .npz or an image
# folder (nasty_jax/data/arrays.py); default .data/cifar10_jpeg.npz (.data/
# is git-ignored: put the pack there and carry it). Trains in
# runs/gpu_table1 (runs/gpu_table1_tiny with --tiny), prints Table 1's CNN
# column beside the paper's numbers and img/s per stage, and writes
# $OUT/gpu_table1.json, .md and .log ($OUT: the device tool's output
# folder; /tmp/nasty_jax_table1 elsewhere). Killed or stopped at the
# budget, the same command resumes: finished stages are kept, unfinished
# ones go on from their last checkpoint.
#
# What trains: the main command's stages normal, nasty (ResNet-18, 160
# epochs, SGD 0.1 x0.1 at 80 and 120), baseline/net, kd_normal/net and
# kd_nasty/net (the CNN, 100 epochs, Adam 1e-3); batch 128, tau 4, omega
# 0.04, alpha 0.9. model.dtype=bfloat16 (bf16 convolutions; parameters, BN
# statistics, softmax, KL and losses stay float32, as tests/
# mixed_precision_test.py checks) once a check on the device finds bf16
# eval logits within 5% of float32's; else float32, the exact path. One
# process per stage, started once the stages it reads are done, two at a
# time: the CNN alone beside the normal teacher, KD from it beside the
# nasty teacher, then KD from the nasty teacher.
#
# Time on one H100, estimated (no GPU has run it yet). Work: a teacher is
# 62,400 steps of 128 images, a CNN stage 39,000. ResNet-18 on 32x32 costs
# 0.56 GFLOP per image forward, ~1.7 to train: 13 PFLOP for the normal
# teacher, 18 for the nasty one (plus the adversary's forward), 2.8 for
# each KD student (the teacher's forward), 37 in all: 37 s at the bf16
# dense peak (990 TFLOP/s). Batch-128 steps of 32x32 convolutions are far
# from that; assumed, with per-step overheads (~11% of peak): a normal step
# 2.0 ms (64k img/s), a nasty step 2.8 ms (46k img/s), a KD CNN step 1.0
# ms, a CNN-alone step 0.5 ms (dispatch-bound). The critical path normal ->
# nasty -> KD from nasty is then 125 + 175 + 39 = 339 s. On top of it: the
# CNN alone and KD from normal sharing the GPU (+~30 s), each epoch's test
# pass and checkpoints (~0.1 s, more when best/ is rewritten: +~60 s over
# the path's 420 epochs), cold compiles (~30 s for each teacher; KD from
# nasty reuses KD from normal's programs from the compilation cache: +~70
# s), the bf16 check and the data (+~20 s): ~520 s, 8.7 min. That is at the
# edge of the run's own budget, 515 s (--budget_s; the command ends within
# 9 min): it then stops the running stages at a checkpoint and prints what
# is done. Run the same command again at once (the machine stays warm and
# keeps runs/) to finish; at 45k/32k img/s for the teachers the path needs
# ~11 min in all.
#
# On the lent GPU: device run with carry ['.whl', '.data'], command
# 'bash experiments/gpu_table1.sh', timeout_s 600 (the wheels: see
# experiments/gpu_env.sh). CPU rehearsal (two steps per stage):
#   PYTHON=.venv/bin/python bash experiments/gpu_table1.sh DATA --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/nasty_jax_table1}"
source experiments/gpu_env.sh
DATA=.data/cifar10_jpeg.npz
if [[ $# -gt 0 && "$1" != -* ]]; then
  DATA="$1"
  shift
fi
"$PYTHON" experiments/gpu_table1.py --data="$DATA" --out="$OUT" "$@" 2>&1 \
    | tee "$OUT/gpu_table1.log"
