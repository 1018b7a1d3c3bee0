"""One training stage: `train_and_evaluate(config, spec, stage_dir)`.

A stage trains one network in one mode (normal, nasty or kd) for the
reference's schedule, evaluating on the test split after every epoch like the
reference does. It keeps `best/` (best-on-test variables, what later stages
read, like the reference's best_model.tar) and `last/` (the resumable state),
and writes `result.json` when it is done; a stage with a `result.json` is
complete and is not run again.

Resume is exact: the state's step decides the epoch and the position inside
it, the data order and augmentation are a pure function of (seed, epoch),
and every step's key is `fold_in(key(seed), step)`.

The epoch bookkeeping (logging, per-epoch evaluation, best/ and last/,
pre-emption, the non-finite stop, result.json) is `run_epochs` over an
`EpochLoop`; the data-free stages (`nasty_jax.data_free`) run their own
steps through it.
"""

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import metric_writers
from clu import periodic_actions

from nasty_jax import checkpointing
from nasty_jax import data as data_lib
from nasty_jax import models
from nasty_jax import parallel as parallel_lib
from nasty_jax import state as state_lib
from nasty_jax import steps

RESULT_FILE = 'result.json'
MODES = ('normal', 'nasty', 'kd')


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """What distinguishes one stage of the pipeline from another.

  Attributes:
    name: the stage's name, e.g. 'normal', 'nasty', 'kd_nasty/net'.
    mode: 'normal' (CE), 'nasty' (against a frozen adversary) or 'kd'
      (against a frozen teacher).
    arch: the trained architecture.
    frozen_arch: the adversary's or teacher's architecture.
    frozen_checkpoint: its checkpoint folder (a stage folder or a converted
      PyTorch checkpoint).
  """
  name: str
  mode: str
  arch: str
  frozen_arch: str | None = None
  frozen_checkpoint: str | None = None


class NonFiniteLossError(RuntimeError):
  """A stage's loss became NaN or inf."""


_PREEMPTED = threading.Event()


def request_preemption(*_) -> None:
  """Asks the running stage to checkpoint after this step and return."""
  _PREEMPTED.set()


def preemption_requested() -> bool:
  """Whether a pre-emption was requested (loops outside `run_epochs`)."""
  return _PREEMPTED.is_set()


def acknowledge_preemption() -> None:
  """Marks a pre-emption handled: the stage saved and returned.

  Only then is the request cleared, so one that came during a stage's
  set-up still stops its first step; a later run in the process starts
  afresh.
  """
  _PREEMPTED.clear()


def install_preemption_handler() -> None:
  """SIGTERM (what Cloud TPU/GPU pre-emption sends) checkpoints and exits."""
  signal.signal(signal.SIGTERM, request_preemption)


def read_result(stage_dir: str) -> dict[str, Any] | None:
  """A finished stage's result, or None while it is incomplete."""
  path = os.path.join(stage_dir, RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def optimizer_config(config: ml_collections.ConfigDict, arch: str
                     ) -> ml_collections.ConfigDict:
  """The reference's optimiser for `arch`: Adam for net/mlp, else SGD."""
  choice = config.optim.choice
  if choice == 'auto':
    choice = 'adam' if arch in ('net', 'mlp', '_tiny_cnn') else 'sgd'
  if choice not in ('sgd', 'adam'):
    raise ValueError(f'config.optim.choice={choice!r}; valid: auto, sgd, '
                     'adam.')
  optim = config.optim[choice]
  if config.num_epochs > 0:
    # The stage-wide epoch override is the schedule's length too.
    optim = ml_collections.ConfigDict(optim.to_dict())
    optim.num_epochs = config.num_epochs
  return optim


def create_model(config: ml_collections.ConfigDict, arch: str,
                 axis_name: str | None = None):
  """An architecture with the config's dtype and per-arch options."""
  kwargs = dict(dtype=jnp.dtype(config.model.dtype),
                bn_momentum=config.model.bn_momentum, bn_axis_name=axis_name)
  if arch == 'net':
    kwargs.update(num_channels=config.model.num_channels,
                  dropout_rate=config.model.dropout_rate)
  return models.get_model(arch, config.dataset.num_classes, **kwargs)


def _input_shape(config) -> tuple[int, ...]:
  size = config.dataset.image_size
  return (1, size, size, 3)


def load_frozen(config: ml_collections.ConfigDict, arch: str,
                checkpoint: str) -> tuple[Any, Any]:
  """A frozen network (teacher or adversary) and its variables.

  Raises:
    ValueError: the checkpoint holds another architecture or class count, or
      its tensors don't fit `arch`.
  """
  variables, meta = checkpointing.load_variables(checkpoint)
  for key, want in (('arch', arch),
                    ('num_classes', config.dataset.num_classes)):
    if key in meta and meta[key] != want:
      raise ValueError(f'{checkpoint} holds {key}={meta[key]!r}, but this '
                       f'stage needs {key}={want!r}.')
  model = create_model(config, arch)
  abstract = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0),
      jnp.zeros(_input_shape(config), jnp.float32))
  want_shapes = jax.tree_util.tree_map(lambda x: x.shape, dict(abstract))
  got_shapes = jax.tree_util.tree_map(lambda x: x.shape, dict(variables))
  if want_shapes != got_shapes:
    raise ValueError(f'{checkpoint} does not hold a {arch} with '
                     f'{config.dataset.num_classes} classes (tensor shapes '
                     'differ).')
  return model, variables


