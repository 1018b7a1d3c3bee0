"""The stage engine: runs any stage from its spec, resumably.

`run_stage(config, spec, stage_dir)` runs (or resumes, or skips) one stage:
the method's program (`programs.supervised`, or the method's own) says what
is trained on what; the engine owns everything else, the same for every
method: the step loop, the per-epoch evaluation on the test split (as the
reference does), `best/` (best-on-test variables, what later stages read,
like the reference's best_model.tar) and `last/` (the resumable state),
pre-emption, the non-finite stop, throughput, the progress line and
`result.json`. A stage with a `result.json` is complete and is skipped.

Resume is exact: the state's step decides the epoch and the position inside
it, a program's inputs are a pure function of (seed, epoch, step), and
every step's key is `fold_in(key(seed), step + 1)`.
"""

import gc
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import ml_collections
from absl import logging

from nasty_jax import checkpointing
from nasty_jax import fingerprint
from nasty_jax import jsonio
from nasty_jax import methods
from nasty_jax import parallel as parallel_lib
from nasty_jax import programs
from nasty_jax import runtime
from nasty_jax import summaries

RESULT_FILE = 'result.json'
# config.profile traces these steps (after the start, compiles excluded).
PROFILE_DIR = 'profile'
PROFILE_STEPS = (10, 15)


class NonFiniteLossError(RuntimeError):
  """A stage's loss became NaN or inf."""


class StaleStageError(ValueError):
  """A stage folder made with other settings than the ones asked for."""


_PREEMPTED = threading.Event()


def request_preemption(*_) -> None:
  """Asks the running stage to checkpoint after this step and return."""
  _PREEMPTED.set()


def preemption_requested() -> bool:
  """Whether a pre-emption was requested (loops outside the engine's)."""
  return _PREEMPTED.is_set()


def acknowledge_preemption() -> None:
  """Marks a pre-emption handled: the stage saved and returned.

  Only then is the request cleared, so one that came during a stage's
  set-up still stops its first step; a later run in the process starts
  afresh.
  """
  _PREEMPTED.clear()


def _interrupt(*_) -> None:
  if _PREEMPTED.is_set():
    raise KeyboardInterrupt  # A second Ctrl-C: stop now.
  logging.warning('Interrupted: saving a checkpoint at this step (Ctrl-C '
                  'again stops without it).')
  request_preemption()


def install_preemption_handler() -> None:
  """SIGTERM (what Cloud TPU/GPU pre-emption sends) and SIGINT (Ctrl-C)
  save a checkpoint at the current step and stop the run."""
  signal.signal(signal.SIGTERM, request_preemption)
  signal.signal(signal.SIGINT, _interrupt)


def read_result(stage_dir: str) -> dict[str, Any] | None:
  """A finished stage's result, or None while it is incomplete.

  An unreadable result.json (a torn write of an older version, a disk
  error) counts as unfinished: the stage is redone from its checkpoint,
  never trusted.
  """
  try:
    return jsonio.read(os.path.join(stage_dir, RESULT_FILE))
  except jsonio.UnreadableFileError as e:
    logging.warning('%s; the stage is treated as unfinished.', e)
    return None


def write_result(stage_dir: str, result: dict[str, Any]) -> None:
  """Marks a stage complete: writes its result.json (process 0)."""
  if jax.process_index() == 0:
    jsonio.write(os.path.join(stage_dir, RESULT_FILE), result)


def check_folder(spec: programs.StageSpec, stage_dir: str,
                 wanted: dict[str, Any], *, retrain: bool = False) -> None:
  """Refuses a stage folder made with other settings than `wanted`.

  A folder with the same fingerprint (or none yet) passes. One with another
  fingerprint, or none recorded (an older nasty_jax made it), is moved
  aside to `<folder>.stale-N` when `retrain` is set or when the stage had
  stopped at a non-finite loss (retried once its settings change), and is
  otherwise an error naming what changed. Nothing is deleted.

  Raises:
    StaleStageError: the folder's settings differ and `retrain` is off.
  """
  if not os.path.isdir(stage_dir) or not os.listdir(stage_dir):
    return
  try:
    recorded = fingerprint.read(stage_dir)
  except jsonio.UnreadableFileError:
    recorded = None
  if recorded is not None and recorded.get('fingerprint') == fingerprint.of(
      wanted):
    return
  result = read_result(stage_dir)
  if retrain or (result or {}).get('status') == 'nonfinite':
    aside = _stale_name(stage_dir)
    os.replace(stage_dir, aside)
    logging.warning('Stage %s: its folder had other settings; kept as %s, '
                    'retraining.', spec.name, aside)
    return
  if recorded is None:
    changed = 'no settings record (made by an older nasty_jax?)'
  else:
    diffs = fingerprint.differences(recorded.get('settings', {}), wanted)
    changed = '; '.join(diffs[:6]) + (f'; +{len(diffs) - 6} more'
                                      if len(diffs) > 6 else '')
  raise StaleStageError(
      f'Stage {spec.name} in {stage_dir} was made with other settings '
      f'({changed}). Use a new --workdir, or --config.retrain={spec.name} '
      'to retrain it and the stages after it (the old folder is kept as '
      f'{_stale_name(stage_dir)}).')


