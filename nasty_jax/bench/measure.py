"""The benchmark's measurements: step-only timing, breakdowns, epochs.

What is timed is what a training stage runs per step: the stage's
`programs.build_supervised` step (the method's objective, its frozen
networks' forward inside the same jitted step) wrapped by
`parallel.Parallel.train_step` (donated state), called with the step's
`fold_in` key on a batch laid out by `Parallel.shard_batch`, the returned
metrics merged on device.
"""

import functools
import gc
import json
import itertools
import os
import platform
import statistics
import sys
import time
import types
import warnings
from typing import Any, Callable, Iterable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from configs import common
from nasty_jax import losses
from nasty_jax import methods
from nasty_jax import parallel as parallel_lib
from nasty_jax import programs
from nasty_jax import runtime
from nasty_jax.bench import cases
from nasty_jax.bench import report
from nasty_jax.data import augment
from nasty_jax.data import device_pipeline

# Distinct resident batches the step-only timing rotates through.
_NUM_BATCHES = 4


class Trainer:
  """One case's train step, built by `programs.build_supervised` exactly as
  a training stage builds it, with its state; the frozen networks are
  freshly initialised (no checkpoint) with the stage's dtype, in eval mode.

  Attributes:
    case: the configuration.
    par: the parallelism wrapper.
    parts: the stage's model, state, wrapped step and frozen networks.
    state: the current train state (donated to every step).
  """

  def __init__(self, case: cases.Case, par: parallel_lib.Parallel,
               num_classes: int, seed: int):
    self.case, self.par = case, par
    config = bench_config(case, num_classes, seed)
    spec = programs.StageSpec(case.mode, case.mode, case.arch)
    ctx = programs.Context(config, spec, par, dataset=None)
    init_key = programs.init_key(seed)
    frozen_models, frozen_vars = {}, {}
    for role in methods.get(case.mode).frozen:
      model = programs.create_model(config, case.frozen)
      frozen_models[role] = model
      frozen_vars[role] = jax.jit(
          lambda key, model=model: model.init(
              key, jnp.zeros(programs.input_shape(config), jnp.float32),
              train=False), out_shardings=par.replicated)(
                  jax.random.fold_in(init_key, 1))
    frozen = programs.Frozen(
        frozen_models, frozen_vars,
        {r: functools.partial(m.apply, train=False)
         for r, m in frozen_models.items()}, None)
    self.parts = programs.build_supervised(
        ctx, steps_per_epoch=1, keys=(jax.random.key(seed), init_key),
        frozen=frozen)
    self.state = self.parts.state
    self.step = 0
    self.last_loss = float('nan')
    self._metrics = None

  @property
  def model(self):
    return self.parts.model

  def run(self, batches: Iterable[dict[str, Any]],
          log_every_steps: int = 0) -> None:
    """Trains on `batches` as a stage does, syncing only at log steps."""
    for batch in batches:
      self.state, m = self.parts.step(self.state, batch, self.step)
      self._metrics = m if self._metrics is None else self._metrics.merge(m)
      self.step += 1
      if log_every_steps and self.step % log_every_steps == 0:
        self.sync()

  def sync(self) -> float:
    """Waits for every dispatched step; returns the mean loss since the last.

    Like a stage's log step: the merged metrics come to the host.
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
      lowered = self.parts.p_train.lower(
          self.state, self.parts.frozen.variables, self.par.shard_batch(batch),
          jax.random.fold_in(self.parts.base_key, 0))
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
    size = getattr(self.parts.p_train, '_cache_size', None)
    try:
      return int(size()) if size is not None else None
    except Exception:  # pylint: disable=broad-except
      return None


def bench_config(case: cases.Case, num_classes: int, seed: int
                 ) -> ml_collections.ConfigDict:
  """A stage config for `case`: the reference's SGD for every arch (also
  net's, to compare like with like) at a 100x lower learning rate, which
  costs the same and keeps the weights finite while they fit noise; the
  CIFAR-10 loss settings (tau 4, omega 0.04, alpha 0.9)."""
  sgd = common.sgd_optim((), 0.1, num_epochs=1)
  sgd.learning_rate = 1e-3
  config = common.base_config(
      dataset=cases.SYNTHETIC, image_size=case.image_size,
      num_classes=num_classes, teacher_arch=case.arch,
      student_archs=(case.arch,), nasty_temperature=4.0, omega=0.04,
      student_temperature=4.0, sgd=sgd, adam=common.adam_optim(1))
  config.optim.choice = 'sgd'
  config.model.dtype = case.dtype
  config.seed = seed
  config.batch_size = case.batch_size
  return config


def _synthetic_batches(case: cases.Case, par: parallel_lib.Parallel,
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


def measure_step(trainer: Trainer, batches: list[dict[str, Any]],
                 opts: cases.Options) -> dict[str, Any]:
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


def measure_breakdown(trainer: Trainer, batches: list[dict[str, Any]],
                      opts: cases.Options, step_ms: float) -> list[dict[str, Any]]:
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
  key = jax.random.fold_in(trainer.parts.base_key, 0)

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


class _Datasets:
  """Input pipelines for the epoch measurements, built on demand."""

  def __init__(self, opts: cases.Options):
    self.opts = opts
    self._synthetic = {}

  def create(self, case: cases.Case, inp: str, par: parallel_lib.Parallel):
    """A pipeline laid out for `case` (batch size, dtype) and `par`."""
    opts = self.opts
    if opts.dataset == cases.SYNTHETIC:
      return self._synthetic_pipeline(case, par)
    # Imported here: the TFDS/grain data path is only needed for real data.
    from nasty_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    cfg = types.SimpleNamespace(
        name=opts.dataset, data_dir=opts.data_dir, manual_dir=opts.manual_dir,
        image_size=case.image_size, num_classes=opts.num_classes)
    return input_pipeline.create_dataset(
        cfg, case.batch_size, opts.seed, input=inp,
        sharding=par.batch_sharding, image_dtype=jnp.dtype(case.dtype))

  def _synthetic_pipeline(self, case: cases.Case, par: parallel_lib.Parallel):
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


def measure_epoch(trainer: Trainer, datasets: _Datasets, inp: str,
                  opts: cases.Options, step_images_per_s: float
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


def _meta(opts: cases.Options, par: parallel_lib.Parallel) -> dict[str, Any]:
  device = jax.devices()[0]
  return {
      'backend': jax.default_backend(),
      'device_kind': device.device_kind,
      'cpu': runtime.cpu_model(),
      'devices': par.device_count,
      'host_cpus': os.cpu_count(),
      'load_average': list(os.getloadavg()),
      'versions': {'python': platform.python_version(),
                   'jax': jax.__version__, 'flax': flax.__version__,
                   'optax': optax.__version__},
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'allocator': runtime.allocator(),
      'matmul_precision': str(jax.config.jax_default_matmul_precision),
      'argv': sys.argv,
      'options': {k: v for k, v in vars(opts).items() if k != 'cases'},
      'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }


def run(opts: cases.Options) -> dict[str, Any]:
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
  if opts.dataset == cases.SYNTHETIC and any('stream' in c.epoch_inputs
                                       for c in opts.cases):
    raise ValueError('The stream input reads a prepared TFDS dataset; pass '
                     '--dataset=digits (or cifar10, image_folder, ...) to '
                     'time it.')
  pars = {kind: parallel_lib.Parallel(kind, opts.num_devices)
          for kind in {c.parallelism for c in opts.cases}}
  for case in opts.cases:
    pars[case.parallelism].check_batch_size(case.batch_size)
  datasets = _Datasets(opts)
  torch_reference = None
  if opts.reference_json:
    with open(opts.reference_json) as f:
      torch_reference = json.load(f)
  results = {'meta': _meta(opts, pars[opts.cases[0].parallelism]),
             'steps': [], 'epochs': [], 'breakdown': [], 'ratios': [],
             'targets': []}
  for i, case in enumerate(opts.cases):
    par = pars[case.parallelism]
    logging.info('[%d/%d] %s', i + 1, len(opts.cases), case)
    trainer = Trainer(case, par, opts.num_classes, opts.seed)
    batches = _synthetic_batches(case, par, opts.num_classes, opts.seed)
    row = measure_step(trainer, batches, opts)
    reference = cases.REFERENCE_IMAGES_PER_S.get(
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
    results['ratios'] = report.ratios(results)
    if opts.targets:
      results['targets'] = [t.check(results) for t in cases.H100_TARGETS]
    if torch_reference is not None:
      results['reference_meta'] = torch_reference['meta']
      results['versus_reference'] = report.versus_reference(
          results, torch_reference)
    if opts.json_path:
      report.write_json(opts.json_path, results)
  return results
