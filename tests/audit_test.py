"""The audit end to end on tiny data: stages, audit.json, the verdict."""

import json
import os

import pytest

from configs import digits
from nasty_jax import audit
from nasty_jax import convert
from nasty_jax import engine
from nasty_jax import programs

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


def _config(arch='_tiny_resnet'):
  return digits.get_config(
      f'{arch},students.archs=_tiny_cnn,batch_size=16,'
      'dataset.subset_percent=0.1,num_epochs=1,max_eval_batches=2,'
      'log_every_steps=4')


def test_audit_trains_the_bars_and_attacks_and_writes_a_verdict(tmp_path):
  config = _config()
  teacher = str(tmp_path / 'teacher')
  engine.run_stage(config, programs.StageSpec('normal', 'normal',
                                              '_tiny_resnet'), teacher)
  workdir = str(tmp_path / 'audit')
  result = audit.run(config, teacher, workdir,
                     attacks='kd_t4_a0.9+hard_label', students='_tiny_cnn')
  on_disk = json.loads(open(os.path.join(workdir, audit.AUDIT_JSON)).read())
  assert on_disk == json.loads(json.dumps(result))
  entry = on_disk['students']['_tiny_cnn']
  assert set(entry['attacks']) == {'kd_t4_a0.9', 'hard_label'}
  assert entry['ce']['best'] is not None and entry['ls']['best'] is not None
  for attack in entry['attacks'].values():
    assert attack['vs_ls'] == pytest.approx(attack['best']
                                            - entry['ls']['best'])
    assert attack['vs_ce'] == pytest.approx(attack['best']
                                            - entry['ce']['best'])
  assert entry['distillable'] in (True, False)
  assert entry['verdict'].startswith(
      '_tiny_cnn: distillable: ' if entry['distillable'] else
      '_tiny_cnn: undistillable under all 2 attacks')
  assert on_disk['teacher']['arch'] == '_tiny_resnet'
  assert 0 <= on_disk['teacher']['test_accuracy'] <= 100
  assert 'Verdict' in open(os.path.join(workdir, audit.AUDIT_MD)).read()
  # The stages are the engine's: a rerun trains nothing and agrees.
  assert audit.run(config, teacher, workdir, attacks='kd_t4_a0.9+hard_label',
                   students='_tiny_cnn')['students'] == result['students']


def test_a_converted_pytorch_checkpoint_is_audited(tmp_path):
  teacher = str(tmp_path / 'converted')
  convert.convert_checkpoint('preresnet20', 10, os.path.join(
      FIXTURES, 'preresnet20_zipformat.tar'), teacher)
  config = digits.get_config('preresnet20,runlocal,students.archs=_tiny_cnn')
  result = audit.run(config, teacher, str(tmp_path / 'audit'),
                     attacks='hard_label', students='_tiny_cnn')
  assert result['teacher']['arch'] == 'preresnet20'
  entry = result['students']['_tiny_cnn']
  assert entry['attacks']['hard_label']['best'] is not None
  assert entry['distillable'] in (True, False)


def test_bad_attacks_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="'ls' is no attack"):
    audit.attack_names('ls', 10)
  with pytest.raises(ValueError, match='Unknown method'):
    audit.attack_names('kd+nope', 10)
  assert audit.attack_names('kd', 10)[0] == 'kd_t1_a0.5'
  assert audit.attack_names('topk_api', 10) == ['topk2', 'topk5']
  stages, skipped = audit.plan(_config(), str(tmp_path), '_tiny_resnet',
                               str(tmp_path / 'w'), ['skeptical'],
                               ['_tiny_cnn', '_tiny_resnet'])
  assert skipped == [('skeptical', '_tiny_cnn')]
  assert [s.spec.arch for s in stages if s.spec.method == 'skeptical'] == [
      '_tiny_resnet18_self']
