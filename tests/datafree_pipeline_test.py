"""The data-free stages in the pipeline: plan, selectors, Table 6, Figure 6."""

import json
import os

import numpy as np

from configs import cifar10
from configs import cifar100
from configs import digits
from nasty_jax import pipeline
from nasty_jax.data_free import deepinversion


def _tiny_digits():
  return digits.get_config(
      '_tiny_resnet,students.archs=_tiny_cnn,batch_size=16,'
      'dataset.subset_percent=0.1,num_epochs=1,max_eval_batches=2,'
      'stages=normal+nasty+dafl+deepinversion,'
      'dafl.enabled=true,dafl.student_arch=_tiny_cnn,dafl.num_epochs=2,'
      'dafl.iters_per_epoch=2,dafl.batch_size=16,dafl.latent_dim=12,'
      'deepinversion.enabled=true,deepinversion.batch_size=20,'
      'deepinversion.iterations=3,deepinversion.student_arch=_tiny_cnn,'
      'deepinversion.kd_epochs=1,deepinversion.kd_batches=2')


def test_table6_configs_enable_both_attacks():
  for module in (cifar10, cifar100):
    config = module.get_config('resnet34')
    assert config.dafl.enabled and config.deepinversion.enabled
    assert config.dafl.student_arch == 'resnet18'
    names = [s.spec.name for s in pipeline.plan(config, '/w')]
    assert names[-4:] == ['dafl/normal', 'dafl/nasty', 'deepinversion/normal',
                          'deepinversion/nasty']
  assert (cifar100.get_config('resnet34').dafl.oh,
          cifar10.get_config('resnet34').dafl.oh) == (0.5, 0.05)
  config = cifar10.get_config('resnet18')
  assert not config.dafl.enabled and not config.deepinversion.enabled
  assert not any(s.spec.method in ('dafl', 'deepinversion')
                 for s in pipeline.plan(config, '/w'))


def test_selectors_and_teacher_dependencies():
  config = _tiny_digits()
  stages = pipeline.plan(config, '/w')
  by_name = {s.spec.name: s for s in stages}
  assert by_name['dafl/nasty'].needs == ('nasty',)
  assert by_name['deepinversion/normal'].needs == ('normal',)
  assert by_name['dafl/nasty'].spec.frozen[0].checkpoint == '/w/nasty'
  assert by_name['dafl/normal'].spec.arch == '_tiny_cnn'
  # 'students' keeps meaning the KD students, not the data-free ones.
  chosen = [s.spec.name for s in pipeline.select(stages, 'students')]
  assert chosen == ['baseline/_tiny_cnn', 'ls/_tiny_cnn',
                    'kd_normal/_tiny_cnn', 'kd_nasty/_tiny_cnn']
  chosen = [s.spec.name for s in pipeline.select(stages, 'dafl,nasty')]
  assert chosen == ['nasty', 'dafl/normal', 'dafl/nasty']


def test_pipeline_runs_the_data_free_stages_and_writes_table6(tmp_path):
  config = _tiny_digits()
  results = pipeline.run(config, str(tmp_path))
  for name in ('dafl/normal', 'dafl/nasty', 'deepinversion/normal',
               'deepinversion/nasty'):
    assert results['stages'][name]['status'] == 'complete', name
  dafl = results['data_free']['dafl']
  for role in ('normal', 'nasty'):
    assert 0 <= dafl[role]['best'] <= 100
    assert dafl[role]['teacher'] == results['teachers'][role]['best']
    assert dafl[role]['student_arch'] == '_tiny_cnn'
  inversion = results['data_free']['deepinversion']
  assert inversion['comparison'] == pipeline.COMPARISON_FILE
  assert os.path.getsize(tmp_path / pipeline.COMPARISON_FILE) > 0
  for role in ('normal', 'nasty'):
    stage = tmp_path / 'deepinversion' / role
    with open(stage / 'result.json') as f:
      result = json.load(f)
    assert result['kd']['synthetic_images'] == 40
    assert 0 <= result['best'] <= 100
    with np.load(stage / deepinversion.IMAGES_FILE) as data:
      assert data['images'].shape == (20, 32, 32, 3)
      assert list(data['targets'][:12]) == list(range(10)) + [0, 1]
      assert data['curve_loss'].shape == (3,)
    assert (stage / deepinversion.GRID_FILE).exists()
    assert inversion[role]['grid'] == f'deepinversion/{role}/grid.png'

  markdown = (tmp_path / 'results.md').read_text()
  assert '## Data-free KD: DAFL (Table 6)' in markdown
  assert '| Teacher network | Teacher accuracy | DAFL _tiny_cnn (best) |' in (
      markdown)
  table6 = markdown.split('## Data-free KD')[1].split('## ')[0]
  nasty_row = next(line for line in table6.splitlines()
                   if line.startswith('| _tiny_resnet (nasty) |'))
  # Teacher, best and last, each with its change against the normal row.
  assert nasty_row.count(' (+') + nasty_row.count(' (-') == 3
  assert f'({pipeline.COMPARISON_FILE})' in markdown
