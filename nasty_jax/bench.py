"""Training throughput of the real train steps: step-only and a full epoch.

  python -m nasty_jax.bench                 # resnet18 b64 x 3 modes x 2 dtypes
  python -m nasty_jax.bench --preset=cpu    # the CPU ratio table
  python -m nasty_jax.bench --preset=h100   # the speed targets, one GPU
  python -m nasty_jax.bench --archs=resnet18 --batch_sizes=512,1024 \\
      --dtypes=bfloat16 --modes=normal,nasty,kd --parallelism=jit,pmap \\
      --epoch_inputs=device --json=bench.json

What is timed is what `train.train_and_evaluate` runs per step:
`steps.train_step` (normal, nasty or kd objective; the frozen adversary or
teacher's forward inside the same jitted step) wrapped by
`parallel.Parallel.train_step` (donated state), called with the step's
`fold_in` key, on a batch laid out by `Parallel.shard_batch`, with the
returned metrics merged on device. Models are built with the given compute
dtype ('bfloat16': bf16 convolutions and activations with float32
parameters, BN statistics, logits and losses); the optimiser is the
reference's SGD (momentum 0.9, weight decay 5e-4; a small learning rate, as
the batches are noise).

* Step-only: batches of normal noise already on the devices (a few,
  rotated), `--steps` steps per timing window after `--warmup` steps,
  bracketed by `block_until_ready`; the median of `--repeats` windows, with
  the spread. `host ms` is the time Python needs to dispatch a step (when
  it nears `step ms`, the host is the bottleneck); `cpu ms` the process's
  CPU time per step, all threads (on a CPU backend, the work itself: its
  ratios hold up when other processes share the cores, wall-clock ones do
  not). Compile time is the first call's wall time minus one step and is
  reported apart; so are the XLA cost-model FLOPs of one step and the rate
  they imply.
* Full epoch: one whole epoch (or `--epoch_steps` steps of it) through an
  input pipeline, batch production included, with train.py's host sync
  every `--log_every_steps` steps, compared with the step-only figure.
  Timed loops run under `jax.transfer_guard_device_to_host('disallow')`:
  an implicit device-to-host copy (a hidden sync) inside them raises.
  'device' is the in-memory path (`data.device_pipeline`: uint8 split on
  the devices, shuffled and augmented there); 'stream' the host path (grain
  + TFDS records). `--dataset=synthetic` (the default) feeds the device
  path random uint8 images of the dataset's shape (`--num_train` of them)
  without TFDS; `--dataset=digits|cifar10|image_folder|...` reads a
  prepared TFDS dataset through `data.create_dataset`, for either path.
* `--breakdown` (jit, normal-mode cases) also times the model's eval
  forward (what the frozen network costs), its train forward + loss, and
  forward + backward, as fractions of the step: the rest of a step is the
  optimiser and the metrics.

Output: a table on stdout (steps, epochs, ratios between matching rows:
bf16/fp32, pmap/jit, nasty/normal, kd/normal, epoch/step, stream/device,
and with `--targets` the speed issue's targets) and, with `--json=PATH`,
everything as JSON (written after every row, so a run cut short keeps what
it measured).

Imports: with synthetic data nothing here needs TensorFlow, TFDS, grain or
ml_collections (only jax, flax, optax and clu.metrics); a real dataset
imports the TFDS/grain data path when it is first used.

GPU: `experiments/gpu_bench.sh` runs `--preset=h100` (ResNet-18 CIFAR fp32
b128 and bf16 b1024 normal/nasty/kd steps, jit and pmap, device-path
epochs, and ResNeXt-29 at 64x64 fp32/bf16 b128), printing the target table
last; 8 compiles and ~800 timed steps, an estimated 5-8 minutes (not yet
run on a GPU). The lent GPU machine has jax 0.11, flax and optax but no
TF/TFDS/grain/ml_collections/clu: carry the pure-Python clu wheel
(.whl/ is git-ignored):

  python3 -m pip download --no-deps --only-binary=:all: -d .whl clu==0.0.12
  device run: carry ['.whl'], command 'bash experiments/gpu_bench.sh',
      timeout_s 580

float32 runs at JAX's default matmul precision unless `--matmul_precision`
is given: on Ampere/Hopper GPUs that lets XLA use TF32 for float32
convolutions, as PyTorch's cuDNN default did for the reference's figures
(`--matmul_precision=highest` for true float32).
"""


from nasty_jax import runtime  # Before jax starts: it sets XLA_FLAGS.

runtime.set_cpu_flags()

import argparse
import dataclasses
import functools
import gc
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import types
import warnings
from typing import Any, Callable, Iterable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from nasty_jax import losses
from nasty_jax import models
from nasty_jax import parallel as parallel_lib
from nasty_jax import state as state_lib
from nasty_jax import steps
from nasty_jax.data import augment
from nasty_jax.data import device_pipeline

MODES = ('normal', 'nasty', 'kd')
DTYPES = ('float32', 'bfloat16')
INPUTS = ('device', 'stream')
SYNTHETIC = 'synthetic'
PRESETS = ('cpu', 'h100')
# The reference's optimiser for every architecture but net/mlp (SGD,
# momentum 0.9, weight decay 5e-4) and the CIFAR-10 loss settings. The
# learning rate is 100x lower than the reference's 0.1: it costs the same,
# and keeps the weights finite while they fit noise.
_SGD = types.SimpleNamespace(
    name='sgd', learning_rate=1e-3, momentum=0.9, weight_decay=5e-4,
    nesterov=False, milestones=(), gamma=0.1)