class _Throughput:
  """Images per second over training steps, compile time kept apart."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self.steps = 0
    self.seconds = 0.0
    self.first_step_seconds = None
    self._t = None

  def start(self):
    self._t = time.perf_counter()

  def stop(self, steps_done: int, sync: Any):
    jax.block_until_ready(sync)
    dt = time.perf_counter() - self._t
    if self.first_step_seconds is None:
      # The first interval includes compilation; report it apart.
      self.first_step_seconds = dt
    else:
      self.steps += steps_done
      self.seconds += dt
    self._t = None

  @property
  def images_per_second(self) -> float:
    return self.steps * self.batch_size / self.seconds if self.seconds else 0.


def evaluate(p_eval, variables, dataset, par: parallel_lib.Parallel,
             max_batches: int = -1) -> dict[str, float]:
  """Accuracy (percent) and CE over the whole eval split (padded batches)."""
  total = None
  batches = dataset.eval_batches()
  if max_batches > 0:
    batches = itertools.islice(batches, max_batches)
  for batch in batches:
    m = p_eval(variables, par.shard_batch(batch))
    total = m if total is None else total.merge(m)
  if total is None:
    raise ValueError('The eval split is empty.')
  values = jax.device_get(total.compute())
  return {'accuracy': 100.0 * float(values['accuracy']),
          'loss': float(values['loss'])}


def create_writer(stage_dir: str) -> metric_writers.MetricWriter:
  """The stage's clu writer (TensorBoard + log; log only off process 0)."""
  return metric_writers.create_default_writer(
      stage_dir, just_logging=jax.process_index() > 0, asynchronous=True)


def open_dataset(config: ml_collections.ConfigDict,
                 par: parallel_lib.Parallel):
  """The config's dataset laid out for `par`, batch sizes checked.

  Raises:
    ValueError: a batch size that does not divide over the devices.
  """
  par.check_batch_size(config.batch_size)
  eval_batch_size = (config.eval_batch_size if config.eval_batch_size > 0
                     else config.batch_size)
  par.check_batch_size(eval_batch_size, 'eval_batch_size')
  return data_lib.create_dataset(
      config.dataset, config.batch_size, config.seed,
      input=config.dataset.input, sharding=par.batch_sharding,
      image_dtype=jnp.dtype(config.model.dtype),
      eval_batch_size=eval_batch_size)


def load_scored_frozen(config: ml_collections.ConfigDict, spec: StageSpec,
                       dataset, par: parallel_lib.Parallel
                       ) -> tuple[Any, Any, float]:
  """The stage's frozen network, its replicated variables and test accuracy.

  Returns:
    (model, variables on every device, test accuracy in percent).
  """
  model, variables = load_frozen(config, spec.frozen_arch,
                                 spec.frozen_checkpoint)
  variables = par.replicate(variables)
  p_eval = par.eval_step(functools.partial(
      steps.eval_step, model=model, axis_name=par.axis_name))
  accuracy = evaluate(p_eval, variables, dataset, par,
                      config.max_eval_batches)['accuracy']
  logging.info('Stage %s: frozen %s (%s) test accuracy %.2f%%.', spec.name,
               spec.frozen_arch, spec.frozen_checkpoint, accuracy)
  return model, variables, accuracy


