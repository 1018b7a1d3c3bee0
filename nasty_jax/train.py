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
from typing import Any, Callable

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
  return config.optim[choice]


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
  done = read_result(stage_dir)
  if done is not None:
    logging.info('Stage %s is complete (%s); skipping.', spec.name,
                 os.path.join(stage_dir, RESULT_FILE))
    return done
  if spec.mode not in MODES:
    raise ValueError(f'Unknown mode {spec.mode!r}; valid: {MODES}.')
  if (spec.mode == 'normal') != (spec.frozen_checkpoint is None):
    raise ValueError(f'Stage {spec.name}: mode {spec.mode!r} '
                     f'{"takes no" if spec.mode == "normal" else "needs a"} '
                     'frozen network checkpoint.')
  os.makedirs(stage_dir, exist_ok=True)
  writer = metric_writers.create_default_writer(
      stage_dir, just_logging=jax.process_index() > 0, asynchronous=True)

  par = parallel_lib.Parallel(config.parallelism, config.num_devices)
  par.check_batch_size(config.batch_size)
  eval_batch_size = (config.eval_batch_size if config.eval_batch_size > 0
                     else config.batch_size)
  par.check_batch_size(eval_batch_size, 'eval_batch_size')
  dataset = data_lib.create_dataset(
      config.dataset, config.batch_size, config.seed,
      input=config.dataset.input, sharding=par.batch_sharding,
      image_dtype=jnp.dtype(config.model.dtype),
      eval_batch_size=eval_batch_size)

  optim = optimizer_config(config, spec.arch)
  num_epochs = config.num_epochs if config.num_epochs > 0 else optim.num_epochs
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
  # Key 0 of the base key initialises; steps use fold_in(base, step + 1).
  state = init_fn(jax.random.fold_in(base_key, 0))

  ckpts = checkpointing.StageCheckpoints(stage_dir,
                                         config.max_checkpoints_to_keep)
  meta = {'stage': spec.name, 'arch': spec.arch,
          'num_classes': config.dataset.num_classes, 'epoch': 0,
          'best_accuracy': -1.0, 'best_epoch': -1, 'history': []}
  restored = ckpts.restore_last(
      jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                         sharding=x.sharding), state))
  if restored is not None:
    state, meta = restored
    logging.info('Stage %s resumes at step %d (epoch %d).', spec.name,
                 int(state.step), meta['epoch'])
  else:
    writer.write_hparams(_flat_hparams(config, spec))

  p_eval = par.eval_step(functools.partial(steps.eval_step, model=model,
                                           axis_name=par.axis_name))
  frozen_model = frozen_vars = None
  frozen_accuracy = None
  if spec.frozen_checkpoint is not None:
    frozen_model, frozen_vars = load_frozen(config, spec.frozen_arch,
                                            spec.frozen_checkpoint)
    frozen_vars = par.replicate(frozen_vars)
    p_frozen_eval = par.eval_step(functools.partial(
        steps.eval_step, model=frozen_model, axis_name=par.axis_name))
    frozen_accuracy = evaluate(p_frozen_eval, frozen_vars, dataset, par,
                               config.max_eval_batches)['accuracy']
    logging.info('Stage %s: frozen %s (%s) test accuracy %.2f%%.', spec.name,
                 spec.frozen_arch, spec.frozen_checkpoint, frozen_accuracy)

  loss_config = config.nasty if spec.mode == 'nasty' else config.students
  p_train = par.train_step(functools.partial(
      steps.train_step, model=model, tx=tx,
      objective=steps.create_objective(spec.mode, loss_config),
      learning_rate_fn=learning_rate_fn, frozen_model=frozen_model,
      axis_name=par.axis_name))

  report = None
  if jax.process_index() == 0:
    report = periodic_actions.ReportProgress(num_train_steps=num_steps,
                                             writer=writer)
  throughput = _Throughput(config.batch_size)
  step = int(state.step)
  train_metrics = None
  stopped = None
  _PREEMPTED.clear()
  interval_start = step
  while step < num_steps and stopped is None:
    epoch = step // steps_per_epoch
    batches = dataset.train_batches(
        epoch, start_step=step - epoch * steps_per_epoch)
    epoch_end = min((epoch + 1) * steps_per_epoch, num_steps)
    throughput.start()
    for batch in batches:
      state, m = p_train(state, frozen_vars, par.shard_batch(batch),
                         jax.random.fold_in(base_key, step + 1))
      train_metrics = m if train_metrics is None else train_metrics.merge(m)
      step += 1
      if report is not None:
        report(step)
      if step_hook is not None:
        step_hook(step)
      if (step % config.log_every_steps == 0 or step == epoch_end
          or _PREEMPTED.is_set()):
        throughput.stop(step - interval_start, train_metrics)
        stopped = _log_train(writer, spec, step, num_steps, epoch,
                             train_metrics, throughput)
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
      ckpts.close()
      writer.flush()
      logging.warning('Stage %s pre-empted at step %d; checkpoint saved. '
                      'Run the same command again to resume.', spec.name,
                      step)
      return {'status': 'preempted', 'step': step}
    # Epoch end: evaluate like the reference, then best/ before last/.
    with _timed(report, 'eval'):
      ev = evaluate(p_eval, state.variables, dataset, par,
                    config.max_eval_batches)
    meta['epoch'] = epoch + 1
    meta['history'] = list(meta['history']) + [
        {'epoch': epoch + 1, 'step': step, 'accuracy': ev['accuracy'],
         'loss': ev['loss']}]
    writer.write_scalars(step, {'eval/accuracy': ev['accuracy'],
                                'eval/loss': ev['loss']})
    logging.info('Stage %s epoch %d/%d: test accuracy %.2f%% (loss %.4f).',
                 spec.name, epoch + 1, num_epochs, ev['accuracy'],
                 ev['loss'])
    # `>=` as the reference: ties move the best to the later epoch.
    if ev['accuracy'] >= meta['best_accuracy']:
      meta['best_accuracy'] = ev['accuracy']
      meta['best_epoch'] = epoch + 1
      ckpts.save_best(step, state.variables, {
          'stage': spec.name, 'arch': spec.arch,
          'num_classes': config.dataset.num_classes, 'epoch': epoch + 1,
          'accuracy': ev['accuracy']})
    with _timed(report, 'checkpoint'):
      ckpts.save_last(step, state, meta)
    if _PREEMPTED.is_set():
      ckpts.close()
      writer.flush()
      return {'status': 'preempted', 'step': step}

  ckpts.close()
  history = meta['history']
  if not history:
    # Resumed into a finished run whose result was never written.
    ev = evaluate(p_eval, state.variables, dataset, par,
                  config.max_eval_batches)
    history = [{'epoch': meta['epoch'], 'step': step, **ev}]
  result = {
      'stage': spec.name, 'mode': spec.mode, 'arch': spec.arch,
      'frozen_arch': spec.frozen_arch,
      'frozen_checkpoint': spec.frozen_checkpoint,
      'frozen_accuracy': frozen_accuracy,
      'status': 'complete' if stopped is None else 'nonfinite',
      'best': meta['best_accuracy'] if meta['best_epoch'] > 0 else None,
      'best_epoch': meta['best_epoch'],
      'last': history[-1]['accuracy'],
      'epochs': meta['epoch'], 'steps': step,
      'images_per_second': throughput.images_per_second,
      'compile_and_first_interval_seconds': throughput.first_step_seconds,
      'devices': par.device_count, 'parallelism': par.kind,
  }
  if stopped is not None:
    result['nonfinite_step'] = stopped
    result['last'] = history[-1]['accuracy'] if meta['history'] else None
  writer.flush()
  if jax.process_index() == 0:
    with open(os.path.join(stage_dir, RESULT_FILE), 'w') as f:
      json.dump(result, f, indent=1)
  return result


