"""Table 1's CNN column on one GPU: its five stages as concurrent processes.

  python experiments/gpu_table1.py --data=PATH [--workdir=DIR] [--out=DIR]
      [--dtype=bfloat16|float32] [--concurrency=2] [--budget_s=S] [--tiny]
      [-- extra main flags]

`experiments/gpu_table1.sh` runs it on the GPU machine (read its header for
the time estimate). The stages are the main command's own
(`python -m nasty_jax.main --config=configs/cifar10.py:resnet18`, one
`--config.stages=STAGE` per process, one shared workdir): the ResNet-18
teachers `normal` and `nasty` (160 epochs, SGD 0.1, x0.1 at 80 and 120)
and the CNN `net` alone, by KD from the normal and from the nasty teacher
(100 epochs, Adam 1e-3); batch 128, tau 4, omega 0.04, alpha 0.9. A stage
starts as soon as the stages it reads are complete, so the CNN alone trains
beside the normal teacher and KD from it beside the nasty teacher, at most
`--concurrency` processes at a time, each held to its share of GPU memory.

The stages compute in bfloat16 (float32 parameters, BN statistics,
softmax, KL and losses) once `bf16_parity` finds, on the device, an
eval-mode ResNet-18's bf16 logits within 5% of its float32 ones; else, or
with `--dtype=float32`, in float32. A rerun in the same workdir keeps the
dtype the first run chose.

PATH is CIFAR-10 as the `arrays` dataset reads it (a JPEG pack, an arrays
.npz or an image folder: nasty_jax/data/arrays.py); it is decoded once into
WORKDIR/cifar10_arrays.npz. At `--budget_s` the running stages are sent
SIGTERM: they save a checkpoint and stop, and the same command resumes them
(finished stages are not run again). The end prints Table 1's CNN column
beside the paper's numbers (docs/paper.md) and img/s per stage, and writes
gpu_table1.json and gpu_table1.md to `--out`. Exit code 0: every stage
complete; 75: stopped at the budget (run again to resume); 1: a stage
failed (its log is in WORKDIR/logs/).

`--tiny` is the CPU rehearsal: the same five stages, two steps each,
batch 16, two eval batches, in WORKDIR_tiny (its accuracies mean nothing:
the first 32 test images are all of one class).
"""

import argparse
import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from nasty_jax import jsonio
from nasty_jax import results as results_lib
from nasty_jax.data import arrays
# pylint: enable=g-import-not-at-top,wrong-import-position

# Stage -> the stages whose best/ it reads. In this order, a free slot goes
# to the critical path (normal -> nasty -> kd_nasty/net) first.
STAGES = {
    'normal': (),
    'nasty': ('normal',),
    'kd_nasty/net': ('nasty',),
    'kd_normal/net': ('normal',),
    'baseline/net': (),
}
# docs/paper.md, Table 1 (best-epoch test accuracy, %).
PAPER = {'normal': 95.13, 'nasty': 94.56, 'baseline/net': 86.64,
         'kd_normal/net': 87.75, 'kd_nasty/net': 82.46}
# (row, teacher stage, CNN stage) of the table.
ROWS = (('CNN alone', None, 'baseline/net'),
        ('ResNet-18 normal', 'normal', 'kd_normal/net'),
        ('ResNet-18 nasty', 'nasty', 'kd_nasty/net'))
MAIN_FLAGS = (
    '--config=configs/cifar10.py:resnet18',
    '--config.students.archs=net',
    '--config.students.methods=ce+kd',
    '--config.dataset.name=arrays',
    # One device: jit runs the same step bodies as pmap without its
    # per-step shard_map (a parity test keeps the two equal).
    '--config.parallelism=jit',
)
# The CPU rehearsal: the same stages, a few steps each.
TINY_FLAGS = ('--config.num_epochs=1', '--config.num_train_steps=2',
              '--config.max_eval_batches=2', '--config.batch_size=16',
              '--config.log_every_steps=1')
# One progress line per epoch (390 steps at batch 128): the log stays
# readable and the loop syncs with the host once an epoch.
FULL_FLAGS = ('--config.log_every_steps=390',)
EXIT_PREEMPTED = 75
# bf16 logits further than this from float32's (relative to the largest
# float32 logit) fail `bf16_parity`; bf16 rounding alone gives ~6e-3
# (ResNet-18, computed op by op on a CPU).
PARITY_TOLERANCE = 0.05
# After SIGTERM: time to save a checkpoint before SIGKILL (a process still
# compiling stops only after its first step).
GRACE_S = 15

