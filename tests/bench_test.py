"""nasty_jax.bench runs at tiny sizes and writes the documented JSON.

Smoke tests only: nothing here asserts a speed.
"""

import json
import os
import subprocess
import sys

import pytest
from absl import flags

from nasty_jax import runtime
from nasty_jax.bench import cases
from nasty_jax.bench import measure
from nasty_jax.bench import report

STEP_FIELDS = {
    'arch': str, 'mode': str, 'batch_size': int, 'dtype': str,
    'parallelism': str, 'image_size': int, 'devices': int,
    'compile_s': float, 'step_ms': float, 'step_ms_min': float,
    'step_ms_max': float, 'host_ms_per_step': float, 'cpu_ms_per_step': float,
    'images_per_s': float, 'donated': bool, 'loss': float,
    'timed_steps': int}
EPOCH_FIELDS = {
    'arch': str, 'mode': str, 'batch_size': int, 'input': str,
    'dataset': str, 'steps': int, 'setup_s': float, 'epoch_s': float,
    'images_per_s': float, 'step_images_per_s': float, 'vs_step': float,
    'cpu_ms_per_step': float, 'loss': float}
TINY = dict(steps=1, repeats=2, warmup=0, epoch_steps=2, num_train=32)


def _check_fields(row, fields):
  for name, kind in fields.items():
    assert isinstance(row[name], kind), (name, row[name])


def test_run_writes_every_table(tmp_path):
  path = tmp_path / 'out' / 'bench.json'
  opts = cases.Options(
      cases=[cases.Case('_tiny_cnn', 'nasty', 8, 'float32', 'jit',
                        epoch_inputs=('device',)),
             cases.Case('_tiny_cnn', 'nasty', 8, 'float32', 'pmap')],
      targets=True, json_path=str(path), **TINY)
  results = measure.run(opts)
  assert json.loads(path.read_text()) == json.loads(json.dumps(results))
  assert results['meta']['backend'] == 'cpu'
  assert results['meta']['cpu'] == runtime.cpu_model()
  assert results['meta']['devices'] == 4  # conftest's fake devices.
  assert len(results['steps']) == 2 and len(results['epochs']) == 1
  for row in results['steps']:
    _check_fields(row, STEP_FIELDS)
    assert row['frozen_arch'] == '_tiny_cnn'  # The nasty default.
    assert row['donated'], 'the state was not donated to the step'
    assert row['step_ms_min'] <= row['step_ms'] <= row['step_ms_max']
    assert row['loss'] == row['loss'], 'NaN loss'
  epoch = results['epochs'][0]
  _check_fields(epoch, EPOCH_FIELDS)
  assert (epoch['input'], epoch['steps']) == ('device', 2)
  # The epoch reused the step's program: no recompile for real batches.
  assert epoch['compiled_programs'] in (None, 1)
  names = {r['ratio'] for r in results['ratios']}
  assert names == {'pmap / jit step', 'device epoch / step'}
  for row in results['ratios']:
    assert row['value'] > 0 and row['value_cpu'] > 0
  targets = {t['target']: t for t in results['targets']}
  assert len(targets) == len(cases.H100_TARGETS)
  epoch_target = next(t for t in targets.values() if t['rows'])
  assert epoch_target['value'] == epoch['vs_step']
  text = report.report(results)
  for title in ('Train steps', 'Full epochs', 'Ratios', 'Targets'):
    assert title in text


def test_cli_runs_without_tensorflow_tfds_or_grain(tmp_path):
  """The GPU machine has none of them: block their import and run."""
  path = tmp_path / 'cli.json'
  code = (
      'import runpy, sys\n'
      'class Block:\n'
      '  def find_spec(self, name, path=None, target=None):\n'
      '    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets",\n'
      '                              "grain"):\n'
      '      raise ImportError("blocked: " + name)\n'
      'sys.meta_path.insert(0, Block())\n'
      f'sys.argv = ["bench", "--archs=_tiny_mlp", "--modes=normal,kd",\n'
      f'            "--dtypes=bfloat16", "--batch_sizes=8",\n'
      f'            "--steps=1", "--repeats=1", "--warmup=0",\n'
      f'            "--breakdown", "--epoch_inputs=device",\n'
      f'            "--epoch_steps=1", "--num_train=16",\n'
      f'            "--json={path}"]\n'
      'runpy.run_module("nasty_jax.bench", run_name="__main__")\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  done = subprocess.run([sys.executable, '-c', code], env=env, cwd=root,
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  for title in ('Train steps', 'Full epochs', 'Where a step goes',
                'kd / normal step'):
    assert title in done.stdout
  results = json.loads(path.read_text())
  assert [r['mode'] for r in results['steps']] == ['normal', 'kd']
  assert {r['part'] for r in results['breakdown']} == {
      'forward (eval, = frozen net)', 'forward (train) + loss',
      'forward + backward'}
  for row in results['breakdown']:
    assert row['ms'] > 0 and row['mode'] == 'normal'


def _options(argv):
  # pylint: disable-next=g-import-not-at-top
  from nasty_jax.bench import __main__ as cli
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['bench', *argv])
  try:
    return cli.options()
  finally:
    flags.FLAGS.unparse_flags()