def _stale_name(stage_dir: str) -> str:
  n = 1
  while os.path.exists(f'{stage_dir}.stale-{n}'):
    n += 1
  return f'{stage_dir}.stale-{n}'


def skip_if_done(spec: programs.StageSpec, stage_dir: str
                 ) -> dict[str, Any] | None:
  """A finished stage's result (logged as skipped), or None."""
  done = read_result(stage_dir)
  if done is not None:
    logging.info('Stage %s is complete (%s); skipping.', spec.name,
                 os.path.join(stage_dir, RESULT_FILE))
  return done


def stage_settings(config: ml_collections.ConfigDict,
                   spec: programs.StageSpec,
                   sources: dict[str, str] | None = None) -> dict[str, Any]:
  """`fingerprint.settings` of a stage; sources default to its checkpoints'
  recorded fingerprints."""
  if sources is None:
    sources = {f.role: fingerprint.checkpoint_identity(f.checkpoint)
               for f in spec.frozen}
  return fingerprint.settings(config, spec, sources)


def create_writer(stage_dir: str) -> Any:
  """The stage's writer: TensorBoard files on process 0, nothing else.

  The console gets one line per log step from the loop itself, not a
  second copy from clu's logging writer; the hyper-parameters go to the
  TensorBoard files and config.json, not the console. Without TensorFlow
  the files come from tensorboard's own writer (`summaries`).
  """
  return summaries.create_writer(stage_dir,
                                 primary=jax.process_index() == 0)


def check_spec(spec: programs.StageSpec) -> methods.Method:
  """The spec's method, after checking the spec gives what it reads.

  Raises:
    ValueError: an unknown method, or frozen networks other than the ones
      the method reads.
  """
  method = methods.get(spec.method)
  roles = tuple(f.role for f in spec.frozen)
  want = method.frozen or ((methods.TEACHER,) if method.per_teacher_stage
                           else ())
  if roles != want:
    raise ValueError(f'Stage {spec.name}: method {method.name!r} reads '
                     f'frozen networks {want or "none"}, but the stage '
                     f'gives {roles or "none"}.')
  return method


def resume_notes(meta: dict[str, Any], devices: int,
                 chip: str) -> list[str]:
  """What differs between the run a checkpoint was saved by and this one.

  Neither stops the resume (the global batch and the schedule are the
  same), but either may round float sums another way: a resumed stage is
  then no longer bit-identical to an uninterrupted run. `chip` is what
  does the arithmetic (`runtime.chip`); checkpoints of the previous
  release saved it as 'cpu'.
  """
  notes = []
  if meta.get('devices', devices) != devices:
    notes.append(f'was saved on {meta["devices"]} devices and resumes on '
                 f'{devices} (same global batch; float sums may differ in '
                 'order).')
  saved = meta.get('chip', meta.get('cpu', chip))
  if saved != chip:
    notes.append(f'was saved on a {saved} and resumes on a {chip} (XLA '
                 'picks its kernels per chip; float sums may round '
                 'differently).')
  return notes


