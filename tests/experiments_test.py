"""The experiment registry, runner and report, and Figures 1 and 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import registry
from nasty_jax import cli
from nasty_jax import experiment_report
from nasty_jax import experiment_schema as schema
from nasty_jax import experiments
from nasty_jax import figures
from nasty_jax import pipeline

# Every table row group and ablation the paper reports, and the CPU runs.
EXPECTED = (
    ['cifar10_table1', 'cifar10_table4', 'table5', 'cifar10_table6',
     'cifar100_table6', 'cifar100_teacher_self', 'tinyimagenet_teacher_self',
     'cifar10_fig3', 'cifar100_fig3', 'cifar10_fig4', 'cifar100_fig4',
     'cifar10_fig5a', 'cifar10_fig5b', 'cifar10_table1_short', 'cifar10_cpu',
     'cifar10_cpu_fig3',
     'digits_table1', 'digits_fig3', 'digits_fig4', 'digits_fig5a',
     'digits_fig5b', 'digits_table6', 'benchmark_digits', 'digits_audit',
     'benchmark_cifar10_cpu']
    + [f'cifar100_table2_{t}' for t in ('resnet18', 'resnet50', 'resnext29')]
    + [f'tinyimagenet_table3_{t}'
       for t in ('resnet18', 'resnet50', 'resnext29')])

TINY = ('_tiny_resnet,students.archs=_tiny_cnn,batch_size=16,'
        'dataset.subset_percent=0.1,num_epochs=1,max_eval_batches=2')


def test_registry_is_complete_and_every_config_loads():
  entries = experiments.load_registry()
  assert sorted(entries) == sorted(EXPECTED)
  # Loads every run's config with its overrides, checks the stage
  # references, report cells and shared folders.
  experiments.check_registry(entries)
  for entry in entries.values():
    assert entry.tables, entry.name
    if '_fig' in entry.name:
      assert entry.plots, entry.name


def test_table6_reads_the_data_free_stages_and_paper_numbers():
  entry = experiments.load_registry()['cifar10_table6']
  keys = {c.key: c.paper for c in entry.cells()}
  assert keys == {'normal': 95.42, 'nasty': 94.54, 'dafl/normal': 92.49,
                  'dafl/nasty': 86.15}
  config = experiments.run_config(entry.runs[0], '/w', 0)
  names = [s.spec.name for s in pipeline.select(
      pipeline.plan(config, '/w'), config.stages)]
  assert 'dafl/normal' in names and 'dafl/nasty' in names


def test_sweep_points_share_the_base_teachers():
  entry = experiments.load_registry()['cifar10_fig4']
  base, *points = entry.runs
  assert base.name == 'cifar10/resnet18'
  flags = experiments.flag_overrides(points[0], '/w', 2)
  assert '--config.teacher.checkpoint=/w/cifar10/resnet18/seed2/normal' in (
      flags)
  assert '--config.nasty.checkpoint=/w/cifar10/resnet18/seed2/nasty' in flags
  config = experiments.run_config(points[0], '/w', 2)
  assert config.kd.temperature == 1.0 and config.seed == 2
  # The base run's own tau (4) is a plotted point, not retrained.
  assert 4 in entry.plots[0].xs
  assert not any(p.name.endswith('temperature4') for p in points)


def test_cpu_omega_points_change_only_the_nasty_teacher():
  """cifar10_cpu_fig3's ω point reuses cifar10_cpu's normal teacher, and its
  KD students read its own nasty teacher; nothing else differs."""
  entries = experiments.load_registry()
  entry = entries['cifar10_cpu_fig3']
  base_students = entries['cifar10_cpu'].runs[1]
  teachers, students = entry.runs[2:]
  assert teachers.stages == 'nasty' and teachers.seed == 0
  flags = experiments.flag_overrides(students, '/w', 1)
  assert ('--config.teacher.checkpoint=/w/cifar10_cpu/teachers/seed0/normal'
          in flags)
  assert ('--config.nasty.checkpoint=/w/cifar10_cpu/teachers_omega0.06/'
          'seed0/nasty') in flags
  config = experiments.run_config(students, '/w', 1)
  base = experiments.run_config(base_students, '/w', 1)
  assert config.nasty.omega == 0.06 and base.nasty.omega == 0.1
  for group in ('optim', 'kd', 'dataset'):
    assert config[group].to_dict() == base[group].to_dict(), group
  assert {(c.run, c.versus.key) for c in entry.cells()
          if c.key == 'kd_nasty/net'} == {
              ('cifar10_cpu/students', 'kd_normal/net'),
              ('cifar10_cpu/students_omega0.06', 'kd_normal/net')}
  assert 'against the same student distilled from the normal teacher' in (
      experiment_report._references(entry))


def _tiny_run(name='tiny', **kwargs):
  return schema.Run(name, 'configs/digits.py', TINY, **kwargs)


def test_shared_runs_must_be_defined_identically():
  a = schema.Entry('a', 'A', (_tiny_run(),))
  b = schema.Entry('b', 'B', (_tiny_run(overrides=(
      ('nasty.omega', '0.1'),)),))
  with pytest.raises(ValueError, match="Run 'tiny' differs between a and b"):
    experiments.check_registry({'a': a, 'b': b})


@pytest.mark.parametrize('runs,message', [
    ((_tiny_run('late', overrides=(
        ('teacher.checkpoint', schema.StageRef('tiny', 'normal')),)),
      _tiny_run()), 'not listed before it'),
    ((_tiny_run(stages='normal'), _tiny_run('next', overrides=(
        ('nasty.checkpoint', schema.StageRef('tiny', 'nasty')),))),
     "reads stage 'nasty' of 'tiny'"),
    ((_tiny_run(overrides=(('nasty.bogus', '1'),)),), 'Bad override'),
    ((schema.Run('x', 'configs/nope.py'),), 'No config file'),
])
def test_inconsistent_entries_are_clear_errors(runs, message):
  with pytest.raises(ValueError, match=message):
    experiments.check_entry(schema.Entry('e', 'E', runs))


def test_cli_errors_and_list(capsys):
  with pytest.raises(ValueError, match='Valid: benchmark_cifar10_cpu'):
    experiments.get_entry('table9', experiments.load_registry())
  with pytest.raises(ValueError, match='comma-separated integers'):
    experiments.parse_seeds('0,a')
  with pytest.raises(SystemExit) as code:
    experiments.main(['experiments', 'list', 'cifar10_table4'])
  assert code.value.code == 0
  out = capsys.readouterr().out
  assert ('--config.nasty.adversary_checkpoint='
          'DIR/cifar10/resnet18/seed0/baseline/net') in out


def test_bad_input_is_one_line_and_exit_2(tmp_path):
  def run(*args):
    return subprocess.run(
        [sys.executable, '-m', 'nasty_jax.experiments', *args],
        cwd=experiments.REPO, capture_output=True, text=True, timeout=300)
  committed = os.path.join(RESULTS, 'digits_table1.json')
  (tmp_path / 'a_file').write_text('')
  for args, says, code in (
      (('run', 'table9', f'--workdir={tmp_path / "w"}'), 'Unknown experiment',
       cli.EXIT_BAD_INPUT),
      (('report', 'digits_table1', f'--from_json={tmp_path / "no.json"}'),
       'No file', cli.EXIT_BAD_INPUT),
      (('report', 'digits_table1', f'--workdir={tmp_path / "w"}'),
       'No workdir', cli.EXIT_BAD_INPUT),
      (('report', 'digits_table1', f'--from_json={committed}',
        f'--out={tmp_path / "a_file"}'), 'Could not write the report',
       cli.EXIT_WRITE_FAILED)):
    proc = run(*args)
    assert proc.returncode == code, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith('E')]
    assert len(errors) == 1 and says in errors[0], proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'w').exists()


def _fake_results(accuracies):
  """A results.json holding {key: best accuracy} (last = best - 1)."""
  out = {'teachers': {}, 'students': {}, 'stages': {}}
  for key, value in accuracies.items():
    entry = {'best': value, 'last': value - 1}
    role, _, arch = key.partition('/')
    if key in ('normal', 'nasty'):
      out['teachers'][key] = entry
    elif role in ('baseline', 'kd_normal', 'kd_nasty'):
      out['students'].setdefault(arch, {})[role] = entry
    else:
      out['stages'][key] = entry
  return out


def _sweep(seeds, point_results):
  """A one-point α sweep and fake results: base seeds, the point's seeds."""
  base = schema.Run('base', 'configs/digits.py')
  entry = registry.sweep_entry(
      'sweep', 'A sweep', kind='student', base=base, archs=('net',),
      key='kd.alpha', values=(0.5,), base_value=0.9, xlabel='α')
  results = {
      'base': {s: _fake_results({'normal': 90 + s, 'nasty': 89,
                                 'baseline/net': 80 + 2 * s,
                                 'kd_normal/net': 84, 'kd_nasty/net': 70})
               for s in seeds},
      entry.runs[1].name: point_results,
  }
  return entry, results


