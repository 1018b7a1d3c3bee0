"""The whole pipeline and the config files: stages, results, selectors."""

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import cifar10
from configs import cifar100
from configs import digits
from configs import tinyimagenet
from nasty_jax import pipeline
from nasty_jax import programs
import fake_data
import tfds_mock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_digits(arg='_tiny_resnet,students.archs=_tiny_cnn+_tiny_preresnet'):
  config = digits.get_config(arg)
  with config.unlocked():
    config.batch_size = 16
    config.dataset.subset_percent = 0.1
    config.num_epochs = 1
    config.max_eval_batches = 2
  return config


def test_pipeline_runs_every_stage_writes_tables_and_skips_when_done(
    tmp_path, monkeypatch):
  config = _tiny_digits()
  results = pipeline.run(config, str(tmp_path))
  names = ['normal', 'nasty'] + [f'{role}/{arch}'
                                 for arch in ('_tiny_cnn', '_tiny_preresnet')
                                 for role in ('baseline', 'ls', 'kd_normal',
                                              'kd_nasty')]
  assert sorted(results['stages']) == sorted(names)
  with open(tmp_path / 'results.json') as f:
    on_disk = json.load(f)
  assert on_disk['dataset'] == 'digits'
  assert on_disk['teacher_arch'] == '_tiny_resnet'
  assert on_disk['seed'] == 0
  for teacher in ('normal', 'nasty'):
    assert set(on_disk['teachers'][teacher]) >= {'best', 'last'}
  for arch in ('_tiny_cnn', '_tiny_preresnet'):
    for role in ('baseline', 'ls', 'kd_normal', 'kd_nasty'):
      entry = on_disk['students'][arch][role]
      assert 0 <= entry['best'] <= 100 and 0 <= entry['last'] <= 100
  markdown = (tmp_path / 'results.md').read_text()
  assert '| Student baseline |' in markdown
  assert '_tiny_resnet (nasty)' in markdown and 'Last epoch' in markdown
  # The nasty stage used the normal teacher as its adversary.
  assert results['stages']['nasty']['frozen_checkpoint'] == str(
      tmp_path / 'normal')

  # Everything is complete: a rerun trains nothing.
  def fail(*_, **__):
    raise AssertionError('a finished stage ran again')
  monkeypatch.setattr(programs, 'create_model', fail)
  again = pipeline.run(config, str(tmp_path))
  assert again['students'] == results['students']


def test_stage_selection_and_missing_dependency(tmp_path):
  config = _tiny_digits()
  with config.unlocked():
    config.stages = 'kd_nasty/_tiny_cnn'
  with pytest.raises(ValueError, match='needs the finished stage nasty'):
    pipeline.run(config, str(tmp_path))
  with config.unlocked():
    config.stages = 'normal,baseline'
  results = pipeline.run(config, str(tmp_path))
  assert sorted(results['stages']) == ['baseline/_tiny_cnn',
                                       'baseline/_tiny_preresnet', 'normal']
  assert 'kd_nasty/_tiny_cnn' in results['incomplete']
  with config.unlocked():
    config.stages = 'teacher'
  with pytest.raises(ValueError,
                     match='Valid: all, teachers, students, normal'):
    pipeline.run(config, str(tmp_path))


def test_teacher_from_existing_checkpoint_skips_its_stage(tmp_path):
  config = _tiny_digits('_tiny_resnet,students.archs=_tiny_cnn')
  with config.unlocked():
    config.stages = 'normal'
  pipeline.run(config, str(tmp_path / 'first'))
  with config.unlocked():
    config.stages = 'all'
    config.teacher.checkpoint = str(tmp_path / 'first' / 'normal')
  planned = [s.spec.name for s in pipeline.plan(config, str(tmp_path / 'b'))]
  assert 'normal' not in planned and 'nasty' in planned


@pytest.mark.parametrize('module,arg', [
    (cifar10, None), (cifar10, 'resnet34'), (cifar100, 'resnext29'),
    (tinyimagenet, 'resnext29'), (digits, None)])
def test_every_config_loads(module, arg):
  config = module.get_config(arg)
  assert config.teacher.arch == (arg or config.teacher.arch)
  assert pipeline.student_archs(config)
  if module is tinyimagenet:
    assert config.dataset.image_size == 64 and config.nasty.omega == 0.01
  if arg == 'resnet34':
    assert pipeline.student_archs(config) == ['resnet18']
    assert config.nasty.omega == 0.04 and config.nasty.temperature == 4.0