def run_stage(config: ml_collections.ConfigDict, spec: programs.StageSpec,
              stage_dir: str, *,
              build: Callable[[programs.Context], programs.Program] | None
              = None,
              step_hook: Callable[[int], None] | None = None,
              sources: dict[str, str] | None = None,
              retrain: bool = False) -> dict[str, Any]:
  """Runs (or resumes, or skips) one stage and returns its result.

  Args:
    config: the pipeline config (configs/*.py).
    spec: this stage.
    stage_dir: the stage's own folder.
    build: its program builder; default the method's (`programs.supervised`
      for an objective method).
    step_hook: called with the step number after each step (tests use it to
      simulate a pre-emption).
    sources: the fingerprints of the frozen networks' producers (the
      pipeline's expectation); default read from their folders.
    retrain: move a folder made with other settings aside and retrain
      (`check_folder`).

  Returns:
    The stage's result: best/last test accuracy (percent), best epoch,
    img/s, compile seconds, and the frozen network's accuracy if any; or
    {'status': 'preempted', 'step': ...} when it stopped for a pre-emption.

  Raises:
    ValueError: a bad config or checkpoint, with what to change.
    StaleStageError: the folder was made with other settings.
  """
  try:
    return _run_stage(config, spec, stage_dir, build=build,
                      step_hook=step_hook, sources=sources, retrain=retrain)
  finally:
    release_compiled()


# Share of the kernel's memory-mapping limit a process may fill with
# compiled code before `release_compiled` drops it.
RELEASE_AT = 0.5


def release_compiled() -> None:
  """Drops every compiled program once they fill half the mapping limit.

  XLA:CPU keeps each compiled program's machine code in memory mappings of
  its own until JAX's caches let go of it: ~550 mappings a stage here, so
  a process running ~100 stages (an experiment's seeds) reached the
  kernel's vm.max_map_count (65,530) and LLVM crashed. Dropping them after
  every stage would make each stage retrace and recompile what an earlier
  one of the same shapes compiled (the test suite runs hundreds of such
  stages in one process), so they are dropped only near the limit.
  """
  used, limit = _memory_mappings()
  if used is None or used >= RELEASE_AT * limit:
    jax.clear_caches()
    gc.collect()


def _memory_mappings() -> tuple[int | None, int]:
  """(mappings this process holds, the kernel's limit); None off Linux."""
  try:
    with open('/proc/sys/vm/max_map_count') as f:
      limit = int(f.read())
    with open('/proc/self/maps', 'rb') as f:
      return sum(1 for _ in f), limit
  except (OSError, ValueError):
    return None, 0


def _run_stage(config, spec, stage_dir, *, build, step_hook, sources,
               retrain) -> dict[str, Any]:
  """`run_stage` without the clean-up."""
  method = check_spec(spec)
  wanted = stage_settings(config, spec, sources)
  check_folder(spec, stage_dir, wanted, retrain=retrain)
  done = skip_if_done(spec, stage_dir)
  if done is not None:
    return done
  os.makedirs(stage_dir, exist_ok=True)
  if jax.process_index() == 0 and fingerprint.read(stage_dir) is None:
    fingerprint.record(stage_dir, wanted)
  if method.runner is not None and build is None:
    return method.runner_fn(config, spec, stage_dir, step_hook=step_hook)
  build = build or method.program_fn or programs.supervised
  writer = create_writer(stage_dir)
  par = parallel_lib.Parallel(config.parallelism, config.num_devices)
  ctx = programs.Context(config, spec, par,
                         programs.open_dataset(config, par))
  program = build(ctx)
  total = program.num_epochs * program.steps_per_epoch
  if config.num_train_steps > 0:
    total = min(total, config.num_train_steps)

  ckpts = checkpointing.StageCheckpoints(stage_dir,
                                         config.max_checkpoints_to_keep)
  state = program.state
  meta = {'stage': spec.name, 'arch': program.arch,
          'num_classes': config.dataset.num_classes, 'epoch': 0,
          'best_accuracy': -1.0, 'best_epoch': -1, 'history': []}
  best_meta = {'dataset': programs.dataset_identity(config),
               'max_eval_batches': config.max_eval_batches}
  host = runtime.host()
  chip = runtime.chip(host)
  restored = ckpts.restore_last(abstract_like(state))
  if restored is not None:
    state, meta = restored
    step = int(state.step)
    logging.info('Stage %s resumes at step %d/%d (epoch %d/%d, step %d of '
                 'it).', spec.name, step, total,
                 step // program.steps_per_epoch + 1, program.num_epochs,
                 step % program.steps_per_epoch)
    for note in resume_notes(meta, par.device_count, chip):
      logging.warning('Stage %s %s', spec.name, note)
  else:
    writer.write_hparams(flat_hparams(config, spec))

  meta['devices'], meta['chip'] = par.device_count, chip
  meta.pop('cpu', None)
  loop = _Loop(spec, program, total, config.log_every_steps, ckpts, writer,
               step_hook, os.path.join(stage_dir, PROFILE_DIR)
               if config.profile else None, best_meta)
  state, step, nonfinite = loop.run(state, meta)
  if step is None:
    return {'status': 'preempted', 'step': loop.step}
  ckpts.close()
  history = meta['history']
  if not history:
    # Resumed into a finished schedule whose result was never written.
    history = [{'epoch': meta['epoch'], 'step': step,
                **program.evaluate(state)}]
  frozen = spec.first_frozen
  result = {
      'stage': spec.name, 'mode': spec.method, 'arch': program.arch,
      'frozen_arch': frozen.arch if frozen else None,
      'frozen_checkpoint': frozen.checkpoint if frozen else None,
      'frozen_accuracy': program.frozen_accuracy,
      'status': 'complete' if nonfinite is None else 'nonfinite',
      'best': meta['best_accuracy'] if meta['best_epoch'] > 0 else None,
      'best_epoch': meta['best_epoch'],
      'last': history[-1]['accuracy'],
      'epochs': meta['epoch'], 'steps': step,
      'images_per_second': loop.throughput.images_per_second,
      'compile_and_first_interval_seconds':
          loop.throughput.first_step_seconds,
      'devices': par.device_count, 'parallelism': par.kind,
      'fingerprint': fingerprint.of(wanted), 'host': host,
      **program.record,
  }
  if 'ensemble_accuracy' in history[-1]:
    # A multi-head network: its heads' ensemble at the final head's best
    # epoch and at the last one.
    best = [h for h in history if h['epoch'] == meta['best_epoch']]
    result['ensemble'] = {
        'best': best[0]['ensemble_accuracy'] if best else None,
        'last': history[-1]['ensemble_accuracy']}
  if nonfinite is not None:
    result['nonfinite_step'] = nonfinite
    result['last'] = meta['history'][-1]['accuracy'] if meta['history'] \
        else None
  writer.flush()
  write_result(stage_dir, result)
  return result


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