_TRAIN_LINE = re.compile(r'(\S+) step (\d+)/(\d+) \(epoch (\d+)/(\d+)\): '
                         r'.* \| (\d+) img/s')
_EVAL_LINE = re.compile(
    r'Stage (\S+) epoch (\d+)/(\d+): test accuracy ([\d.]+)%')


def read_results(workdir: str) -> dict[str, dict[str, Any] | None]:
  """Every stage's result.json (None while unfinished)."""
  out = {}
  for stage in STAGES:
    try:
      out[stage] = jsonio.read(os.path.join(workdir, stage, 'result.json'))
    except jsonio.UnreadableFileError:
      out[stage] = None
  return out


def _accuracy(result: dict[str, Any] | None, kind: str) -> float | None:
  return None if result is None else result.get(kind)


def table(stage_results: dict[str, dict[str, Any] | None],
          kind: str = 'best') -> str:
  """Table 1's CNN column, ours beside the paper's (markdown).

  Args:
    stage_results: stage -> result.json contents, or None if unfinished.
    kind: 'best' (best-on-test epoch, what the paper reports) or 'last'.

  Returns:
    Teachers' changes are against the normal teacher, students' against
    the CNN alone, as in the paper.
  """
  ours = {s: _accuracy(stage_results.get(s), kind) for s in STAGES}
  lines = ['| | Teacher | Teacher (paper) | CNN | CNN (paper) |',
           '|---|---|---|---|---|']
  for row, teacher, student in ROWS:
    if teacher is None:
      teacher_cells = ['–', '–']
    else:
      ref, paper_ref = ((None, None) if teacher == 'normal'
                        else (ours['normal'], PAPER['normal']))
      teacher_cells = [results_lib.cell(ours[teacher], ref),
                       results_lib.cell(PAPER[teacher], paper_ref)]
    ref, paper_ref = ((None, None) if student == 'baseline/net'
                      else (ours['baseline/net'], PAPER['baseline/net']))
    cells = teacher_cells + [results_lib.cell(ours[student], ref),
                             results_lib.cell(PAPER[student], paper_ref)]
    lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def stage_table(stage_results: dict[str, dict[str, Any] | None],
                runs: dict[str, dict[str, Any]]) -> str:
  """One row per stage: status, accuracies, img/s and times (markdown).

  Args:
    stage_results: stage -> result.json contents, or None if unfinished.
    runs: stage -> what this invocation saw of it: 'status', 'wall_s',
      and from its log 'epoch', 'epochs', 'accuracy', 'images_per_second'.
  """
  lines = ['| stage | status | best (epoch) | last | img/s | compile + '
           'first interval (s) | wall (s) |', '|---|---|---|---|---|---|---|']
  for stage in STAGES:
    result, run = stage_results.get(stage), runs.get(stage, {})
    if result is not None:
      status = result.get('status', 'complete')
      best = (f'{results_lib.cell(result.get("best"))} '
              f'({result.get("best_epoch")})')
      last = results_lib.cell(result.get('last'))
      ips = result.get('images_per_second')
      first = result.get('compile_and_first_interval_seconds')
    else:
      status = run.get('status', 'not started')
      if run.get('epoch'):
        status += f' at epoch {run["epoch"]}/{run["epochs"]}'
      best, ips, first = '–', run.get('images_per_second'), None
      last = results_lib.cell(run.get('accuracy'))
    wall = run.get('wall_s')
    lines.append(
        f'| {stage} | {status} | {best} | {last} | '
        f'{f"{ips:,.0f}" if ips else "–"} | '
        f'{f"{first:.0f}" if first is not None else "–"} | '
        f'{f"{wall:.0f}" if wall is not None else "–"} |')
  return '\n'.join(lines)