def test_presets_and_flags():
  opts = _options(['--preset=h100', '--steps=5'])
  assert opts.targets and opts.steps == 5 and opts.repeats == 3
  assert {(c.arch, c.image_size) for c in opts.cases} == {
      ('resnet18', 32), ('resnext29', 64)}
  assert any(c.epoch_inputs == ('device',) for c in opts.cases)
  cpu = _options(['--preset=cpu'])
  assert cpu.dataset == 'digits'
  assert {c.frozen for c in cpu.cases if c.mode == 'kd'} == {'resnet18'}
  grid = _options(['--archs=resnet18,preresnet20', '--modes=nasty',
                           '--dtypes=float32', '--parallelism=jit,pmap',
                           '--batch_sizes=64,128', '--epoch_inputs=stream',
                           '--epoch_modes=nasty'])
  assert len(grid.cases) == 8 and grid.dataset == 'digits'
  # Epochs are timed once per configuration: under the first parallelism.
  assert sum(bool(c.epoch_inputs) for c in grid.cases) == 4


def test_bad_input_says_what_is_valid():
  with pytest.raises(ValueError, match='Unknown arch.*resnet18'):
    cases.Case('resnet19', 'normal', 8)
  with pytest.raises(ValueError, match='Unknown mode.*normal, nasty, ce, kd'):
    cases.Case('resnet18', 'student', 8)
  with pytest.raises(ValueError, match='Unknown dtype.*bfloat16'):
    cases.Case('resnet18', 'normal', 8, 'float16')
  with pytest.raises(ValueError, match='Unknown epoch input.*device'):
    cases.Case('resnet18', 'normal', 8, epoch_inputs=('disk',))
  with pytest.raises(ValueError, match='Unknown preset.*cpu, reference, h100'):
    cases.preset('tpu')
  with pytest.raises(ValueError, match='does not divide over 4 devices'):
    measure.run(cases.Options(cases=[cases.Case('_tiny_resnet', 'normal', 6)]))
  with pytest.raises(ValueError, match='--dataset=digits'):
    measure.run(cases.Options(cases=[cases.Case(
        '_tiny_mlp', 'normal', 8, epoch_inputs=('stream',))]))
  with pytest.raises(ValueError, match='Nothing to measure'):
    measure.run(cases.Options(cases=[]))


def test_side_by_side_with_a_reference_json(tmp_path):
  torch_json = tmp_path / 'torch.json'
  torch_json.write_text(json.dumps({
      'meta': {'torch': '0.0', 'threads': 2, 'allocator': 'glibc'},
      'steps': [{'arch': '_tiny_cnn', 'mode': 'normal', 'batch_size': 8,
                 'images_per_s': 100.0}]}))
  results = measure.run(cases.Options(
      cases=[cases.Case('_tiny_cnn', 'normal', 8)],
      reference_json=str(torch_json), num_devices=1, **TINY))
  (row,) = results['versus_reference']
  assert row['torch_images_per_s'] == 100.0
  assert row['ratio'] == pytest.approx(results['steps'][0]['images_per_s']
                                       / 100.0)
  assert 'Side by side with the PyTorch reference' in report.report(results)


def test_one_convolution_benchmark_against_a_reference_json(tmp_path):
  """bench.convs times the shapes of a torch_conv_bench JSON and divides
  each part's time into torch's; its kernel gradient is the models' one."""
  # pylint: disable-next=g-import-not-at-top
  import numpy as np
  from nasty_jax.bench import convs
  assert convs.parse('32x16x64s2') == (32, 16, 64, 2)
  with pytest.raises(ValueError, match='HxCinxCoutsS'):
    convs.parse('32x16')
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 6, 6, 3), np.float32)
  k = rng.standard_normal((3, 3, 3, 5), np.float32)
  g = rng.standard_normal((4, 3, 3, 5), np.float32)
  fns = convs.programs(2)
  np.testing.assert_allclose(fns['kernel_grad'](x, k, g),
                             fns['kernel_grad_one_call'](x, k, g),
                             rtol=1e-5, atol=1e-5)
  reference = {'meta': {'batch_size': 2}, 'convs': [
      {'shape': '6x3x5s1', 'forward_ms': 1.0, 'input_grad_ms': 2.0,
       'kernel_grad_ms': 3.0}]}
  path = tmp_path / 'torch.json'
  path.write_text(json.dumps(reference))
  out = tmp_path / 'convs.json'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(
      [sys.executable, '-m', 'nasty_jax.bench.convs', f'--reference_json={path}',
       '--repeats=1', f'--json={out}'], cwd=root, capture_output=True,
      text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert '6x3x5s1' in done.stdout and 'all ratio' in done.stdout
  (row,) = json.loads(out.read_text())['convs']
  assert row['gflop'] == pytest.approx(2 * 2 * 36 * 3 * 5 * 9 / 1e9)
  for part in convs.PARTS:
    assert row[f'{part}_ratio'] == pytest.approx(
        reference['convs'][0][f'{part}_ms'] / row[f'{part}_ms'])
  assert row['ratio'] == pytest.approx(6.0 / row['xla_ms'])