def abstract_like(state: Any) -> Any:
  """`state`'s shapes, dtypes and shardings: the target orbax restores on."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)


@dataclasses.dataclass(frozen=True)
class EpochLoop:
  """What a stage's epoch loop runs; `run_epochs` does the bookkeeping.

  Attributes:
    spec: the stage.
    num_steps: the stage's last step.
    steps_per_epoch: steps between evaluations.
    num_epochs: epochs of the full schedule (for the log).
    images_per_step: global batch size (img/s).
    log_every_steps: steps between train-metric logs.
    step: `(state, inputs, step) -> (state, metrics)` takes step `step`
      (0-based) on one element of `epoch_inputs`; metrics are a collection
      with a `first_nonfinite_step` entry.
    epoch_inputs: `(epoch, first step within it) -> iterable` of the epoch's
      remaining step inputs.
    evaluate: `state -> {'accuracy', 'loss'}` on the test split.
    best_variables: `state -> {'params', 'batch_stats'}` kept in `best/`.
    best_meta: what `best/` records besides the epoch and accuracy.
    describe: formats the logged train scalars (`train/<name>`) for the log
      line.
    percent: train metrics logged in percent.
  """
  spec: StageSpec
  num_steps: int
  steps_per_epoch: int
  num_epochs: int
  images_per_step: int
  log_every_steps: int
  step: Callable[[Any, Any, int], tuple[Any, Any]]
  epoch_inputs: Callable[[int, int], Iterable[Any]]
  evaluate: Callable[[Any], dict[str, float]]
  best_variables: Callable[[Any], Any]
  best_meta: dict[str, Any]
  describe: Callable[[dict[str, float]], str]
  percent: tuple[str, ...] = ('accuracy',)


@dataclasses.dataclass
class LoopOutcome:
  """Where `run_epochs` stopped.

  Attributes:
    state: the final train state.
    meta: `last/`'s metadata (epoch, best accuracy and epoch, history).
    step: the step reached.
    nonfinite_step: the step whose loss was not finite, or None.
    preempted: whether it stopped for a pre-emption (state saved).
    throughput: the img/s meter.
  """
  state: Any
  meta: dict[str, Any]
  step: int
  nonfinite_step: int | None
  preempted: bool
  throughput: _Throughput


def initial_meta(spec: StageSpec, arch: str,
                 config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`last/`'s metadata before the first epoch."""
  return {'stage': spec.name, 'arch': arch,
          'num_classes': config.dataset.num_classes, 'epoch': 0,
          'best_accuracy': -1.0, 'best_epoch': -1, 'history': []}