def test_report_means_stds_deltas_and_figure(tmp_path):
  entry, results = _sweep((0, 1), {0: _fake_results(
      {'kd_normal/net': 83, 'kd_nasty/net': 75})})
  written = experiment_report.write_report(entry, results, str(tmp_path))
  text = (tmp_path / 'sweep.md').read_text()
  # KD from nasty at the base value: 70 vs baselines 80, 82 (mean 81).
  assert ('| α = 0.9 (base run) | 84.00 ± 0.00 (+3.00) | 70.00 ± 0.00 '
          '(-11.00) |') in text
  # The point has seed 0 only: compared with seed 0's baseline (80).
  assert '| α = 0.5 | 83.00 (+3.00) (n=1) | 75.00 (-5.00) (n=1) |' in text
  assert '| student alone (base run) | 81.00 ± 1.41 | 81.00 ± 1.41 |' in text
  assert "The paper's numbers for this table: n/a" in text
  record = json.loads((tmp_path / 'sweep.json').read_text())
  last = record['tables'][1]
  assert last['kind'] == 'last'
  assert last['rows'][0]['cells'][0]['mean'] == 82.0  # 83 - 1.
  png = tmp_path / 'sweep_figure.png'
  assert str(png) in written and 0 < png.stat().st_size < 200_000