_LOSS = types.SimpleNamespace(temperature=4.0, omega=0.04, alpha=0.9)
# Distinct resident batches the step-only timing rotates through.
_NUM_BATCHES = 4

# img/s of the reference's own PyTorch code on one H100 (the speed issue):
# synthetic data on the GPU, (arch, mode, dtype, batch, image size).
REFERENCE_IMAGES_PER_S = {
    ('resnet18', 'normal', 'float32', 128, 32): 13_576.0,
    ('resnet18', 'nasty', 'float32', 128, 32): 8_594.0,
    ('resnext29', 'normal', 'float32', 128, 64): 624.0,
    ('resnext29', 'normal', 'bfloat16', 128, 64): 1_263.0,
}


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmarked configuration of the train step.

  Attributes:
    arch: trained architecture (`models.MODEL_NAMES`).
    mode: 'normal', 'nasty' (against a frozen adversary) or 'kd' (a student
      against a frozen teacher).
    batch_size: global batch size.
    dtype: compute dtype, 'float32' or 'bfloat16'.
    parallelism: 'jit' or 'pmap' (`parallel.PARALLELISMS`).
    image_size: input height = width.
    frozen_arch: the adversary's or teacher's architecture; None = `arch`
      (the paper's nasty setting). Unused in normal mode.
    epoch_inputs: input paths to time a full epoch through.
  """
  arch: str
  mode: str
  batch_size: int
  dtype: str = 'float32'
  parallelism: str = 'jit'
  image_size: int = 32
  frozen_arch: str | None = None
  epoch_inputs: tuple[str, ...] = ()

  def __post_init__(self):
    names = models.MODEL_NAMES + models.TINY_MODEL_NAMES
    for what, value, valid in (
        ('arch', self.arch, names), ('frozen_arch', self.frozen_arch,
                                     names + (None,)),
        ('mode', self.mode, MODES), ('dtype', self.dtype, DTYPES),
        ('parallelism', self.parallelism, parallel_lib.PARALLELISMS)):
      if value not in valid:
        raise ValueError(f'Unknown {what} {value!r}; valid: '
                         f'{", ".join(str(v) for v in valid)}.')
    for inp in self.epoch_inputs:
      if inp not in INPUTS:
        raise ValueError(f'Unknown epoch input {inp!r}; valid: '
                         f'{", ".join(INPUTS)}.')
    if self.batch_size < 2:
      raise ValueError(f'batch_size must be >= 2 (train-mode BatchNorm); '
                       f'got {self.batch_size}.')

  @property
  def frozen(self) -> str | None:
    """The frozen network's architecture, or None in normal mode."""
    return None if self.mode == 'normal' else (self.frozen_arch or self.arch)

  def describe(self) -> dict[str, Any]:
    """The case's fields as they appear in every result row."""
    return {'arch': self.arch, 'mode': self.mode, 'frozen_arch': self.frozen,
            'batch_size': self.batch_size, 'dtype': self.dtype,
            'parallelism': self.parallelism, 'image_size': self.image_size}


@dataclasses.dataclass
class Options:
  """What to measure and how long (see the module docstring).

  Attributes:
    cases: the configurations, in order.
    num_classes: classifier outputs.
    num_devices: devices to use; -1 = all JAX sees.
    steps: timed steps per window.
    repeats: timing windows (median and spread are reported).
    warmup: untimed steps after the compiling first call.
    epoch_steps: steps of the timed epoch; -1 = a whole epoch.
    dataset: 'synthetic' or a prepared TFDS dataset name.
    data_dir: TFDS data dir of a real dataset.
    manual_dir: image_folder / tiny_imagenet source folder.
    num_train: synthetic training examples (CIFAR's 50,000 by default).
    log_every_steps: host sync period inside a timed epoch (train.py's
      logging); 0 = none.
    breakdown: also time forward / forward+backward (jit, normal mode).
    targets: evaluate the speed issue's targets.
    json_path: where to write the results; None = nowhere.
    seed: seed of parameters, data and augmentation.
  """
  cases: Sequence[Case]
  num_classes: int = 10
  num_devices: int = -1
  steps: int = 20
  repeats: int = 3
  warmup: int = 2
  epoch_steps: int = -1
  dataset: str = SYNTHETIC
  data_dir: str | None = None
  manual_dir: str | None = None
  num_train: int = 50_000
  log_every_steps: int = 50
  breakdown: bool = False
  targets: bool = False
  json_path: str | None = None
  seed: int = 0


# ------------------------------------------------------------------ steps --


class _Trainer:
  """One case's state, frozen network and wrapped step: train.py's loop body.

  Attributes:
    case: the configuration.
    par: the parallelism wrapper.
    model: the trained network.
    p_train: the wrapped `steps.train_step`.
    state: the current train state (donated to every step).
  """

  def __init__(self, case: Case, par: parallel_lib.Parallel,
               num_classes: int, seed: int):
    self.case, self.par = case, par
    dtype = jnp.dtype(case.dtype)
    self.model = models.get_model(case.arch, num_classes, dtype=dtype,
                                  bn_axis_name=par.axis_name)
    tx = state_lib.create_optimizer(_SGD, steps_per_epoch=1)
    shape = (1, case.image_size, case.image_size, 3)
    init = jax.jit(lambda key: state_lib.create_train_state(
        self.model.init(key, jnp.zeros(shape, jnp.float32), train=False),
        tx), out_shardings=par.replicated)
    self.base_key = jax.random.key(seed)
    # Parameters from an 'rbg' key, as train.py: threefry-based init
    # compiles far slower on XLA:CPU.
    init_key = jax.random.key(seed, impl='rbg')
    self.state = init(init_key)
    frozen_model = self.frozen_vars = None
    if case.frozen is not None:
      # Frozen nets are built like train.load_frozen: same dtype, no BN
      # axis (eval mode), variables replicated.
      frozen_model = models.get_model(case.frozen, num_classes, dtype=dtype)
      self.frozen_vars = jax.jit(
          lambda key: frozen_model.init(key, jnp.zeros(shape, jnp.float32),
                                        train=False),
          out_shardings=par.replicated)(jax.random.fold_in(init_key, 1))
    self.p_train = par.train_step(functools.partial(
        steps.train_step, model=self.model, tx=tx,
        objective=steps.create_objective(case.mode, _LOSS),
        learning_rate_fn=state_lib.learning_rate_schedule(_SGD, 1),
        frozen_model=frozen_model, axis_name=par.axis_name))
    self.step = 0
    self.last_loss = float('nan')
    self._metrics = None

  def run(self, batches: Iterable[dict[str, Any]],
          log_every_steps: int = 0) -> None:
    """Trains on `batches` as train.py does, syncing only at log steps."""
    for batch in batches:
      self.state, m = self.p_train(
          self.state, self.frozen_vars, self.par.shard_batch(batch),
          jax.random.fold_in(self.base_key, self.step + 1))
      self._metrics = m if self._metrics is None else self._metrics.merge(m)
      self.step += 1
      if log_every_steps and self.step % log_every_steps == 0:
        self.sync()

  def sync(self) -> float:
    """Waits for every dispatched step; returns the mean loss since the last.

    Like train.py's log step: the merged metrics come to the host.
    """
    jax.block_until_ready(self.state)
    if self._metrics is not None:
      self.last_loss = float(jax.device_get(self._metrics.compute())['loss'])
      self._metrics = None
    return self.last_loss

  def flops_per_step(self, batch: dict[str, Any]) -> float | None:
    """XLA's cost-model FLOPs of one step over all devices (cached lowering).

    None where the backend gives no estimate.
    """
    try:
      lowered = self.p_train.lower(self.state, self.frozen_vars,
                                   self.par.shard_batch(batch),
                                   jax.random.fold_in(self.base_key, 0))
      cost = lowered.cost_analysis()
    except Exception:  # pylint: disable=broad-except
      return None
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else None
    flops = (cost or {}).get('flops')
    if flops is None or flops <= 0:
      return None
    # A pmapped program is one device's share of the global batch.
    return float(flops) * (self.par.device_count
                           if self.par.kind == 'pmap' else 1)

  def compile_count(self) -> int | None:
    """Programs the wrapped step holds (1 = never recompiled), if known."""
    size = getattr(self.p_train, '_cache_size', None)
    try:
      return int(size()) if size is not None else None
    except Exception:  # pylint: disable=broad-except
      return None


def _synthetic_batches(case: Case, par: parallel_lib.Parallel,
                       num_classes: int, seed: int) -> list[dict[str, Any]]:
  """Normalised-looking batches already on the devices, as the input paths
  lay them out (global arrays sharded along the batch axis)."""
  shape = (case.batch_size, case.image_size, case.image_size, 3)

  def make(key):
    k_image, k_label = jax.random.split(key)
    return {'image': jax.random.normal(k_image, shape,
                                       jnp.dtype(case.dtype)),
            'label': jax.random.randint(k_label, shape[:1], 0, num_classes,
                                        jnp.int32)}

  make = jax.jit(make, out_shardings=par.batch_sharding)
  key = jax.random.key(seed + 1)
  return [make(jax.random.fold_in(key, i)) for i in range(_NUM_BATCHES)]


def _windows(run_steps: Callable[[int], Any], sync: Callable[[], Any],
             steps_per_window: int, repeats: int
             ) -> tuple[list[float], list[float], list[float]]:
  """Seconds per step of each window: wall, host dispatch, process CPU.

  Process CPU time (all threads, XLA's and grain's included) is the work
  done; unlike wall time it barely moves when other processes share the
  cores, so CPU-bound ratios stay comparable on a busy machine.
  """
  wall, host, cpu = [], [], []
  for _ in range(repeats):
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    run_steps(steps_per_window)
    dispatched = time.perf_counter()
    sync()
    end, cpu_end = time.perf_counter(), time.process_time()
    wall.append((end - start) / steps_per_window)
    host.append((dispatched - start) / steps_per_window)
    cpu.append((cpu_end - cpu_start) / steps_per_window)
  return wall, host, cpu


def measure_step(trainer: _Trainer, batches: list[dict[str, Any]],
                 opts: Options) -> dict[str, Any]:
  """Compile time and step-only throughput of one case.

  Args:
    trainer: the case's trainer, not yet called.
    batches: resident batches to rotate through.
    opts: steps, repeats and warm-up.

  Returns:
    The result row (see `run`).
  """
  case = trainer.case
  cycle = itertools.cycle(batches)
  donated_leaf = jax.tree_util.tree_leaves(trainer.state.params)[0]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    start = time.perf_counter()
    trainer.run([next(cycle)])
    trainer.sync()
    first_call = time.perf_counter() - start
  # A donated input is deleted by the call; XLA warns when it cannot reuse
  # a donated buffer.
  donated = donated_leaf.is_deleted() and not any(
      'donated' in str(w.message).lower() for w in caught)
  # At least 2 steps: the second compiles the metrics merge, kept out of
  # the timed windows.
  trainer.run(itertools.islice(cycle, max(2, opts.warmup)))
  trainer.sync()
  with jax.transfer_guard_device_to_host('disallow'):
    wall, host, cpu = _windows(
        lambda n: trainer.run(itertools.islice(cycle, n)), trainer.sync,
        opts.steps, opts.repeats)
  step_s = statistics.median(wall)
  flops = trainer.flops_per_step(batches[0])
  row = case.describe()
  row.update(
      devices=trainer.par.device_count,
      compile_s=max(0.0, first_call - step_s),
      step_ms=1e3 * step_s, step_ms_min=1e3 * min(wall),
      step_ms_max=1e3 * max(wall),
      host_ms_per_step=1e3 * statistics.median(host),
      cpu_ms_per_step=1e3 * statistics.median(cpu),
      images_per_s=case.batch_size / step_s,
      flops_per_step=flops,
      tflops_per_s=None if flops is None else flops / step_s / 1e12,
      donated=bool(donated), compiled_programs=trainer.compile_count(),
      # The last window's mean loss: proof the timed steps were finite.
      loss=trainer.last_loss, timed_steps=opts.steps * opts.repeats)
  return row


def measure_breakdown(trainer: _Trainer, batches: list[dict[str, Any]],
                      opts: Options, step_ms: float) -> list[dict[str, Any]]:
  """Times parts of a jit step: eval forward, train forward, fwd + bwd.

  Args:
    trainer: a jit case's trainer (its state is read, not changed).
    batches: resident batches.
    opts: steps and repeats.
    step_ms: the whole step's time, for the fractions.

  Returns:
    One row per part with its ms and fraction of the step.
  """
  model, variables = trainer.model, trainer.state.variables
  key = jax.random.fold_in(trainer.base_key, 0)

  def train_loss(params, images, labels):
    logits, _ = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, images,
        train=True, mutable=['batch_stats'], rngs={'dropout': key})
    return losses.cross_entropy(logits, labels)

  parts = {
      'forward (eval, = frozen net)': jax.jit(
          lambda v, b: model.apply(v, b['image'], train=False)),
      'forward (train) + loss': jax.jit(
          lambda v, b: train_loss(v['params'], b['image'], b['label'])),
      'forward + backward': jax.jit(
          lambda v, b: jax.grad(train_loss)(v['params'], b['image'],
                                            b['label'])),
  }
  rows = []
  for name, fn in parts.items():
    out = [None]
    cycle = itertools.cycle(batches)

    def run_steps(n, fn=fn, out=out, cycle=cycle):
      for batch in itertools.islice(cycle, n):
        out[0] = fn(variables, batch)

    run_steps(1 + opts.warmup)
    wall, _, cpu = _windows(run_steps, lambda out=out: jax.block_until_ready(
        out[0]), opts.steps, opts.repeats)
    ms = 1e3 * statistics.median(wall)
    row = trainer.case.describe()
    row.update(part=name, ms=ms, fraction_of_step=ms / step_ms,
               cpu_ms=1e3 * statistics.median(cpu))
    rows.append(row)
  return rows