class _Loop:
  """The flat step loop of one stage and its bookkeeping."""

  def __init__(self, spec, program, total, log_every, ckpts, writer,
               step_hook, profile_dir=None, best_meta=None):
    self.spec, self.program, self.total = spec, program, total
    self.log_every, self.ckpts, self.writer = log_every, ckpts, writer
    self.step_hook, self.profile_dir = step_hook, profile_dir
    self.best_meta = best_meta or {}
    self._tracing = False
    self.throughput = _Throughput(program.images_per_step)
    self.step = 0

  def run(self, state, meta) -> tuple[Any, int | None, int | None]:
    """`_run`, with a profile trace cut short stopped."""
    try:
      return self._run(state, meta)
    finally:
      self._profile(-1)

  def _run(self, state, meta) -> tuple[Any, int | None, int | None]:
    """Steps from the state's step to the end of the schedule.

    After every epoch the state is evaluated like the reference does,
    `best/` is written on a new best (ties move it to the later epoch) and
    then `last/`. A pre-emption request saves `last/` at the current step,
    mid-epoch or not, and stops; a non-finite loss stops without saving
    anything after the last epoch end.

    Returns:
      (state, the step reached or None if pre-empted, the first non-finite
      step or None).
    """
    program, spe = self.program, self.program.steps_per_epoch
    start = int(state.step)
    batches, metrics, interval_start = None, None, start
    self.step = start
    self.throughput.start()
    for step in range(start, self.total):
      self._profile(step - start)
      epoch = step // spe
      if batches is None:
        batches = iter(program.batches(epoch, step - epoch * spe))
      state, m = program.step(state, next(batches), step)
      metrics = m if metrics is None else metrics.merge(m)
      done = self.step = step + 1
      epoch_end = done % spe == 0 or done == self.total
      if epoch_end:
        batches = None
      if self.step_hook is not None:
        self.step_hook(done)
      if (done % self.log_every == 0 or epoch_end
          or preemption_requested()):
        self.throughput.stop(done - interval_start, metrics)
        bad = self._log_train(done, epoch, metrics)
        if bad is not None:
          return state, done, bad
        metrics, interval_start = None, done
        if not epoch_end:
          self.throughput.start()
      if epoch_end:
        # Evaluation and checkpoints are not training time.
        self._end_epoch(state, meta, epoch, done)
        self.throughput.start()
      if preemption_requested():
        if not epoch_end:
          self.ckpts.save_last(done, state, meta)
        self._stop_preempted(done)
        return state, None, None
    return state, self.step, None

  def _profile(self, steps_done: int) -> None:
    """config.profile: a jax.profiler trace of PROFILE_STEPS."""
    if self.profile_dir is None or jax.process_index() > 0:
      return
    if steps_done == PROFILE_STEPS[0]:
      jax.profiler.start_trace(self.profile_dir)
      self._tracing = True
    elif steps_done == PROFILE_STEPS[1] or steps_done < 0:
      if self._tracing:
        jax.profiler.stop_trace()
        self._tracing = False
        logging.info('Stage %s: profile trace in %s.', self.spec.name,
                     self.profile_dir)

  def _end_epoch(self, state, meta, epoch, step) -> None:
    ev = self.program.evaluate(state)
    meta['epoch'] = epoch + 1
    meta['history'] = list(meta['history']) + [
        {'epoch': epoch + 1, 'step': step, **ev}]
    self.writer.write_scalars(step, {f'eval/{k}': v for k, v in ev.items()})
    logging.info('Stage %s epoch %d/%d: test accuracy %.2f%% (loss %.4f).',
                 self.spec.name, epoch + 1, self.program.num_epochs,
                 ev['accuracy'], ev['loss'])
    # `>=` as the reference: ties move the best to the later epoch.
    if ev['accuracy'] >= meta['best_accuracy']:
      meta['best_accuracy'] = ev['accuracy']
      meta['best_epoch'] = epoch + 1
      self.ckpts.save_best(step, self.program.best_variables(state), {
          'stage': self.spec.name, 'arch': self.program.arch,
          'num_classes': meta['num_classes'], 'epoch': epoch + 1,
          'accuracy': ev['accuracy'], **self.best_meta})
    self.ckpts.save_last(step, state, meta)

  def _stop_preempted(self, step) -> None:
    acknowledge_preemption()
    self.ckpts.close()
    self.writer.flush()
    logging.warning('Stage %s pre-empted at step %d; checkpoint saved. Run '
                    'the same command again to resume.', self.spec.name, step)

  def _log_train(self, step, epoch, metrics) -> int | None:
    """Writes the metrics since the last log; returns a non-finite step."""
    values = jax.device_get(metrics.compute())
    bad = int(values.pop('first_nonfinite_step'))
    if bad >= 0:
      logging.error(
          'Stage %s stopped: the loss became non-finite at step %d (epoch '
          '%d). Nothing after the last epoch end was saved; best/ and last/ '
          'keep the last good checkpoint.', self.spec.name, bad, epoch + 1)
      return bad
    values.update(values.pop('terms', {}))
    scalars = {f'train/{k}': float(v) for k, v in values.items()}
    for key in self.program.percent:
      scalars[f'train/{key}'] *= 100.0
    ips = self.throughput.images_per_second
    if ips:
      scalars['train/images_per_second'] = ips
      eta = (self.total - step) * self.throughput.batch_size / ips
      speed = f'{ips:.0f} img/s | ETA {format_duration(eta)}'
    else:
      speed = (f'first {self.throughput.first_step_seconds:.0f} s, '
               'compilation included')
    self.writer.write_scalars(step, scalars)
    logging.info('%s step %d/%d (epoch %d/%d): %s | %s', self.spec.name,
                 step, self.total, epoch + 1, self.program.num_epochs,
                 self.program.describe(scalars), speed)
    return None


def format_duration(seconds: float) -> str:
  """'2d 05:31:43' / '05:31:43': hours, minutes, seconds, days apart."""
  seconds = int(round(max(seconds, 0.0)))
  days, rest = divmod(seconds, 86400)
  hms = time.strftime('%H:%M:%S', time.gmtime(rest))
  return f'{days}d {hms}' if days else hms


def abstract_like(state: Any) -> Any:
  """`state`'s shapes, dtypes and shardings: the target orbax restores on."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state)


def flat_hparams(config: ml_collections.ConfigDict, spec: programs.StageSpec
                 ) -> dict[str, Any]:
  """The config flattened to scalars for `write_hparams`, plus the stage."""
  flat = {'stage': spec.name, 'method': spec.method, 'arch': spec.arch}
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