def report(stage_results: dict[str, dict[str, Any] | None],
           runs: dict[str, dict[str, Any]], settings: dict[str, Any]) -> str:
  """The printed and written report (markdown).

  Args:
    stage_results: stage -> result.json contents, or None if unfinished.
    runs: as `stage_table`.
    settings: 'dtype', 'schedule' (words), 'elapsed_s', and 'bf16_parity'
      (`bf16_parity`'s result, or None where it was not checked).
  """
  done = sum(r is not None for r in stage_results.values())
  parity = settings.get('bf16_parity')
  checked = [] if parity is None else [
      f'bf16 against float32 on this device: {_parity_words(parity)}.', '']
  return '\n'.join([
      '# Table 1, CIFAR-10, CNN column (teacher ResNet-18)', '',
      f'{done}/{len(STAGES)} stages finished; {settings["dtype"]}, '
      f'{settings["schedule"]}; {settings["elapsed_s"]:.0f} s. Test accuracy '
      '(%) at the best epoch (what the paper reports); in parentheses the '
      'change against the normal teacher (teachers) or the CNN alone '
      '(students).', '', *checked, table(stage_results, 'best'), '',
      '## Last epoch',
      '', table(stage_results, 'last'), '', '## Stages', '',
      stage_table(stage_results, runs), ''])


def _parity_words(parity: dict[str, Any]) -> str:
  if 'error' in parity:
    return f'the check failed ({parity["error"]}), so float32'
  words = (f'max logit error {parity["relative_error"]:.1e} of the largest'
           if parity['finite'] else 'non-finite logits')
  return f'{words}, {"kept" if parity["ok"] else "so float32"}'


def describe_schedule(main_flags: Sequence[str]) -> str:
  """The schedule in words, from the main command's flags."""
  flags = dict(f[2:].split('=', 1) for f in main_flags if '=' in f)
  batch = flags.get('config.batch_size', '128')
  changed = [f'{k[len("config."):]}={flags[k]}' for k in (
      'config.num_epochs', 'config.num_train_steps') if k in flags]
  if changed:
    return f'batch {batch}, schedule cut to {", ".join(changed)}'
  return (f'batch {batch}, the paper\'s schedule (teachers 160 epochs, CNN '
          '100)')


class _Stage:
  """One stage's process, its output copied to the console and its log."""

  _print_lock = threading.Lock()

  def __init__(self, name: str, command: Sequence[str], env: dict[str, str],
               log_path: str):
    self.name = name
    self.run: dict[str, Any] = {'status': 'running'}
    self.started = time.monotonic()
    self._log = open(log_path, 'a')  # pylint: disable=consider-using-with
    self._log.write(f'$ {" ".join(command)}\n')
    self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
        command, cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1)
    self._pump = threading.Thread(target=self._copy, daemon=True)
    self._pump.start()

  def _copy(self) -> None:
    for line in self.proc.stdout:
      self._log.write(line)
      with self._print_lock:
        print(f'[{self.name}] {line}', end='', flush=True)
      train, evaluation = _TRAIN_LINE.search(line), _EVAL_LINE.search(line)
      if train and train.group(1) == self.name:
        self.run['images_per_second'] = float(train.group(6))
      if evaluation and evaluation.group(1) == self.name:
        self.run.update(epoch=int(evaluation.group(2)),
                        epochs=int(evaluation.group(3)),
                        accuracy=float(evaluation.group(4)))

  def finish(self) -> int:
    """Waits for the output to drain; returns the exit code."""
    code = self.proc.wait()
    self._pump.join()
    self._log.close()
    self.run['wall_s'] = time.monotonic() - self.started
    self.run['exit_code'] = code
    return code


def prepare_data(source: str, workdir: str) -> str:
  """Decodes `source` once into WORKDIR/cifar10_arrays.npz; returns it."""
  decoded = os.path.join(workdir, 'cifar10_arrays.npz')
  if not os.path.exists(decoded):
    started = time.monotonic()
    splits = arrays.load(source)
    arrays.save(decoded, splits)
    print(f'Decoded {source} into {decoded}: {arrays.describe(splits)} '
          f'({time.monotonic() - started:.1f} s).', flush=True)
  return decoded