# ------------------------------------------------------------------ epochs --


class _Datasets:
  """Input pipelines for the epoch measurements, built on demand."""

  def __init__(self, opts: Options):
    self.opts = opts
    self._synthetic = {}

  def create(self, case: Case, inp: str, par: parallel_lib.Parallel):
    """A pipeline laid out for `case` (batch size, dtype) and `par`."""
    opts = self.opts
    if opts.dataset == SYNTHETIC:
      return self._synthetic_pipeline(case, par)
    # Imported here: the TFDS/grain data path is only needed for real data.
    from nasty_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    cfg = types.SimpleNamespace(
        name=opts.dataset, data_dir=opts.data_dir, manual_dir=opts.manual_dir,
        image_size=case.image_size, num_classes=opts.num_classes)
    return input_pipeline.create_dataset(
        cfg, case.batch_size, opts.seed, input=inp,
        sharding=par.batch_sharding, image_dtype=jnp.dtype(case.dtype))

  def _synthetic_pipeline(self, case: Case, par: parallel_lib.Parallel):
    size = case.image_size
    if size not in self._synthetic:
      rng = np.random.default_rng(self.opts.seed)
      images = rng.integers(0, 256, (self.opts.num_train, size, size, 3),
                            dtype=np.uint8)
      labels = rng.integers(0, self.opts.num_classes, self.opts.num_train)
      self._synthetic = {size: (images, labels)}  # Keep one size in memory.
    images, labels = self._synthetic[size]
    # CIFAR's policy up to 32 px, Tiny-ImageNet's above (create_dataset's
    # default for image folders).
    policy, norm = (('crop_flip', augment.CIFAR10_NORM) if size <= 32
                    else ('rotate_flip', augment.TINY_IMAGENET_NORM))
    return device_pipeline.DevicePipeline(
        (images, labels), (images[:case.batch_size],
                           labels[:case.batch_size]),
        num_classes=self.opts.num_classes,
        global_batch_size=case.batch_size, eval_batch_size=case.batch_size,
        seed=self.opts.seed, policy=augment.get_policy(policy), norm=norm,
        sharding=par.batch_sharding, image_dtype=jnp.dtype(case.dtype))


