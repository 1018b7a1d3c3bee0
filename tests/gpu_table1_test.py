"""The report of experiments/gpu_table1.py: Table 1's CNN column beside
the paper's, and img/s per stage."""

import json
import os

from experiments import gpu_table1


def _result(best, last, epoch, ips):
  return {'status': 'complete', 'best': best, 'last': last,
          'best_epoch': epoch, 'images_per_second': ips,
          'compile_and_first_interval_seconds': 41.0}


RESULTS = {
    'normal': _result(95.0, 94.9, 150, 61234.0),
    'nasty': _result(94.5, 94.4, 155, 45678.0),
    'baseline/net': _result(86.0, 85.5, 90, 250000.0),
    'kd_normal/net': _result(87.0, 86.5, 95, 120000.0),
    'kd_nasty/net': None,
}


def test_table_has_ours_beside_the_papers_with_the_papers_deltas():
  rows = gpu_table1.table(RESULTS).splitlines()
  assert rows[0] == '| | Teacher | Teacher (paper) | CNN | CNN (paper) |'
  assert rows[2] == '| CNN alone | – | – | 86.00 | 86.64 |'
  assert rows[3] == ('| ResNet-18 normal | 95.00 | 95.13 | 87.00 (+1.00) | '
                     '87.75 (+1.11) |')
  # Unfinished: a dash; the teacher's change is against the normal one.
  assert rows[4] == ('| ResNet-18 nasty | 94.50 (-0.50) | 94.56 (-0.57) | – '
                     '| 82.46 (-4.18) |')
  assert '| 94.90 | 95.13 |' in gpu_table1.table(RESULTS, 'last')


def test_stage_table_shows_img_per_s_and_progress():
  runs = {'kd_nasty/net': {'status': 'stopped', 'epoch': 57, 'epochs': 100,
                           'accuracy': 80.25, 'images_per_second': 90000.0,
                           'wall_s': 61.2},
          'normal': {'status': 'complete', 'wall_s': 170.4}}
  rows = gpu_table1.stage_table(RESULTS, runs).splitlines()
  assert rows[2] == ('| normal | complete | 95.00 (150) | 94.90 | 61,234 | '
                     '41 | 170 |')
  assert rows[4] == ('| kd_nasty/net | stopped at epoch 57/100 | – | 80.25 | '
                     '90,000 | – | 61 |')
  assert rows[6] == ('| baseline/net | complete | 86.00 (90) | 85.50 | '
                     '250,000 | 41 | – |')


def test_report_names_the_schedule():
  paper = gpu_table1.describe_schedule(gpu_table1.MAIN_FLAGS)
  assert paper == ("batch 128, the paper's schedule (teachers 160 epochs, "
                   'CNN 100)')
  tiny = gpu_table1.describe_schedule(
      [*gpu_table1.MAIN_FLAGS, *gpu_table1.TINY_FLAGS])
  assert tiny == ('batch 16, schedule cut to num_epochs=1, '
                  'num_train_steps=2')
  text = gpu_table1.report(RESULTS, {}, {'dtype': 'bfloat16',
                                         'schedule': paper,
                                         'elapsed_s': 499.6})
  assert '4/5 stages finished; bfloat16, batch 128' in text
  assert '; 500 s.' in text
  assert 'bf16 against' not in text
  for parity, words in (
      ({'finite': True, 'relative_error': 0.006, 'ok': True},
       'max logit error 6.0e-03 of the largest, kept'),
      ({'finite': False, 'relative_error': float('inf'), 'ok': False},
       'non-finite logits, so float32'),
      ({'ok': False, 'error': 'exit 1: boom'},
       'the check failed (exit 1: boom), so float32')):
    text = gpu_table1.report(RESULTS, {}, {
        'dtype': 'float32', 'schedule': paper, 'elapsed_s': 1.0,
        'bf16_parity': parity})
    assert f'bf16 against float32 on this device: {words}.' in text


def test_read_results_reads_stage_folders(tmp_path):
  os.makedirs(tmp_path / 'kd_nasty' / 'net')
  (tmp_path / 'kd_nasty' / 'net' / 'result.json').write_text(
      json.dumps(_result(82.0, 81.0, 99, 1.0)))
  (tmp_path / 'normal').mkdir()
  (tmp_path / 'normal' / 'result.json').write_text('{torn')
  got = gpu_table1.read_results(str(tmp_path))
  assert got['kd_nasty/net']['best'] == 82.0
  assert got['normal'] is None and got['nasty'] is None


def test_a_rerun_keeps_the_earlier_runs_dtype(tmp_path):
  assert gpu_table1.earlier_dtype(str(tmp_path)) is None
  (tmp_path / 'config.json').write_text(
      json.dumps({'model': {'dtype': 'float32'}}))
  assert gpu_table1.earlier_dtype(str(tmp_path)) == 'float32'
  (tmp_path / 'config.json').write_text('{torn')
  assert gpu_table1.earlier_dtype(str(tmp_path)) is None
