"""The stage engine end to end on the real digits data: resume, NaN stop,
errors."""

import json
import os

import jax
import numpy as np
import pytest

from configs import digits as digits_config
from nasty_jax import checkpointing
from nasty_jax import engine
from nasty_jax import programs
from nasty_jax import runtime


def _config(**overrides):
  """A digits config small enough for CI: ~8 steps per epoch."""
  config = digits_config.get_config('_tiny_resnet,students.archs=_tiny_cnn')
  with config.unlocked():
    config.batch_size = 16
    config.dataset.subset_percent = 0.1  # 143 train images.
    config.num_epochs = 2
    config.max_eval_batches = 3
    config.log_every_steps = 3
    for key, value in overrides.items():
      node = config
      *parents, leaf = key.split('.')
      for parent in parents:
        node = node[parent]
      setattr(node, leaf, value)
  return config


NORMAL = programs.StageSpec('normal', 'normal', '_tiny_resnet')


def _kd_spec(teacher_arch, checkpoint):
  return programs.StageSpec(
      'kd_normal/_tiny_cnn', 'kd', '_tiny_cnn',
      (programs.FrozenSpec('teacher', teacher_arch, checkpoint),))


def _params(stage_dir):
  variables, meta = checkpointing.load_variables(stage_dir)
  return variables, meta


def test_kill_and_resume_equals_uninterrupted(tmp_path):
  config = _config()
  full = engine.run_stage(config, NORMAL, str(tmp_path / 'full'))

  def preempt_mid_epoch(step):
    if step == 5:
      engine.request_preemption()

  killed_dir = str(tmp_path / 'killed')
  first = engine.run_stage(config, NORMAL, killed_dir,
                                   step_hook=preempt_mid_epoch)
  assert first == {'status': 'preempted', 'step': 5}
  assert engine.read_result(killed_dir) is None
  resumed = engine.run_stage(config, NORMAL, killed_dir)

  for key in ('best', 'last', 'best_epoch', 'steps', 'epochs', 'host'):
    assert resumed[key] == full[key], key
  assert full['host'] == runtime.host()
  full_vars, full_meta = _params(str(tmp_path / 'full'))
  resumed_vars, resumed_meta = _params(killed_dir)
  assert full_meta == resumed_meta
  for a, b in zip(jax.tree_util.tree_leaves(full_vars),
                  jax.tree_util.tree_leaves(resumed_vars)):
    np.testing.assert_array_equal(a, b)
  # A finished stage is skipped: the same result comes back from disk.
  assert engine.run_stage(config, NORMAL, killed_dir) == resumed

  # A SIGTERM during a stage's set-up is kept: its first step checkpoints
  # and returns; the rerun ends as the uninterrupted run.
  early_dir = str(tmp_path / 'early')
  engine.request_preemption()
  assert engine.run_stage(config, NORMAL, early_dir) == {
      'status': 'preempted', 'step': 1}
  assert not engine.preemption_requested()
  early = engine.run_stage(config, NORMAL, early_dir)
  for key in ('best', 'last', 'best_epoch', 'steps', 'epochs'):
    assert early[key] == full[key], key


def test_a_resume_on_other_devices_or_another_cpu_is_named():
  meta = {'devices': 1, 'cpu': 'EPYC (AVX2)'}
  assert engine.resume_notes(meta, 1, 'EPYC (AVX2)') == []
  assert engine.resume_notes({}, 4, 'any') == []  # older checkpoints
  notes = engine.resume_notes(meta, 4, 'Xeon (AVX-512)')
  assert len(notes) == 2
  assert notes[0].startswith('was saved on 1 devices and resumes on 4')
  assert 'a EPYC (AVX2) and resumes on a Xeon (AVX-512)' in notes[1]
  assert engine.resume_notes({'chip': 'H100'}, 1, 'H100') == []


def test_an_accelerator_run_is_named_by_its_chip_not_the_host_cpu():
  gpu = {'backend': 'gpu', 'device_kind': 'NVIDIA H100', 'cpu': 'Xeon'}
  assert runtime.chip(gpu) == 'NVIDIA H100'
  assert runtime.chip({**gpu, 'backend': 'cpu', 'device_kind': 'cpu'}) == (
      'Xeon')


