"""Training throughput of the real train steps: step-only and a full epoch.

  python -m nasty_jax.bench                      # resnet18 b64, 3 methods
  python -m nasty_jax.bench --preset=cpu         # the CPU ratio table
  python -m nasty_jax.bench --preset=reference \
      --reference_json=torch.json                # side by side with PyTorch
  python -m nasty_jax.bench --preset=h100        # the GPU targets
  python -m nasty_jax.bench --archs=resnet18 --batch_sizes=512,1024 \
      --dtypes=bfloat16 --modes=normal,nasty,kd --parallelism=jit,pmap \
      --epoch_inputs=device --json=bench.json

`cases` says what is timed (a `Case` per architecture, method, batch size,
dtype and parallelism; presets; targets), `measure` times it through the
training stages' own step builder (`programs.build_supervised`), `report`
prints the tables.

* Step-only: batches of normal noise already on the devices (a few,
  rotated), `--steps` steps per timing window after `--warmup` steps,
  bracketed by `block_until_ready`; the median of `--repeats` windows, with
  the spread. `host ms` is the time Python needs to dispatch a step (when
  it nears `step ms`, the host is the bottleneck); `cpu ms` the process's
  CPU time per step, all threads (on a CPU backend, the work itself: its
  ratios hold up when other processes share the cores, wall-clock ones do
  not). Compile time is the first call's wall time minus one step and is
  reported apart; so are the XLA cost-model FLOPs of one step.
* Full epoch: one whole epoch (or `--epoch_steps` steps of it) through an
  input pipeline, batch production included, with a stage's host sync
  every `--log_every_steps` steps. Timed loops run under
  `jax.transfer_guard_device_to_host('disallow')`: an implicit
  device-to-host copy (a hidden sync) inside them raises. 'device' is the
  in-memory path, 'stream' the host path (grain + TFDS records);
  `--dataset=synthetic` (the default) feeds the device path random uint8
  images without TFDS.
* `--breakdown` (jit, normal-mode cases) also times the model's eval
  forward (what a frozen network costs), its train forward + loss, and
  forward + backward, as fractions of the step.
* `--reference_json=FILE` (from `experiments/torch_reference_bench.py`,
  run with PyTorch on the same machine) adds the side-by-side table:
  img/s of the reference's own models and ours, and their ratio.

Output: tables on stdout and, with `--json=PATH`, everything as JSON
(written after every row, so a run cut short keeps what it measured).
With synthetic data nothing here needs TensorFlow, TFDS or grain (jax,
flax, optax, clu and ml_collections only). float32 runs at JAX's default
matmul precision unless `--matmul_precision` is given (on Ampere/Hopper
GPUs the default lets XLA use TF32, as PyTorch's cuDNN default did).
GPU: `experiments/gpu_bench.sh` runs `--preset=h100`.
"""