def measure_epoch(trainer: _Trainer, datasets: _Datasets, inp: str,
                  opts: Options, step_images_per_s: float
                  ) -> dict[str, Any]:
  """One (possibly capped) epoch through an input path, batches included.

  Args:
    trainer: the case's trainer, its step already compiled.
    datasets: pipeline factory.
    inp: 'device' or 'stream'.
    opts: epoch cap and log period.
    step_images_per_s: the case's step-only figure.

  Returns:
    The epoch row (see `run`).
  """
  start = time.perf_counter()
  pipeline = datasets.create(trainer.case, inp, trainer.par)
  setup_s = time.perf_counter() - start
  if inp == 'device':
    # Compiles the pipeline's permutation and batch functions, untimed (a
    # training run compiles them once). The stream path compiles nothing.
    trainer.run(itertools.islice(pipeline.train_batches(0), 1))
    trainer.sync()
  num_steps = pipeline.steps_per_epoch
  if opts.epoch_steps > 0:
    num_steps = min(num_steps, opts.epoch_steps)
  trainer.sync()
  # Nothing inside an epoch may wait for an implicit device-to-host copy;
  # the log steps' explicit `device_get` is the only sync.
  with jax.transfer_guard_device_to_host('disallow'):
    start, cpu_start = time.perf_counter(), time.process_time()
    batches = pipeline.train_batches(1)
    trainer.run(itertools.islice(batches, num_steps), opts.log_every_steps)
    loss = trainer.sync()
    epoch_s = time.perf_counter() - start
    cpu_ms_per_step = 1e3 * (time.process_time() - cpu_start) / num_steps
  del batches, pipeline
  gc.collect()  # Stops a stream iterator's read-ahead threads.
  images_per_s = num_steps * trainer.case.batch_size / epoch_s
  row = trainer.case.describe()
  row.update(
      devices=trainer.par.device_count, input=inp, dataset=opts.dataset,
      steps=num_steps, setup_s=setup_s, epoch_s=epoch_s,
      images_per_s=images_per_s, step_images_per_s=step_images_per_s,
      vs_step=images_per_s / step_images_per_s,
      cpu_ms_per_step=cpu_ms_per_step,
      compiled_programs=trainer.compile_count(), loss=loss)
  return row