def run_epochs(loop: EpochLoop, state: Any, meta: dict[str, Any],
               start_step: int, ckpts: checkpointing.StageCheckpoints,
               writer: metric_writers.MetricWriter, *,
               step_hook: Callable[[int], None] | None = None
               ) -> LoopOutcome:
  """Steps epochs from `start_step`: log, evaluate, keep best/ and last/.

  After every epoch the state is evaluated like the reference does, `best/`
  is written on a new best (ties move it to the later epoch) and then
  `last/`. A pre-emption request (`request_preemption`) saves `last/` at
  the current step, mid-epoch or not, and returns; a non-finite loss stops
  without saving anything after the last epoch end.

  Args:
    loop: the stage's step, inputs and evaluation.
    state: the state to continue from.
    meta: `last/`'s metadata matching `state` (`initial_meta` when fresh).
    start_step: the state's step.
    ckpts: the stage's checkpoints.
    writer: the stage's metric writer.
    step_hook: called with the step number after each step.

  Returns:
    Where it stopped. `ckpts` is closed on pre-emption only.
  """
  spec = loop.spec
  steps_per_epoch, num_steps = loop.steps_per_epoch, loop.num_steps
  report = None
  if jax.process_index() == 0:
    report = periodic_actions.ReportProgress(num_train_steps=num_steps,
                                             writer=writer)
  throughput = _Throughput(loop.images_per_step)
  step = start_step
  train_metrics = None
  stopped = None
  interval_start = step
  while step < num_steps and stopped is None:
    epoch = step // steps_per_epoch
    inputs = loop.epoch_inputs(epoch, step - epoch * steps_per_epoch)
    epoch_end = min((epoch + 1) * steps_per_epoch, num_steps)
    throughput.start()
    for item in inputs:
      state, m = loop.step(state, item, step)
      train_metrics = m if train_metrics is None else train_metrics.merge(m)
      step += 1
      if report is not None:
        report(step)
      if step_hook is not None:
        step_hook(step)
      if (step % loop.log_every_steps == 0 or step == epoch_end
          or _PREEMPTED.is_set()):
        throughput.stop(step - interval_start, train_metrics)
        stopped = _log_train(writer, loop, step, epoch, train_metrics,
                             throughput)
        train_metrics = None
        interval_start = step
        if stopped is not None or _PREEMPTED.is_set():
          break
        throughput.start()
      if step == epoch_end:
        break
    if stopped is not None:
      break
    if _PREEMPTED.is_set() and step != epoch_end:
      ckpts.save_last(step, state, meta)
      _stop_preempted(ckpts, writer, spec, step)
      return LoopOutcome(state, meta, step, None, True, throughput)
    # Epoch end: evaluate like the reference, then best/ before last/.
    with _timed(report, 'eval'):
      ev = loop.evaluate(state)
    meta['epoch'] = epoch + 1
    meta['history'] = list(meta['history']) + [
        {'epoch': epoch + 1, 'step': step, 'accuracy': ev['accuracy'],
         'loss': ev['loss']}]
    writer.write_scalars(step, {'eval/accuracy': ev['accuracy'],
                                'eval/loss': ev['loss']})
    logging.info('Stage %s epoch %d/%d: test accuracy %.2f%% (loss %.4f).',
                 spec.name, epoch + 1, loop.num_epochs, ev['accuracy'],
                 ev['loss'])
    # `>=` as the reference: ties move the best to the later epoch.
    if ev['accuracy'] >= meta['best_accuracy']:
      meta['best_accuracy'] = ev['accuracy']
      meta['best_epoch'] = epoch + 1
      ckpts.save_best(step, loop.best_variables(state), {
          **loop.best_meta, 'epoch': epoch + 1, 'accuracy': ev['accuracy']})
    with _timed(report, 'checkpoint'):
      ckpts.save_last(step, state, meta)
    if _PREEMPTED.is_set():
      _stop_preempted(ckpts, writer, spec, step)
      return LoopOutcome(state, meta, step, None, True, throughput)
  return LoopOutcome(state, meta, step, stopped, False, throughput)


def _stop_preempted(ckpts, writer, spec, step) -> None:
  acknowledge_preemption()
  ckpts.close()
  writer.flush()
  logging.warning('Stage %s pre-empted at step %d; checkpoint saved. Run the '
                  'same command again to resume.', spec.name, step)


def stage_result(loop: EpochLoop, outcome: LoopOutcome,
                 par: parallel_lib.Parallel, *, arch: str,
                 frozen_accuracy: float | None) -> dict[str, Any]:
  """The result fields every trained stage shares (see train_and_evaluate).

  A stage resumed into a finished schedule whose result was never written
  and that has no evaluation in its history is evaluated once here.
  """
  spec, meta, step = loop.spec, outcome.meta, outcome.step
  history = meta['history']
  if not history:
    ev = loop.evaluate(outcome.state)
    history = [{'epoch': meta['epoch'], 'step': step, **ev}]
  result = {
      'stage': spec.name, 'mode': spec.mode, 'arch': arch,
      'frozen_arch': spec.frozen_arch,
      'frozen_checkpoint': spec.frozen_checkpoint,
      'frozen_accuracy': frozen_accuracy,
      'status': 'complete' if outcome.nonfinite_step is None else 'nonfinite',
      'best': meta['best_accuracy'] if meta['best_epoch'] > 0 else None,
      'best_epoch': meta['best_epoch'],
      'last': history[-1]['accuracy'],
      'epochs': meta['epoch'], 'steps': step,
      'images_per_second': outcome.throughput.images_per_second,
      'compile_and_first_interval_seconds':
          outcome.throughput.first_step_seconds,
      'devices': par.device_count, 'parallelism': par.kind,
  }
  if outcome.nonfinite_step is not None:
    result['nonfinite_step'] = outcome.nonfinite_step
    result['last'] = history[-1]['accuracy'] if meta['history'] else None
  return result