def _log_train(writer, spec, step, num_steps, epoch, train_metrics,
               throughput) -> int | None:
  """Writes the metrics since the last log; returns a non-finite step."""
  values = jax.device_get(train_metrics.compute())
  bad = int(values.pop('first_nonfinite_step'))
  if bad >= 0:
    logging.error(
        'Stage %s stopped: the loss became non-finite at step %d (epoch %d). '
        'Nothing after the last epoch end was saved; best/ and last/ keep '
        'the last good checkpoint.', spec.name, bad, epoch + 1)
    return bad
  scalars = {f'train/{k}': float(v) for k, v in values.items()}
  scalars['train/accuracy'] *= 100.0
  ips = throughput.images_per_second
  scalars['train/images_per_second'] = ips
  writer.write_scalars(step, scalars)
  eta = (num_steps - step) * throughput.batch_size / ips if ips else 0.0
  logging.info('%s step %d/%d (epoch %d): loss %.4f ce %.4f kl %.4f acc '
               '%.2f%% lr %.4g | %.0f img/s | ETA %s', spec.name, step,
               num_steps, epoch + 1, scalars['train/loss'],
               scalars['train/ce'], scalars['train/kl'],
               scalars['train/accuracy'], scalars['train/learning_rate'],
               ips, time.strftime('%H:%M:%S', time.gmtime(eta)))
  return None


def _timed(report, name: str):
  return report.timed(name) if report is not None else contextlib.nullcontext()


def _flat_hparams(config, spec) -> dict[str, Any]:
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