# ----------------------------------------------------------------- targets --


@dataclasses.dataclass(frozen=True)
class Target:
  """A speed target of the issue, checked against result rows.

  Attributes:
    name: what it says.
    table: 'steps' or 'epochs'.
    where: field values a row must have.
    field: the row value compared.
    minimum: the value to reach.
    every: True = every matching row must reach it; False = the best one.
  """
  name: str
  table: str
  where: tuple[tuple[str, Any], ...]
  field: str
  minimum: float
  every: bool = False

  def check(self, results: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in results[self.table]
            if all(r.get(k) == v for k, v in self.where)]
    values = [r[self.field] for r in rows if r.get(self.field) is not None]
    value = (min(values) if self.every else max(values)) if values else None
    return {'target': self.name, 'value': value, 'minimum': self.minimum,
            'met': None if value is None else value >= self.minimum,
            'rows': len(values)}


def _ref(arch, mode, dtype, batch, size):
  return REFERENCE_IMAGES_PER_S[(arch, mode, dtype, batch, size)]


H100_TARGETS = (
    Target('ResNet-18 nasty step, bf16 (img/s)', 'steps',
           (('arch', 'resnet18'), ('mode', 'nasty'), ('dtype', 'bfloat16'),
            ('image_size', 32)), 'images_per_s', 85_000.0),
    Target('ResNet-18 normal step, bf16 (img/s)', 'steps',
           (('arch', 'resnet18'), ('mode', 'normal'), ('dtype', 'bfloat16'),
            ('image_size', 32)), 'images_per_s', 110_000.0),
    Target('ResNet-18 nasty step, fp32 b128 >= 3x reference (img/s)',
           'steps', (('arch', 'resnet18'), ('mode', 'nasty'),
                     ('dtype', 'float32'), ('batch_size', 128),
                     ('image_size', 32)), 'images_per_s',
           3 * _ref('resnet18', 'nasty', 'float32', 128, 32)),
    Target('Full epoch (device input) >= 90% of step-only, every row',
           'epochs', (('input', 'device'),), 'vs_step', 0.9, every=True),
    Target('ResNeXt-29 64x64 step >= 4x reference fp32 (img/s)', 'steps',
           (('arch', 'resnext29'), ('dtype', 'float32'),
            ('image_size', 64)), 'images_per_s',
           4 * _ref('resnext29', 'normal', 'float32', 128, 64)),
)


# ----------------------------------------------------------------- presets --


def _grid(archs: Sequence[str], modes: Sequence[str],
          batch_sizes: Sequence[int], dtypes: Sequence[str],
          parallelisms: Sequence[str], *, image_size: int = 32,
          kd_teacher: str | None = None,
          epoch_inputs: Sequence[str] = (),
          epoch_modes: Sequence[str] = ('normal',)) -> list[Case]:
  """Every combination, epochs for the first parallelism and epoch_modes."""
  cases = []
  for arch, batch, dtype, par, mode in itertools.product(
      archs, batch_sizes, dtypes, parallelisms, modes):
    timed = (tuple(epoch_inputs) if mode in epoch_modes
             and par == parallelisms[0] else ())
    cases.append(Case(arch, mode, batch, dtype, par, image_size,
                      frozen_arch=kd_teacher if mode == 'kd' else None,
                      epoch_inputs=timed))
  return cases