def write_result(stage_dir: str, result: dict[str, Any]) -> None:
  """Marks a stage complete: writes its result.json (process 0)."""
  if jax.process_index() == 0:
    with open(os.path.join(stage_dir, RESULT_FILE), 'w') as f:
      json.dump(result, f, indent=1)


def skip_if_done(spec: StageSpec, stage_dir: str) -> dict[str, Any] | None:
  """A finished stage's result (logged as skipped), or None."""
  done = read_result(stage_dir)
  if done is not None:
    logging.info('Stage %s is complete (%s); skipping.', spec.name,
                 os.path.join(stage_dir, RESULT_FILE))
  return done


def train_and_evaluate(config: ml_collections.ConfigDict, spec: StageSpec,
                       stage_dir: str, *,
                       step_hook: Callable[[int], None] | None = None
                       ) -> dict[str, Any]:
  """Runs (or resumes, or skips) one stage and returns its result.

  Args:
    config: the pipeline config (configs/*.py).
    spec: this stage.
    stage_dir: the stage's own folder.
    step_hook: called with the step number after each step (tests use it to
      simulate a pre-emption).

  Returns:
    The stage's result: best/last test accuracy (percent), best epoch,
    img/s, compile seconds, and the frozen network's accuracy if any.

  Raises:
    ValueError: a bad config or checkpoint, with what to change.
  """
  done = skip_if_done(spec, stage_dir)
  if done is not None:
    return done
  if spec.mode not in MODES:
    raise ValueError(f'Unknown mode {spec.mode!r}; valid: {MODES}.')
  if (spec.mode == 'normal') != (spec.frozen_checkpoint is None):
    raise ValueError(f'Stage {spec.name}: mode {spec.mode!r} '
                     f'{"takes no" if spec.mode == "normal" else "needs a"} '
                     'frozen network checkpoint.')
  os.makedirs(stage_dir, exist_ok=True)
  writer = create_writer(stage_dir)

  par = parallel_lib.Parallel(config.parallelism, config.num_devices)
  dataset = open_dataset(config, par)

  optim = optimizer_config(config, spec.arch)
  num_epochs = optim.num_epochs
  steps_per_epoch = dataset.steps_per_epoch
  num_steps = num_epochs * steps_per_epoch
  if config.num_train_steps > 0:
    num_steps = min(num_steps, config.num_train_steps)
  tx = state_lib.create_optimizer(optim, steps_per_epoch)
  learning_rate_fn = state_lib.learning_rate_schedule(optim, steps_per_epoch)

  model = create_model(config, spec.arch, par.axis_name)
  base_key = jax.random.key(config.seed)
  init_fn = jax.jit(
      lambda key: state_lib.create_train_state(
          model.init(key, jnp.zeros(_input_shape(config), jnp.float32),
                     train=False), tx),
      out_shardings=par.replicated)
  # Parameters come from an 'rbg' key: XLA:CPU compiles threefry-based
  # init of a whole network 5-10x slower (26 s vs 3 s for preresnet20).
  # Steps use the threefry base key: fold_in(base, step + 1).
  state = init_fn(jax.random.key(config.seed, impl='rbg'))

  ckpts = checkpointing.StageCheckpoints(stage_dir,
                                         config.max_checkpoints_to_keep)
  meta = initial_meta(spec, spec.arch, config)
  restored = ckpts.restore_last(abstract_like(state))
  if restored is not None:
    state, meta = restored
    logging.info('Stage %s resumes at step %d (epoch %d).', spec.name,
                 int(state.step), meta['epoch'])
  else:
    writer.write_hparams(flat_hparams(config, spec))

  p_eval = par.eval_step(functools.partial(steps.eval_step, model=model,
                                           axis_name=par.axis_name))
  frozen_model = frozen_vars = None
  frozen_accuracy = None
  if spec.frozen_checkpoint is not None:
    frozen_model, frozen_vars, frozen_accuracy = load_scored_frozen(
        config, spec, dataset, par)

  loss_config = config.nasty if spec.mode == 'nasty' else config.students
  p_train = par.train_step(functools.partial(
      steps.train_step, model=model, tx=tx,
      objective=steps.create_objective(spec.mode, loss_config),
      learning_rate_fn=learning_rate_fn, frozen_model=frozen_model,
      axis_name=par.axis_name))

  def train_one(state, batch, step):
    return p_train(state, frozen_vars, par.shard_batch(batch),
                   jax.random.fold_in(base_key, step + 1))

  loop = EpochLoop(
      spec=spec, num_steps=num_steps, steps_per_epoch=steps_per_epoch,
      num_epochs=num_epochs, images_per_step=config.batch_size,
      log_every_steps=config.log_every_steps, step=train_one,
      epoch_inputs=lambda epoch, start: dataset.train_batches(
          epoch, start_step=start),
      evaluate=lambda state: evaluate(p_eval, state.variables, dataset, par,
                                      config.max_eval_batches),
      best_variables=lambda state: state.variables,
      best_meta={'stage': spec.name, 'arch': spec.arch,
                 'num_classes': config.dataset.num_classes},
      describe=describe_train)
  outcome = run_epochs(loop, state, meta, int(state.step), ckpts, writer,
                       step_hook=step_hook)
  if outcome.preempted:
    return {'status': 'preempted', 'step': outcome.step}
  ckpts.close()
  result = stage_result(loop, outcome, par, arch=spec.arch,
                        frozen_accuracy=frozen_accuracy)
  writer.flush()
  write_result(stage_dir, result)
  return result


