"""Fault probes: changed settings, torn and corrupt files, damaged
checkpoints, Ctrl-C, device-count changes, failed writes, exit codes."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from nasty_jax import checkpointing
from nasty_jax import cli
from nasty_jax import engine
from engine_test import NORMAL, _config, _kd_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(stage_dir):
  variables, _ = checkpointing.load_variables(stage_dir)
  return jax.tree_util.tree_leaves(variables)


def _same_weights(a_dir, b_dir):
  for a, b in zip(_leaves(a_dir), _leaves(b_dir)):
    np.testing.assert_array_equal(a, b)


def test_changed_settings_are_refused_by_name_and_retrain_moves_aside(
    tmp_path):
  config = _config(num_epochs=1)
  stage_dir = str(tmp_path / 'normal')
  done = engine.run_stage(config, NORMAL, stage_dir)
  # What cannot change a result does not count: the finished stage is kept.
  assert engine.run_stage(_config(num_epochs=1, log_every_steps=1), NORMAL,
                          stage_dir) == done
  changed = _config(num_epochs=1, **{'optim.sgd.learning_rate': 0.05,
                                     'model.bn_momentum': 0.2, 'seed': 3})
  with pytest.raises(engine.StaleStageError) as e:
    engine.run_stage(changed, NORMAL, stage_dir)
  for key in ('learning_rate', 'bn_momentum', 'seed', '--config.retrain'):
    assert key in str(e.value), e.value
  assert engine.read_result(stage_dir) == done  # Nothing was touched.
  redone = engine.run_stage(changed, NORMAL, stage_dir, retrain=True)
  assert redone['status'] == 'complete'
  assert os.path.isfile(os.path.join(f'{stage_dir}.stale-1',
                                     engine.RESULT_FILE))


@pytest.mark.parametrize('content', ['', '{"stage": "normal", "be'])
def test_empty_or_torn_result_is_redone_not_trusted(tmp_path, content):
  config = _config(num_epochs=1)
  stage_dir = str(tmp_path / 'normal')
  done = engine.run_stage(config, NORMAL, stage_dir)
  with open(os.path.join(stage_dir, engine.RESULT_FILE), 'w') as f:
    f.write(content)
  again = engine.run_stage(config, NORMAL, stage_dir)
  for key in ('best', 'last', 'steps', 'epochs', 'fingerprint'):
    assert again[key] == done[key], key


def test_unreadable_resume_checkpoint_is_set_aside_and_redone(tmp_path):
  config = _config()
  full_dir, killed_dir = str(tmp_path / 'full'), str(tmp_path / 'killed')
  engine.run_stage(config, NORMAL, full_dir)
  engine.run_stage(config, NORMAL, killed_dir, step_hook=lambda s: s == 5
                   and engine.request_preemption())
  step_dir = os.path.join(killed_dir, 'last', '5')
  for root, _, files in os.walk(step_dir):
    for name in files:
      if 'metadata' in name.lower():
        with open(os.path.join(root, name), 'w') as f:
          f.write('{"trunc')
  resumed = engine.run_stage(config, NORMAL, killed_dir)
  assert resumed['status'] == 'complete'
  assert os.path.isdir(os.path.join(killed_dir, 'last.unreadable-1'))
  _same_weights(full_dir, killed_dir)


def _trained_teacher(tmp_path, config):
  teacher_dir = str(tmp_path / 'normal')
  engine.run_stage(config, NORMAL, teacher_dir)
  return teacher_dir


# A failed read leaves tensorstore callbacks into orbax's closed event loop;
# each would print a traceback after the one-line error.
@pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')
def test_damaged_frozen_networks_are_refused(tmp_path):
  config = _config(num_epochs=1)
  teacher_dir = _trained_teacher(tmp_path, config)
  variables, meta = checkpointing.load_variables(teacher_dir)

  # Non-finite values: refused at load.
  broken = jax.tree_util.tree_map(np.array, variables)
  first = jax.tree_util.tree_leaves(broken['params'])[0]
  first.flat[0] = np.inf
  checkpointing.save_variables(str(tmp_path / 'inf'), broken, meta)
  with pytest.raises(ValueError, match='1 non-finite values'):
    engine.run_stage(config, _kd_spec('_tiny_resnet', str(tmp_path / 'inf')),
                     str(tmp_path / 'kd_inf'))

  # Random bytes over the array files: unreadable or non-finite, never used.
  noisy = tmp_path / 'noisy'
  checkpointing.save_variables(str(noisy), variables, meta)
  rng = np.random.default_rng(0)
  for root, _, files in os.walk(noisy):
    for name in files:
      path = os.path.join(root, name)
      if 'd' in root.split(os.sep)[-1:] or name.startswith('ocdbt'):
        size = os.path.getsize(path)
        with open(path, 'r+b') as f:
          f.write(rng.bytes(min(size, 4096)))
  with pytest.raises(ValueError):
    engine.run_stage(config, _kd_spec('_tiny_resnet', str(noisy)),
                     str(tmp_path / 'kd_noisy'))

  # A recorded accuracy the weights no longer reach: both numbers named.
  shifted = dict(meta, accuracy=meta['accuracy'] - 10.0)
  checkpointing.save_variables(str(tmp_path / 'shifted'), variables, shifted)
  with pytest.raises(ValueError, match='recorded') as e:
    engine.run_stage(config, _kd_spec('_tiny_resnet',
                                      str(tmp_path / 'shifted')),
                     str(tmp_path / 'kd_shifted'))
  assert f'{meta["accuracy"]:.2f}%' in str(e.value)
  assert not os.path.exists(tmp_path / 'kd_shifted' / engine.RESULT_FILE)


def test_ctrl_c_mid_epoch_saves_and_resume_equals_uninterrupted(tmp_path):
  config = _config()
  full_dir, stopped_dir = str(tmp_path / 'full'), str(tmp_path / 'stopped')
  full = engine.run_stage(config, NORMAL, full_dir)
  previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  engine.install_preemption_handler()
  try:
    first = engine.run_stage(
        config, NORMAL, stopped_dir,
        step_hook=lambda s: s == 5 and os.kill(os.getpid(), signal.SIGINT))
  finally:
    signal.signal(signal.SIGINT, previous[0])
    signal.signal(signal.SIGTERM, previous[1])
  assert first == {'status': 'preempted', 'step': 5}
  resumed = engine.run_stage(config, NORMAL, stopped_dir)
  for key in ('best', 'last', 'best_epoch', 'steps'):
    assert resumed[key] == full[key], key
  _same_weights(full_dir, stopped_dir)


def test_checkpoints_move_between_device_counts(tmp_path, caplog):
  four = _config(num_epochs=1, num_devices=4)
  teacher_dir = _trained_teacher(tmp_path, four)
  one = _config(num_epochs=1, num_devices=1)
  kd = engine.run_stage(one, _kd_spec('_tiny_resnet', teacher_dir),
                        str(tmp_path / 'kd_on_1'))
  assert kd['devices'] == 1 and kd['status'] == 'complete'
  single_dir = str(tmp_path / 'normal_on_1')
  single = engine.run_stage(one, NORMAL, single_dir)
  kd4 = engine.run_stage(four, _kd_spec('_tiny_resnet', single_dir),
                         str(tmp_path / 'kd_on_4'))
  assert kd4['devices'] == 4
  assert kd4['frozen_accuracy'] == pytest.approx(single['best'])

  # A stage pre-empted on 4 devices resumes on 2, and says so.
  resized = str(tmp_path / 'resized')
  engine.run_stage(_config(num_devices=4), NORMAL, resized,
                   step_hook=lambda s: s == 5 and engine.request_preemption())
  with caplog.at_level('WARNING'):
    done = engine.run_stage(_config(num_devices=2), NORMAL, resized)
  assert done['status'] == 'complete' and done['devices'] == 2
  assert 'saved on 4 devices and resumes on 2' in caplog.text


def test_a_failed_checkpoint_write_is_one_error_naming_the_path(
    tmp_path, monkeypatch):
  def disk_full(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', disk_full)
  stage_dir = str(tmp_path / 'normal')
  with pytest.raises(cli.WriteFailedError) as e:
    engine.run_stage(_config(num_epochs=1), NORMAL, stage_dir)
  assert 'No space left on device' in str(e.value)
  assert stage_dir in str(e.value)
  with pytest.raises(SystemExit) as code:
    cli.run_command(lambda: (_ for _ in ()).throw(e.value))
  assert code.value.code == cli.EXIT_WRITE_FAILED


def test_durations_show_days():
  assert engine.format_duration(4 * 86400 + 5 * 3600 + 31 * 60 + 43) == (
      '4d 05:31:43')
  assert engine.format_duration(59) == '00:00:59'


def test_exit_codes_and_one_line_errors(tmp_path):
  base = [sys.executable, '-m', 'nasty_jax.main',
          '--config=configs/digits.py:_tiny_resnet,students.archs=_tiny_cnn',
          '--config.batch_size=16', '--config.dataset.subset_percent=0.1',
          '--config.max_eval_batches=2', '--config.log_every_steps=2']

  def run(*args, **kwargs):
    return subprocess.run([*base, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, **kwargs)

  bad = run('--config.optim.sgd.nope=1', f'--workdir={tmp_path / "a"}')
  assert bad.returncode == cli.EXIT_BAD_INPUT
  assert "unknown config key 'nope'" in bad.stderr
  assert 'Traceback' not in bad.stderr
  missing = tmp_path / 'b'
  proc = run('--config.stages=kd_normal', '--config.teacher.checkpoint='
             f'{tmp_path / "nowhere"}', f'--workdir={missing}')
  assert proc.returncode == cli.EXIT_BAD_INPUT, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert not missing.exists()  # A failed start leaves no workdir.

  nan = run('--config.stages=normal', '--config.num_epochs=4',
            '--config.optim.sgd.learning_rate=1e12',
            f'--workdir={tmp_path / "nan"}')
  assert nan.returncode == cli.EXIT_NONFINITE, nan.stderr[-2000:]

  # Ctrl-C at a step: saved, exit 75, and the rerun finishes.
  workdir = tmp_path / 'c'
  proc = subprocess.Popen(
      [*base, '--config.stages=normal', '--config.num_epochs=3',
       f'--workdir={workdir}'], cwd=REPO, stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:
    if 'normal step 2/' in line:
      proc.send_signal(signal.SIGINT)
      break
  rest = proc.communicate(timeout=600)[1]
  assert proc.returncode == cli.EXIT_PREEMPTED, rest[-2000:]
  assert 'Traceback' not in rest and 'pre-empted at step' in rest
  again = run('--config.stages=normal', '--config.num_epochs=3',
              f'--workdir={workdir}')
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'resumes at step' in again.stderr
  assert json.loads((workdir / 'normal' / engine.RESULT_FILE).read_text())[
      'status'] == 'complete'


def test_a_workdir_that_is_a_file_is_one_error_and_left_alone(tmp_path):
  path = tmp_path / 'results'
  path.write_text('mine')
  ran = []
  with pytest.raises(SystemExit) as code:
    cli.run_command(lambda: ran.append(1), str(path))
  assert code.value.code == cli.EXIT_BAD_INPUT
  assert not ran and path.read_text() == 'mine'