def _numbers(record):
  """A report record without what the registry decides (paper, notes)."""
  return [(t['title'], t['kind'], [
      (r['label'], [None if c is None else
                    {k: v for k, v in c.items() if k != 'paper'}
                    for c in r['cells']]) for r in t['rows']])
          for t in record['tables']], record['seeds'], record['plots']


def test_report_redrawn_from_its_json(tmp_path):
  entry, results = _sweep((0, 1, 2), {0: _fake_results(
      {'kd_normal/net': 83}), 1: {}})
  first = tmp_path / 'first'
  experiment_report.write_report(entry, results, str(first))
  record = json.loads((first / 'sweep.json').read_text())
  # The same entry with a paper number and a new note: only they change.
  table = entry.tables[0]
  paper_rows = tuple(
      (label, tuple(None if c is None else schema.Cell(
          c.run, c.key, 86.64 if c.key == 'baseline/net' else None,
          c.versus) for c in cells)) for label, cells in table.rows)
  redrawn = schema.Entry(
      entry.name, entry.title, entry.runs,
      (schema.Table(table.title, table.columns, paper_rows, table.note),),
      entry.plots, 'A new note.')
  again = experiment_report.results_from_record(redrawn, record)
  assert sorted(again[entry.runs[1].name]) == [0, 1]  # Seed 1 has no cell, still a seed.
  second = tmp_path / 'second'
  written = experiment_report.write_report(redrawn, again, str(second))
  new = json.loads((second / 'sweep.json').read_text())
  assert _numbers(new) == _numbers(record)
  assert new['note'] == 'A new note.'
  text = (second / 'sweep.md').read_text()
  assert '| student alone (base run) | 82.00 ± 2.00 · paper 86.64 |' in text
  assert 'paper n/a' not in (first / 'sweep.md').read_text()
  assert str(second / 'sweep_figure.png') in written
  # Another entry gets the runs it shares, and only them; one sharing no
  # run, or this entry lacking a cell it reads, is an error.
  shared = experiment_report.results_from_record(
      schema.Entry('other', 'O', entry.runs[1:]), record)
  assert list(shared) == [entry.runs[1].name]
  assert shared[entry.runs[1].name] == again[entry.runs[1].name]
  with pytest.raises(ValueError, match="entry 'sweep', which shares no run"):
    experiment_report.results_from_record(
        schema.Entry('other', 'O', (schema.Run('elsewhere', 'c.py', 'net'),)),
        record)
  extra = schema.Entry(entry.name, entry.title, entry.runs, (schema.Table(
      'T', ('x',), (('row', (schema.Cell('base', 'kd_nasty/mlp'),)),)),))
  with pytest.raises(ValueError, match='no values for'):
    experiment_report.results_from_record(extra, record)