def preset(name: str) -> tuple[list[Case], dict[str, Any]]:
  """A named benchmark: its cases and its Options overrides.

  * 'cpu': the CPU ratio table: resnet18 b64 and preresnet20 b128, fp32 and
    bf16, normal / nasty / kd (teacher resnet18, the paper's CIFAR-10
    teacher), jit and pmap, fp32 device vs stream epochs (6 steps) on
    digits, and where a normal step's time goes.
  * 'h100': the speed issue's targets on one GPU (see H100_TARGETS).

  Args:
    name: one of PRESETS.

  Returns:
    (cases, Options field overrides).
  """
  if name == 'cpu':
    cases = []
    for arch, batch in (('resnet18', 64), ('preresnet20', 128)):
      cases += [dataclasses.replace(c, epoch_inputs=INPUTS)
                if c.mode == 'normal' and c.dtype == 'float32' else c
                for c in _grid([arch], MODES, [batch], DTYPES, ['jit'],
                               kd_teacher='resnet18')]
      cases.append(Case(arch, 'normal', batch, 'float32', 'pmap'))
    return cases, dict(steps=2, repeats=2, warmup=1, dataset='digits',
                       epoch_steps=6, breakdown=True)
  if name == 'h100':
    big = ('device',)
    cases = [
        Case('resnet18', 'normal', 128, 'float32'),
        Case('resnet18', 'nasty', 128, 'float32'),
        Case('resnet18', 'normal', 1024, 'bfloat16', epoch_inputs=big),
        Case('resnet18', 'nasty', 1024, 'bfloat16', epoch_inputs=big),
        Case('resnet18', 'kd', 1024, 'bfloat16'),
        Case('resnet18', 'nasty', 1024, 'bfloat16', 'pmap'),
        Case('resnext29', 'normal', 128, 'float32', image_size=64),
        Case('resnext29', 'normal', 128, 'bfloat16', image_size=64),
    ]
    return cases, dict(steps=30, repeats=3, warmup=3, dataset=SYNTHETIC,
                       num_train=50_000, targets=True)
  raise ValueError(f'Unknown preset {name!r}; valid: {", ".join(PRESETS)}.')


# --------------------------------------------------------------------- run --