def test_cpu_model_names_the_widest_vector_isa(tmp_path):
  info = tmp_path / 'cpuinfo'
  info.write_text('processor\t: 0\nmodel name\t: AMD EPYC\n'
                  'flags\t\t: fpu sse avx avx2 avx512f\n\n'
                  'processor\t: 1\nmodel name\t: AMD EPYC\n')
  assert runtime.cpu_model(str(info)) == 'AMD EPYC (AVX-512)'
  info.write_text('model name\t: Some CPU\nflags\t: sse avx avx2\n')
  assert runtime.cpu_model(str(info)) == 'Some CPU (AVX2)'
  assert runtime.cpu_model(str(tmp_path / 'absent'))  # platform's words


def test_kd_stage_reads_frozen_teacher_and_records_its_accuracy(tmp_path):
  config = _config(num_epochs=1)
  teacher = engine.run_stage(config, NORMAL,
                                     str(tmp_path / 'normal'))
  spec = _kd_spec('_tiny_resnet', str(tmp_path / 'normal'))
  result = engine.run_stage(config, spec, str(tmp_path / 'kd'))
  assert result['status'] == 'complete'
  assert result['frozen_accuracy'] == pytest.approx(teacher['best'])
  with open(tmp_path / 'kd' / engine.RESULT_FILE) as f:
    assert json.load(f)['stage'] == 'kd_normal/_tiny_cnn'


@pytest.mark.skipif(not os.path.exists('/proc/self/maps'),
                    reason='counts Linux memory mappings')
def test_stages_release_their_compiled_programs(tmp_path, monkeypatch):
  """A long process (an experiment's ~100 stages) must not keep every
  stage's compiled code mapped: it ran out of memory mappings before."""
  monkeypatch.setattr(engine, 'RELEASE_AT', 0.0)  # as if at the limit
  config = _config(num_epochs=1, num_train_steps=2)
  engine.run_stage(config, NORMAL, str(tmp_path / 'warm'))
  before = engine._memory_mappings()[0]
  for i in range(2):
    engine.run_stage(config, NORMAL, str(tmp_path / f'again{i}'))
  # Each stage kept ~550 mappings before the fix; now a few at most.
  assert engine._memory_mappings()[0] - before < 150


def test_nonfinite_loss_stops_stage_and_keeps_last_good_checkpoint(tmp_path):
  # A learning rate this large makes the loss overflow within two epochs.
  config = _config(num_epochs=4)
  with config.unlocked():
    config.optim.sgd.learning_rate = 1e12
  stage_dir = str(tmp_path / 'nan')
  result = engine.run_stage(config, NORMAL, stage_dir)
  assert result['status'] == 'nonfinite'
  assert result['nonfinite_step'] >= 0
  assert result['steps'] < 4 * 8
  # Whatever was saved before holds finite numbers only.
  if result['best'] is not None:
    variables, _ = _params(stage_dir)
    for leaf in jax.tree_util.tree_leaves(variables):
      assert np.all(np.isfinite(leaf))


def test_bad_frozen_checkpoint_is_a_clear_error(tmp_path):
  config = _config(num_epochs=1)
  garbage = tmp_path / 'garbage'
  garbage.mkdir()
  (garbage / 'not_a_checkpoint.txt').write_text('hello')
  spec = _kd_spec('_tiny_resnet', str(garbage))
  with pytest.raises(FileNotFoundError, match='no finished checkpoint'):
    engine.run_stage(config, spec, str(tmp_path / 'kd'))
  assert (garbage / 'not_a_checkpoint.txt').read_text() == 'hello'

  # A teacher of another architecture is refused by name.
  engine.run_stage(config, NORMAL, str(tmp_path / 'normal'))
  spec = _kd_spec('_tiny_preresnet', str(tmp_path / 'normal'))
  with pytest.raises(ValueError, match="arch='_tiny_resnet'"):
    engine.run_stage(config, spec, str(tmp_path / 'kd2'))
  assert os.path.exists(tmp_path / 'normal' / engine.RESULT_FILE)


def test_batch_size_that_does_not_divide_is_refused(tmp_path):
  config = _config(batch_size=10)
  with pytest.raises(ValueError, match='batch_size=10 does not divide'):
    engine.run_stage(config, NORMAL, str(tmp_path / 'x'))