def bf16_parity(data: str, arch: str = 'resnet18',
                batch_size: int = 128) -> dict[str, Any]:
  """Eval-mode logits of `arch` in bfloat16 against float32, on test images.

  The same variables (random init: parity of the arithmetic, not of a
  trained net) and the stages' jitted forward. XLA:CPU, for one, fused
  ResNet-18's last block into the pooling reduction and returned NaN
  logits until `layers.global_avg_pool` fenced it off; a device whose bf16
  path breaks like that must not train the table.

  Returns:
    {'finite', 'relative_error' (max |bf16 - f32| / max |f32|), 'ok'}.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import cifar10
  from nasty_jax import programs
  from nasty_jax.data import augment
  # pylint: enable=g-import-not-at-top
  images = arrays.load(data).test[0][:batch_size]
  x = augment.normalize(np, images, arrays.NORM, np.float32)
  logits = {}
  variables = None
  for dtype in ('float32', 'bfloat16'):
    model = programs.create_model(
        cifar10.get_config(f'{arch},model.dtype={dtype}'), arch)
    if variables is None:
      variables = jax.jit(functools.partial(model.init, train=False))(
          jax.random.key(0), jnp.asarray(x[:1]))
    forward = jax.jit(functools.partial(model.apply, train=False))
    logits[dtype] = np.asarray(forward(variables, jnp.asarray(x, dtype)),
                               np.float32)
  finite = bool(np.isfinite(logits['bfloat16']).all())
  scale = float(np.abs(logits['float32']).max()) or 1.0
  error = (float(np.abs(logits['bfloat16'] - logits['float32']).max())
           / scale if finite else float('inf'))
  return {'finite': finite, 'relative_error': error,
          'ok': finite and error < PARITY_TOLERANCE}


def check_bf16(data: str, env: dict[str, str]) -> dict[str, Any]:
  """`bf16_parity` in a process of its own (this one holds no device)."""
  out = subprocess.run(
      [sys.executable, os.path.abspath(__file__), '--parity_only',
       f'--data={data}'], cwd=REPO, env=env, capture_output=True, text=True,
      check=False)
  lines = out.stdout.strip().splitlines()
  try:
    return json.loads(lines[-1])
  except (IndexError, json.JSONDecodeError):
    code = out.returncode
    ended = f'signal {-code}' if code < 0 else f'exit {code}'
    tail = ' '.join(out.stderr.strip().splitlines()[-3:])
    return {'ok': False, 'error': f'{ended}{": " if tail else ""}{tail}'}


def earlier_dtype(workdir: str) -> str | None:
  """The model.dtype an earlier run used in `workdir` (its config.json), so
  that a resumed run goes on in it without checking parity again."""
  try:
    config = jsonio.read(os.path.join(workdir, 'config.json'))
  except jsonio.UnreadableFileError:
    return None
  return (config or {}).get('model', {}).get('dtype')


def schedule(workdir: str, main_flags: Sequence[str], concurrency: int,
             deadline: float, env: dict[str, str]
             ) -> tuple[dict[str, dict[str, Any]], bool]:
  """Runs every unfinished stage once what it reads is complete.

  Args:
    workdir: the shared workdir.
    main_flags: the main command's flags, less `--config.stages`.
    concurrency: processes at a time.
    deadline: `time.monotonic()` at which running stages are stopped.
    env: the processes' environment.

  Returns:
    (stage -> what this invocation saw of it, whether it stopped at the
    deadline or a signal).
  """
  started = time.monotonic()
  done = {s for s, r in read_results(workdir).items() if r is not None}
  runs = {s: {'status': 'finished earlier'} for s in done}
  waiting = [s for s in STAGES if s not in done]
  running: dict[str, _Stage] = {}
  stopping = False

  def stop(*_):
    nonlocal stopping
    if not stopping:
      stopping = True
      for stage in running.values():
        stage.proc.send_signal(signal.SIGTERM)
  signal.signal(signal.SIGTERM, stop)
  signal.signal(signal.SIGINT, stop)

  while waiting or running:
    now = time.monotonic()
    if not stopping and now > deadline:
      print('Time budget reached: stopping the running stages (they save '
            'a checkpoint; run the same command again to resume).',
            flush=True)
      stop()
    if stopping and running and now > deadline + GRACE_S:
      for stage in running.values():
        stage.proc.kill()
    for name in list(running):
      if running[name].proc.poll() is None:
        continue
      stage = running.pop(name)
      code = stage.finish()
      runs[name] = stage.run
      # Its own result decides: a process's exit code also reports the
      # other stages of the shared workdir (a non-finite one gives 3).
      result = read_results(workdir)[name]
      if result is not None:
        done.add(name)
        stage.run['status'] = result.get('status', 'complete')
      else:
        stage.run['status'] = ('stopped' if code == EXIT_PREEMPTED
                               else f'failed (exit {code})')
    ready = [s for s in waiting if all(n in done for n in STAGES[s])]
    while not stopping and ready and len(running) < concurrency:
      name = ready.pop(0)
      waiting.remove(name)
      os.makedirs(os.path.join(workdir, 'logs'), exist_ok=True)
      log = os.path.join(workdir, 'logs', name.replace('/', '_') + '.log')
      print(f'Starting {name} at {time.monotonic() - started:.0f} s.',
            flush=True)
      running[name] = _Stage(
          name, [sys.executable, '-m', 'nasty_jax.main', *main_flags,
                 f'--config.stages={name}'], env, log)
    if not running and (stopping or not ready):
      break  # Stopped, or what is left reads a stage that failed.
    time.sleep(0.5)
  for name in waiting:
    runs.setdefault(name, {'status': 'not started'})
  return runs, stopping


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = argv[argv.index('--') + 1:] if '--' in argv else []
  argv = argv[:argv.index('--')] if '--' in argv else argv
  parser = argparse.ArgumentParser(
      prog='python experiments/gpu_table1.py',
      description="Table 1's CNN column at the paper's schedule on one GPU.")
  parser.add_argument('--data', required=True,
                      help='CIFAR-10: a JPEG pack, an arrays .npz or an '
                      'image folder')
  parser.add_argument('--workdir', default=os.path.join(REPO, 'runs',
                                                        'gpu_table1'))
  parser.add_argument('--out', default=None,
                      help='where gpu_table1.json/.md go; default workdir')
  parser.add_argument('--dtype', default=None,
                      choices=('bfloat16', 'float32'),
                      help='default: the earlier run\'s in this workdir, '
                      'else bfloat16 if it passes the parity check')
  parser.add_argument('--concurrency', type=int, default=2)
  parser.add_argument('--budget_s', type=float, default=515.0,
                      help='stop (checkpoint) the stages this long after '
                      'the start')
  parser.add_argument('--tiny', action='store_true',
                      help='CPU rehearsal: two steps per stage')
  parser.add_argument('--parity_only', action='store_true',
                      help='print bf16_parity on --data as JSON and exit')
  args = parser.parse_args(argv)
  if args.parity_only:
    print(json.dumps(bf16_parity(args.data)))
    return 0
  workdir = os.path.abspath(args.workdir + ('_tiny' if args.tiny else ''))
  out = os.path.abspath(args.out or workdir)
  os.makedirs(workdir, exist_ok=True)
  os.makedirs(out, exist_ok=True)
  started = time.monotonic()
  try:
    data = prepare_data(args.data, workdir)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  env = dict(os.environ)
  # Each process its share of GPU memory (JAX takes 75% by default).
  env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION',
                 f'{0.9 / max(args.concurrency, 1):.2f}')
  dtype, parity = args.dtype or earlier_dtype(workdir), None
  if dtype and not args.dtype:
    print(f'{dtype}, as the earlier run in {workdir}.', flush=True)
  if dtype is None:
    dtype = 'bfloat16'
    parity = check_bf16(data, env)
    print(f'bf16 parity on this device: {parity}', flush=True)
    if not parity['ok']:
      dtype = 'float32'
      print('bf16 does not keep parity here: training in float32 (slower; '
            'the budget may stop it sooner).', flush=True)
  main_flags = [*MAIN_FLAGS, f'--workdir={workdir}',
                f'--config.dataset.manual_dir={data}',
                f'--config.model.dtype={dtype}',
                *(TINY_FLAGS if args.tiny else FULL_FLAGS), *extra]
  runs, stopped = schedule(workdir, main_flags, args.concurrency,
                           started + args.budget_s, env)
  stage_results = read_results(workdir)
  settings = {
      'dtype': dtype, 'bf16_parity': parity, 'concurrency': args.concurrency,
      'schedule': describe_schedule(main_flags), 'main_flags': main_flags,
      'budget_s': args.budget_s, 'elapsed_s': time.monotonic() - started,
  }
  text = report(stage_results, runs, settings)
  print('\n' + text, flush=True)
  jsonio.write(os.path.join(out, 'gpu_table1.json'), {
      'settings': settings, 'paper': PAPER, 'runs': runs,
      'stages': stage_results}, default=str)
  jsonio.write_text(os.path.join(out, 'gpu_table1.md'), text)
  print(f'Wrote {out}/gpu_table1.json and gpu_table1.md '
        f'({settings["elapsed_s"]:.0f} s in all).', flush=True)
  if all(r is not None and r.get('status') == 'complete'
         for r in stage_results.values()):
    return 0
  return EXIT_PREEMPTED if stopped else 1


if __name__ == '__main__':
  sys.exit(main())