def test_report_against_an_unshown_cell_redraws_from_records(tmp_path):
  """A cell measured against one no table shows (an LS bar) keeps its
  change when redrawn from its record alone; another entry's record may
  give a shared run, and two records disagreeing on a value are an error."""
  run, other = schema.Run('r', 'configs/digits.py'), schema.Run(
      'o', 'configs/digits.py')
  bar = schema.Cell('o', 'ls/net')
  entry = schema.Entry('m', 'M', (run, other), (schema.Table(
      'T', ('kd',), (('row', (schema.Cell('r', 'kd_normal/net',
                                          versus=bar),)),)),))
  results = {'r': {0: _fake_results({'kd_normal/net': 84})},
             'o': {0: _fake_results({'ls/net': 80.5})}}
  experiment_report.write_report(entry, results, str(tmp_path / 'a'))
  record = json.loads((tmp_path / 'a' / 'm.json').read_text())
  assert record['tables'][0]['rows'][0]['cells'][0]['versus'] == {
      'run': 'o', 'key': 'ls/net', 'values': {'0': 80.5}}
  again = experiment_report.results_from_record(entry, record)
  experiment_report.write_report(entry, again, str(tmp_path / 'b'))
  text = (tmp_path / 'b' / 'm.md').read_text()
  assert '| row | 84.00 (+3.50) |' in text
  assert ('against its reference (a student against the same student '
          'trained with label smoothing)') in text
  # The same record without the bar's values (as written before): the
  # bar's entry's record supplies them; alone it is an error.
  for table in record['tables']:  # The best and the last epoch's.
    del table['rows'][0]['cells'][0]['versus']
  with pytest.raises(ValueError, match=r"no values for \[\('o', 'ls/net'\)"):
    experiment_report.results_from_record(entry, record)
  bars = schema.Entry('bars', 'B', (other,), (schema.Table(
      'T', ('ls',), (('row', (bar,)),)),))
  experiment_report.write_report(bars, results, str(tmp_path / 'c'))
  bar_record = json.loads((tmp_path / 'c' / 'bars.json').read_text())
  joined = experiment_report.results_from_records(entry, [record, bar_record])
  assert joined == again
  bar_record['tables'][0]['rows'][0]['cells'][0]['values']['0'] = 79.0
  with pytest.raises(ValueError, match='two best values of ls/net'):
    experiment_report.results_from_records(
        entry, [json.loads((tmp_path / 'a' / 'm.json').read_text()),
                bar_record])


def test_committed_reports_redraw_with_the_paper_numbers(tmp_path):
  """The committed digits Table 1 through the command line: same numbers,
  Table 1's CIFAR-10 CNN column as its paper numbers."""
  name = 'digits_table1'
  committed = os.path.join(experiments.REPO, 'experiments', 'results',
                           f'{name}.json')
  subprocess.run(
      [sys.executable, '-m', 'nasty_jax.experiments', 'report', name,
       f'--from_json={committed}', f'--out={tmp_path}'],
      cwd=experiments.REPO, check=True, capture_output=True)
  with open(committed) as f:
    record = json.load(f)
  new = json.loads((tmp_path / f'{name}.json').read_text())
  assert _numbers(new) == _numbers(record)
  text = (tmp_path / f'{name}.md').read_text()
  alone = record['tables'][0]['rows'][0]['cells'][1]
  assert (f'| Student baseline |  | {alone["mean"]:.2f} ± {alone["std"]:.2f}'
          ' · paper 86.64 |') in text
  assert 'paper 95.13' in text and 'paper 82.46' in text
  # With a workdir that holds no seed of it, the same numbers.
  again = tmp_path / 'again'
  subprocess.run(
      [sys.executable, '-m', 'nasty_jax.experiments', 'report', name,
       f'--from_json={committed}', f'--workdir={tmp_path}', f'--out={again}'],
      cwd=experiments.REPO, check=True, capture_output=True)
  assert _numbers(json.loads((again / f'{name}.json').read_text())) == (
      _numbers(record))


RESULTS = os.path.join(experiments.REPO, 'experiments', 'results')
# Committed records that redraw only with another's: the runs they share.
REDRAWN_WITH = {'benchmark_cifar10_cpu': ('cifar10_cpu',)}