def _meta(opts: Options, par: parallel_lib.Parallel) -> dict[str, Any]:
  device = jax.devices()[0]
  return {
      'backend': jax.default_backend(),
      'device_kind': device.device_kind,
      'devices': par.device_count,
      'host_cpus': os.cpu_count(),
      'load_average': list(os.getloadavg()),
      'versions': {'python': platform.python_version(),
                   'jax': jax.__version__, 'flax': flax.__version__,
                   'optax': optax.__version__},
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'matmul_precision': str(jax.config.jax_default_matmul_precision),
      'argv': sys.argv,
      'options': {k: v for k, v in dataclasses.asdict(opts).items()
                  if k != 'cases'},
      'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }


def run(opts: Options) -> dict[str, Any]:
  """Measures every case; prints the tables; writes JSON if asked.

  Args:
    opts: what to measure.

  Returns:
    {'meta', 'steps', 'epochs', 'breakdown', 'ratios', 'targets'}: 'steps'
    rows hold the case's fields, compile_s, step_ms (+ min/max), images_per_s,
    host_ms_per_step, flops_per_step, tflops_per_s, donated, loss; 'epochs'
    rows the case's fields, input, steps, setup_s, epoch_s, images_per_s
    and vs_step (epoch / step-only img/s).
  """
  if not opts.cases:
    raise ValueError('Nothing to measure: give at least one case.')
  if min(opts.steps, opts.repeats) < 1 or opts.warmup < 0:
    raise ValueError(f'steps and repeats must be >= 1 and warmup >= 0; got '
                     f'{opts.steps}, {opts.repeats}, {opts.warmup}.')
  if opts.dataset == SYNTHETIC and any('stream' in c.epoch_inputs
                                       for c in opts.cases):
    raise ValueError('The stream input reads a prepared TFDS dataset; pass '
                     '--dataset=digits (or cifar10, image_folder, ...) to '
                     'time it.')
  pars = {kind: parallel_lib.Parallel(kind, opts.num_devices)
          for kind in {c.parallelism for c in opts.cases}}
  for case in opts.cases:
    pars[case.parallelism].check_batch_size(case.batch_size)
  datasets = _Datasets(opts)
  results = {'meta': _meta(opts, pars[opts.cases[0].parallelism]),
             'steps': [], 'epochs': [], 'breakdown': [], 'ratios': [],
             'targets': []}
  for i, case in enumerate(opts.cases):
    par = pars[case.parallelism]
    logging.info('[%d/%d] %s', i + 1, len(opts.cases), case)
    trainer = _Trainer(case, par, opts.num_classes, opts.seed)
    batches = _synthetic_batches(case, par, opts.num_classes, opts.seed)
    row = measure_step(trainer, batches, opts)
    reference = REFERENCE_IMAGES_PER_S.get(
        (case.arch, case.mode, case.dtype, case.batch_size, case.image_size))
    if opts.targets and reference is not None:
      row.update(reference_images_per_s=reference,
                 vs_reference=row['images_per_s'] / reference)
    results['steps'].append(row)
    logging.info('  step: %.1f ms, %.0f img/s, compile %.1f s', row['step_ms'],
                 row['images_per_s'], row['compile_s'])
    if (opts.breakdown and case.parallelism == 'jit'
        and case.mode == 'normal'):
      results['breakdown'] += measure_breakdown(trainer, batches, opts,
                                                row['step_ms'])
    del batches
    for inp in case.epoch_inputs:
      epoch = measure_epoch(trainer, datasets, inp, opts,
                            row['images_per_s'])
      results['epochs'].append(epoch)
      logging.info('  %s epoch: %.0f img/s (%.0f%% of step-only)', inp,
                   epoch['images_per_s'], 100 * epoch['vs_step'])
    del trainer
    gc.collect()
    results['meta']['load_average_end'] = list(os.getloadavg())
    results['ratios'] = ratios(results)
    if opts.targets:
      results['targets'] = [t.check(results) for t in H100_TARGETS]
    if opts.json_path:
      _write_json(opts.json_path, results)
  return results


def _write_json(path: str, results: dict[str, Any]) -> None:
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(results, f, indent=1, allow_nan=True)
  os.replace(path + '.tmp', path)


def _key(row: dict[str, Any], **change) -> tuple:
  fields = ('arch', 'mode', 'batch_size', 'dtype', 'parallelism',
            'image_size', 'input')
  merged = {**row, **change}
  return tuple(merged.get(f) for f in fields)


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
  """img/s ratios between rows that differ in one thing.

  Args:
    results: `run`'s results so far.

  Returns:
    Rows {'ratio', the case's fields, 'value', 'value_cpu'}: bf16/fp32,
    pmap/jit, nasty/normal and kd/normal (step-only), epoch/step, and
    stream/device (epochs). 'value' is the wall-clock img/s ratio,
    'value_cpu' the same ratio of process CPU time per image (the one to
    read on a busy CPU).
  """
  out = []
  steps_by_key = {_key(r): r for r in results['steps']}
  epochs_by_key = {_key(r): r for r in results['epochs']}
  comparisons = (
      ('bf16 / fp32 step', steps_by_key, 'dtype', 'bfloat16', 'float32'),
      ('pmap / jit step', steps_by_key, 'parallelism', 'pmap', 'jit'),
      ('nasty / normal step', steps_by_key, 'mode', 'nasty', 'normal'),
      ('kd / normal step', steps_by_key, 'mode', 'kd', 'normal'),
      ('stream / device epoch', epochs_by_key, 'input', 'stream', 'device'),
  )
  for name, table, field, num, den in comparisons:
    for key, row in table.items():
      if row[field] != num:
        continue
      other = table.get(_key(row, **{field: den}))
      if other is not None:
        out.append(_ratio_row(name, row, row['images_per_s']
                              / other['images_per_s'],
                              other['cpu_ms_per_step']
                              / row['cpu_ms_per_step']))
  steps_by_case = {_key(r, input=None): r for r in results['steps']}
  for row in results['epochs']:
    step = steps_by_case[_key(row, input=None)]
    out.append(_ratio_row(f'{row["input"]} epoch / step', row,
                          row['vs_step'], step['cpu_ms_per_step']
                          / row['cpu_ms_per_step']))
  return out


def _ratio_row(name: str, row: dict[str, Any], value: float,
               value_cpu: float) -> dict[str, Any]:
  what = {k: row[k] for k in ('arch', 'mode', 'batch_size', 'dtype',
                              'parallelism', 'image_size')}
  return {'ratio': name, **what, 'value': value, 'value_cpu': value_cpu}


# ------------------------------------------------------------------ output --


def _fmt(value: Any) -> str:
  if value is None:
    return '-'
  if isinstance(value, bool):
    return 'yes' if value else 'NO'
  if isinstance(value, float):
    if math.isnan(value):
      return 'nan'
    if abs(value) >= 100:
      return f'{value:,.0f}'
    return f'{value:.3g}' if abs(value) < 10 else f'{value:.1f}'
  return str(value)


def format_table(rows: Sequence[dict[str, Any]],
                 columns: Sequence[tuple[str, str]]) -> str:
  """Aligned text table of `rows` with (header, field) columns."""
  cells = [[header for header, _ in columns]]
  cells += [[_fmt(row.get(field)) for _, field in columns] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  lines = ['  '.join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)


_CASE_COLUMNS = (('arch', 'arch'), ('px', 'image_size'), ('mode', 'mode'),
                 ('dtype', 'dtype'), ('batch', 'batch_size'),
                 ('par', 'parallelism'), ('dev', 'devices'))


def report(results: dict[str, Any]) -> str:
  """The printed summary of `run`'s results."""
  meta = results['meta']
  parts = [f'nasty_jax.bench on {meta["backend"]} ({meta["device_kind"]} x'
           f'{meta["devices"]}), jax {meta["versions"]["jax"]}, load '
           f'{meta["load_average"][0]:.2f} -> '
           f'{meta.get("load_average_end", [float("nan")])[0]:.2f}']
  parts += ['', 'Train steps (step-only, data on device):', format_table(
      results['steps'], _CASE_COLUMNS + (
          ('compile s', 'compile_s'), ('step ms', 'step_ms'),
          ('min', 'step_ms_min'), ('max', 'step_ms_max'),
          ('host ms', 'host_ms_per_step'), ('cpu ms', 'cpu_ms_per_step'),
          ('img/s', 'images_per_s'),
          ('TFLOP/s', 'tflops_per_s'), ('donated', 'donated'),
          ('loss', 'loss')) + (
              (('x ref', 'vs_reference'),) if results['targets'] else ()))]
  if results['epochs']:
    parts += ['', 'Full epochs (input pipeline + step):', format_table(
        results['epochs'], _CASE_COLUMNS + (
            ('input', 'input'), ('data', 'dataset'), ('steps', 'steps'),
            ('setup s', 'setup_s'), ('epoch s', 'epoch_s'),
            ('img/s', 'images_per_s'), ('step img/s', 'step_images_per_s'),
            ('epoch/step', 'vs_step'), ('cpu ms', 'cpu_ms_per_step')))]
  if results['breakdown']:
    parts += ['', 'Where a step goes (jit):', format_table(
        results['breakdown'], _CASE_COLUMNS[:-1] + (
            ('part', 'part'), ('ms', 'ms'),
            ('of step', 'fraction_of_step'), ('cpu ms', 'cpu_ms')))]
  if results['ratios']:
    parts += ['', 'Ratios (img/s):', format_table(
        results['ratios'], (('ratio', 'ratio'),) + _CASE_COLUMNS[:-1] + (
            ('wall', 'value'), ('cpu time', 'value_cpu')))]
  if results['targets']:
    parts += ['', 'Targets:', format_table(
        results['targets'], (('target', 'target'), ('value', 'value'),
                             ('minimum', 'minimum'), ('met', 'met')))]
  return '\n'.join(parts)


# --------------------------------------------------------------------- CLI --


def _csv(text: str) -> list[str]:
  return [t for t in text.split(',') if t]


def parse_args(argv: Sequence[str] | None = None) -> Options:
  """Options from the command line (see the module docstring)."""
  parser = argparse.ArgumentParser(
      prog='python -m nasty_jax.bench',
      description='Training throughput of the nasty_jax train steps.')
  add = parser.add_argument
  add('--preset', choices=PRESETS, default=None,
      help='a named benchmark; other flags then override its settings.')
  add('--archs', default='resnet18', help='comma-separated architectures.')
  add('--modes', default='normal,nasty,kd', help='normal, nasty, kd.')
  add('--batch_sizes', default='64', help='comma-separated global sizes.')
  add('--dtypes', default='float32,bfloat16', help='float32, bfloat16.')
  add('--parallelism', default='jit', help='jit, pmap (comma-separated).')
  add('--image_size', type=int, default=32)
  add('--kd_teacher', default=None,
      help='the kd teacher architecture (default: the trained one).')
  add('--epoch_inputs', default='',
      help='device, stream: time a full epoch through these inputs.')
  add('--epoch_modes', default='normal',
      help='modes whose cases get the epoch measurements.')
  add('--num_classes', type=int, default=None)
  add('--num_devices', type=int, default=None)
  add('--steps', type=int, default=None, help='timed steps per window.')
  add('--repeats', type=int, default=None, help='timing windows.')
  add('--warmup', type=int, default=None)
  add('--epoch_steps', type=int, default=None,
      help='cap of the timed epoch (-1: whole epoch).')
  add('--dataset', default=None,
      help='synthetic, or a prepared TFDS dataset (digits, cifar10, ...).')
  add('--data_dir', default=None)
  add('--manual_dir', default=None)
  add('--num_train', type=int, default=None,
      help='synthetic examples per epoch.')
  add('--log_every_steps', type=int, default=None)
  add('--breakdown', action=argparse.BooleanOptionalAction, default=None)
  add('--targets', action=argparse.BooleanOptionalAction, default=None)
  add('--matmul_precision', default=None,
      help="jax_default_matmul_precision, e.g. 'highest', 'tensorfloat32'.")
  add('--json', default=None, help='write the results here.')
  args = parser.parse_args(argv)
  if args.matmul_precision:
    jax.config.update('jax_default_matmul_precision', args.matmul_precision)
  if args.preset:
    cases, overrides = preset(args.preset)
  else:
    parallelisms = _csv(args.parallelism)
    cases = _grid(_csv(args.archs), _csv(args.modes),
                  [int(b) for b in _csv(args.batch_sizes)],
                  _csv(args.dtypes), parallelisms,
                  image_size=args.image_size, kd_teacher=args.kd_teacher,
                  epoch_inputs=_csv(args.epoch_inputs),
                  epoch_modes=_csv(args.epoch_modes))
    overrides = {}
    if 'stream' in _csv(args.epoch_inputs):
      overrides['dataset'] = 'digits'
  fields = {f.name for f in dataclasses.fields(Options)} - {'cases'}
  flag_values = {k: v for k, v in vars(args).items()
                 if k in fields and v is not None}
  if args.json is not None:
    flag_values['json_path'] = args.json
  return Options(cases=cases, **{**overrides, **flag_values})


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark from the command line and prints its tables."""
  opts = parse_args(argv)
  logging.set_verbosity(logging.INFO)
  results = run(opts)
  print(report(results), flush=True)  # The command's output: the tables.
  return results


if __name__ == '__main__':
  main()