@pytest.mark.parametrize('arg,message', [
    ('resnet19', 'Unknown architecture'),
    ('resnet18,kd.tau=4', "Unknown config key 'kd.tau'"),
    ('resnet18,nasty.omega=abc', "Bad value for 'nasty.omega'"),
    ('resnet18,students.archs=net+vgg', "Unknown architecture 'vgg'"),
    ('resnet18,resnet50', 'only the first item'),
])
def test_bad_config_arguments_are_clear_errors(arg, message):
  with pytest.raises(ValueError, match=message):
    cifar10.get_config(arg)


def test_reference_params_json_is_reachable():
  # CIFAR100/kd_nasty_resnet50/shufflenetv2: T 20, alpha 0.9, SGD 200 epochs.
  config = cifar100.get_config('resnet50,students.archs=shufflenetv2')
  assert config.kd.temperature == 20.0 and config.kd.alpha == 0.9
  assert config.optim.sgd.milestones == (60, 120, 160)
  assert config.optim.sgd.gamma == 0.2 and config.optim.sgd.num_epochs == 200
  assert config.nasty.omega == 0.005
  # CIFAR10/kd_normal_resnet18/cnn: Adam 1e-3, 100 epochs, T 4.
  config = cifar10.get_config('resnet18,students.archs=net')
  assert programs.optimizer_config(config, 'net').name == 'adam'
  assert programs.optimizer_config(config, 'net').num_epochs == 100
  assert programs.optimizer_config(config, 'preresnet20').num_epochs == 160


def test_default_command_end_to_end_shortened(tmp_path):
  workdir = tmp_path / 'run'
  cmd = [sys.executable, '-m', 'nasty_jax.main',
         '--config=configs/digits.py:runlocal,students.archs=net',
         f'--workdir={workdir}', '--config.num_devices=1']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Student baseline' in proc.stderr
  results = json.loads((workdir / 'results.json').read_text())
  assert results['teacher_arch'] == 'preresnet20'
  assert set(results['students']) == {'net'}


@pytest.mark.parametrize('module', [cifar10, cifar100, tinyimagenet, digits])
def test_every_config_runs_two_steps_runlocal(module, tmp_path):
  config = module.get_config('runlocal')
  context = contextlib.nullcontext()
  with config.unlocked():
    config.stages = 'normal'
    if module is tinyimagenet:
      # A 3-class Tiny-ImageNet in the official layout, made here.
      fake_data.make_tiny_imagenet(str(tmp_path / 'tiny'),
                                   np.random.default_rng(0))
      config.dataset.manual_dir = str(tmp_path / 'tiny')
      config.dataset.data_dir = str(tmp_path / 'tfds')
      config.dataset.num_classes = 3
      config.batch_size = 4
    elif module is not digits:
      context = tfds_mock.mock_tfds(24)
  with context:
    results = pipeline.run(config, str(tmp_path / 'run'))
  normal = results['stages']['normal']
  assert normal['steps'] == 2 and normal['status'] == 'complete'
  assert normal['arch'] == config.teacher.arch


@pytest.mark.parametrize('key, value, message', [
    ('optim.sgd.num_epochs', 0, 'must be at least 1.'),
    ('optim.adam.num_epochs', -1, 'must be at least 1.'),
    ('deepinversion.iterations', 0, 'must be at least 1.'),
    ('num_epochs', 0, "or -1 for the optimiser's own."),
    ('num_train_steps', -5, 'or -1 for no limit.')])
def test_a_count_that_cannot_run_is_refused_by_name(key, value, message):
  for config in (digits.get_config(), cifar10.get_config()):
    pipeline.check_counts(config)  # Every shipped default runs.
  config = digits.get_config()
  node = config
  *groups, last = key.split('.')
  for group in groups:
    node = node[group]
  node[last] = value
  with pytest.raises(ValueError) as e:
    pipeline.plan(config, '/nowhere')
  assert str(e.value) == f'--config.{key}={value}: ' + (
      message if message.startswith('must') else
      f'must be at least 1, {message}')