def _committed_entries() -> list[str]:
  names = []
  for name in sorted(os.listdir(RESULTS)):
    if name.endswith('.json') and os.path.exists(
        os.path.join(RESULTS, name[:-len('.json')] + '.md')):
      names.append(name[:-len('.json')])
  return names


@pytest.mark.parametrize('name', _committed_entries())
def test_every_committed_report_is_what_its_record_gives(
    name, tmp_path, monkeypatch):
  """Each committed report, redrawn from its own record (and the records
  it shares runs with) under today's registry, is the committed markdown:
  a registry change that a record no longer matches fails here, not in a
  user's `report --from_json` (the plots are not redrawn: same cells)."""
  records = []
  for part in (name,) + REDRAWN_WITH.get(name, ()):
    with open(os.path.join(RESULTS, f'{part}.json')) as f:
      records.append(json.load(f))
  entry = experiments.load_registry()[name]
  monkeypatch.setattr(experiment_report, 'plot_png', lambda *a, **k: None)
  monkeypatch.setattr(experiment_report, 'heatmap_png', lambda *a, **k: None)
  experiment_report.write_report(
      entry, experiment_report.results_from_records(entry, records),
      str(tmp_path))
  with open(os.path.join(RESULTS, f'{name}.md')) as f:
    assert (tmp_path / f'{name}.md').read_text() == f.read()


@pytest.fixture(scope='module')
def tiny_runs(tmp_path_factory):
  """A tiny entry run through the runner (3 short stages)."""
  workdir = str(tmp_path_factory.mktemp('experiments'))
  run = _tiny_run(stages='normal,nasty,kd_nasty')
  table = registry.student_table('Tiny table', 'tiny', 'tiny',
                                 '_tiny_resnet', ('_tiny_cnn',),
                                 {'normal': 99.0})
  plot = schema.Plot('teachers', 'Tiny plot', 'x', (1.0,), (
      schema.Panel('teachers', (schema.Series(
          'nasty', (schema.Cell('tiny', 'nasty'),)),), (
              ('normal', schema.Cell('tiny', 'normal')),)),))
  entry = schema.Entry('tiny', 'Tiny', (run,), (table,), (plot,))
  first = experiments.run_entry(entry, workdir, [0])
  return entry, workdir, first


def test_runner_runs_skips_and_reports(tiny_runs, tmp_path, monkeypatch):
  entry, workdir, first = tiny_runs
  assert first == {'ran': [('tiny', 0)], 'skipped': [], 'preempted': False}
  stage_dir = os.path.join(workdir, 'tiny', 'seed0')
  with open(os.path.join(stage_dir, 'config.json')) as f:
    assert json.load(f)['stages'] == 'normal,nasty,kd_nasty'

  def fail(*_, **__):
    raise AssertionError('a finished run ran again')
  monkeypatch.setattr(pipeline, 'run', fail)
  again = experiments.run_entry(entry, workdir, [0])
  assert again == {'ran': [], 'skipped': [('tiny', 0)], 'preempted': False}

  results = experiments.gather_results(entry, workdir)
  assert list(results['tiny']) == [0]
  written = experiment_report.write_report(entry, results, str(tmp_path))
  text = (tmp_path / 'tiny.md').read_text()
  teachers = results['tiny'][0]['teachers']
  normal, nasty = teachers['normal']['best'], teachers['nasty']['best']
  assert (f'| _tiny_resnet (normal) | {normal:.2f} · paper 99.00 | – · '
          'paper n/a |') in text
  assert f'| _tiny_resnet (nasty) | {nasty:.2f} ({nasty - normal:+.2f})' in (
      text)
  assert (tmp_path / 'tiny_teachers.png').stat().st_size > 0
  assert len(written) == 3