def describe_train(s: dict[str, float]) -> str:
  """The log line's part for `metrics.TrainMetrics` scalars."""
  return (f'loss {s["train/loss"]:.4f} ce {s["train/ce"]:.4f} kl '
          f'{s["train/kl"]:.4f} acc {s["train/accuracy"]:.2f}% lr '
          f'{s["train/learning_rate"]:.4g}')


def _log_train(writer, loop: EpochLoop, step, epoch, train_metrics,
               throughput) -> int | None:
  """Writes the metrics since the last log; returns a non-finite step."""
  values = jax.device_get(train_metrics.compute())
  bad = int(values.pop('first_nonfinite_step'))
  if bad >= 0:
    logging.error(
        'Stage %s stopped: the loss became non-finite at step %d (epoch %d). '
        'Nothing after the last epoch end was saved; best/ and last/ keep '
        'the last good checkpoint.', loop.spec.name, bad, epoch + 1)
    return bad
  scalars = {f'train/{k}': float(v) for k, v in values.items()}
  for key in loop.percent:
    scalars[f'train/{key}'] *= 100.0
  ips = throughput.images_per_second
  scalars['train/images_per_second'] = ips
  writer.write_scalars(step, scalars)
  eta = (loop.num_steps - step) * throughput.batch_size / ips if ips else 0.0
  logging.info('%s step %d/%d (epoch %d): %s | %.0f img/s | ETA %s',
               loop.spec.name, step, loop.num_steps, epoch + 1,
               loop.describe(scalars), ips,
               time.strftime('%H:%M:%S', time.gmtime(eta)))
  return None


def _timed(report, name: str):
  return report.timed(name) if report is not None else contextlib.nullcontext()


def flat_hparams(config: ml_collections.ConfigDict, spec: StageSpec
                 ) -> dict[str, Any]:
  """The config flattened to scalars for `write_hparams`, plus the stage."""
  flat = {'stage': spec.name, 'mode': spec.mode, 'arch': spec.arch,
          'frozen_arch': spec.frozen_arch or ''}
  for key, value in _flatten(config.to_dict()).items():
    flat[key] = value if isinstance(value, (int, float, str, bool)) else str(
        value)
  return flat


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out