def test_report_joins_a_record_and_a_workdir(tiny_runs, tmp_path):
  """Seeds run later (the workdir's) join a committed report's seeds."""
  entry, workdir, _ = tiny_runs
  experiment_report.write_report(
      entry, experiments.gather_results(entry, workdir), str(tmp_path))
  record = json.loads((tmp_path / 'tiny.json').read_text())
  # The committed record as if it held seed 7 alone, one point higher.
  record['seeds'] = {run: [7] for run in record['seeds']}
  for table in record['tables']:
    for row in table['rows']:
      for cell in row['cells']:
        if cell is not None:
          cell['values'] = {'7': v + 1 for v in cell['values'].values()}
  joined = experiments.merge_results(
      experiment_report.results_from_record(entry, record),
      experiments.gather_results(entry, workdir))
  assert sorted(joined['tiny']) == [0, 7]
  normal = joined['tiny'][0]['teachers']['normal']['best']
  assert joined['tiny'][7]['stages']['normal']['best'] == normal + 1
  # A seed in both is the newer results'.
  again = experiments.merge_results(joined, {'tiny': {7: {'x': 1}}})
  assert again['tiny'][7] == {'x': 1} and joined['tiny'][7] != {'x': 1}


@pytest.mark.parametrize('which,count', [('fig1', 2), ('fig2', 40)])
def test_figures_from_trained_teachers(tiny_runs, tmp_path, which, count):
  _, workdir, _ = tiny_runs
  stage = os.path.join(workdir, 'tiny', 'seed0')
  config = experiments.load_config(f'configs/digits.py:{TINY}')
  out = str(tmp_path / f'{which}.png')
  drawn = figures.make_figure(
      which, config, {r: os.path.join(stage, r) for r in ('normal', 'nasty')},
      out, num_images=count)
  assert len(drawn['labels']) == count
  assert 0 < os.path.getsize(out) < 200_000
  assert all(0 <= a <= 100 for a in drawn['accuracy'].values())


def test_softmax_sharpens_with_lower_temperature():
  logits = np.array([[3.0, 1.0, 0.0]])
  cold, hot = figures.softmax(logits, 1.0), figures.softmax(logits, 4.0)
  np.testing.assert_allclose(cold.sum(), 1.0)
  assert cold[0, 0] > hot[0, 0] > 1 / 3
  np.testing.assert_allclose(
      cold, np.exp(logits) / np.exp(logits).sum(), rtol=1e-12)


def test_defense_matrix_takes_each_defense_from_its_run_against_one_bar():
  """Shared runs: KD from the normal teacher in one run, from a served
  defense in another, both against the same LS students."""
  table = registry.defense_matrix(
      'T', ('normal', 'stingy'),
      {'normal': schema.Cell('teachers', 'normal'),
       'stingy': schema.Cell('bench', 'stingy')},
      (('KD', {'normal': 'students', 'stingy': 'bench'}, 'kd', 'net'),
       ('hard-label', 'bench', 'hard_label', 'net')), bar='students')
  (_, normal_row), (_, stingy_row) = table.rows
  bar = schema.Cell('students', 'ls/net')
  assert normal_row[1] == schema.Cell('students', 'kd_normal/net', None, bar)
  assert stingy_row[1] == schema.Cell('bench', 'kd_stingy/net', None, bar)
  assert stingy_row[2] == schema.Cell('bench', 'hard_label_stingy/net', None,
                                      bar)
  assert stingy_row[0].versus == normal_row[0]


def test_heatmap_tells_a_missing_cell_from_a_missing_bar():
  table = registry.defense_matrix(
      'T', ('normal', 'stingy'),
      {'normal': schema.Cell('teachers', 'normal'),
       'stingy': schema.Cell('bench', 'stingy')},
      (('KD', 'bench', 'kd', 'net'),
       ('hard-label', 'bench', 'hard_label', 'net')), bar='students')
  results = {'teachers': {0: _fake_results({'normal': 90})},
             'bench': {0: _fake_results({'stingy': 90, 'kd_normal/net': 84,
                                         'kd_stingy/net': 79.5})}}
  rows = experiment_report.table_summaries(table, results, 'best')
  columns, matrix, texts = experiment_report.heatmap_cells(table, rows)
  assert [table.columns[i] for i in columns] == ['KD', 'hard-label']
  assert texts.tolist() == [['84.0\nno bar', 'not run'],
                            ['79.5\nno bar', 'not run']]
  assert np.isnan(matrix).all()
  results['students'] = {0: _fake_results({'ls/net': 80})}
  rows = experiment_report.table_summaries(table, results, 'best')
  _, matrix, texts = experiment_report.heatmap_cells(table, rows)
  assert texts.tolist() == [['+4.0', 'not run'], ['-0.5', 'not run']]
  np.testing.assert_array_equal(matrix[:, 0], [4.0, -0.5])
