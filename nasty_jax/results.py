"""results.json and results.md: a pipeline's stages in the paper's shape.

The paper's Tables 1-3 list, per teacher, the teacher's accuracy and every
student's accuracy with its change against the student trained alone. The
reference reports best-on-test epochs (docs/reference.md), so both the
best-epoch and the last-epoch accuracy are kept. Which teachers and which
student methods there are comes from the config and the method registry:
one row per teacher-side method, one table per student-side method that
reads a teacher (KD first, as the paper's tables), one row per student
method that does not (the student alone, with label smoothing). Table 6
lists the DAFL student of every teacher; Figure 6 is the DeepInversion
image grids.
"""

import os
from typing import Any

import ml_collections

from nasty_jax import jsonio
from nasty_jax import methods

KINDS = ('best', 'last')


def _accuracies(result: dict[str, Any] | None) -> dict[str, Any] | None:
  if result is None:
    return None
  out = {k: result.get(k) for k in KINDS}
  out['best_epoch'] = result.get('best_epoch')
  if result.get('status') == 'nonfinite':
    out['nonfinite_step'] = result.get('nonfinite_step')
  return out


def _measured(result: dict[str, Any] | None) -> dict[str, Any] | None:
  """A teacher given as a checkpoint: its accuracy as a stage measured it."""
  if not result or result.get('frozen_accuracy') is None:
    return None
  acc = result['frozen_accuracy']
  return {'best': acc, 'last': acc, 'source': result['frozen_checkpoint']}


def _data_free(stages, results: dict[str, dict[str, Any] | None],
               comparison: str | None) -> dict[str, Any]:
  """Data-free entries by method and teacher (paths relative to workdir)."""
  out = {}
  for stage in stages:
    method = methods.get(stage.spec.method)
    if not method.per_teacher_stage:
      continue
    entries = out.setdefault(method.stage_prefix, {})
    result = results[stage.spec.name]
    entry = _accuracies(result)
    if entry is not None:
      entry.update(stage=stage.spec.name, student_arch=result.get('arch'),
                   teacher=result.get('frozen_accuracy'))
      if 'grid' in result:
        name = stage.spec.name
        entry.update(
            grid=f'{name}/{result["grid"]}',
            images=f'{name}/{result["images"]}',
            synthetic_teacher_accuracy=result.get(
                'synthetic_teacher_accuracy'),
            final_losses=result.get('final'))
    entries[stage.teacher] = entry
  if 'deepinversion' in out:
    out['deepinversion']['comparison'] = comparison
  return out


def gather(config: ml_collections.ConfigDict, stages: list[Any],
           results: dict[str, dict[str, Any] | None], *,
           deepinversion_comparison: str | None = None) -> dict[str, Any]:
  """Collects finished stage results into the results.json layout.

  Args:
    config: the pipeline config.
    stages: the planned stages (`pipeline.PlannedStage`), in order.
    results: every planned stage's result (None while unfinished).
    deepinversion_comparison: Figure 6's PNG, relative to the workdir.

  Returns:
    The results.json dictionary: `teachers` {name: accuracies}, `students`
    {arch: {role: accuracies}} with role the stage name's first part
    ('baseline', 'kd_nasty', ...), `data_free`, `stages` and `incomplete`.
  """
  teachers = {}
  for stage in stages:
    if stage.student_arch is None:
      teachers[stage.teacher] = _accuracies(results[stage.spec.name])
  for stage in stages:
    # A teacher given as a checkpoint: as a stage that read it measured it.
    if stage.teacher is not None and teachers.get(stage.teacher) is None:
      teachers[stage.teacher] = _measured(results[stage.spec.name])
  order = methods.parse_list(config.teachers)
  teachers = dict(sorted(teachers.items(), key=lambda kv: (
      order.index(kv[0]) if kv[0] in order else len(order))))
  students = {}
  for stage in stages:
    if stage.student_arch is not None and not methods.get(
        stage.spec.method).per_teacher_stage:
      role = stage.spec.name.split('/')[0]
      students.setdefault(stage.student_arch, {})[role] = _accuracies(
          results[stage.spec.name])
  return {
      'dataset': config.dataset.name,
      'teacher_arch': config.teacher.arch,
      'seed': config.seed,
      'teachers': teachers,
      'students': students,
      'data_free': _data_free(stages, results, deepinversion_comparison),
      'incomplete': sorted(n for n, r in results.items() if r is None),
      'stages': {n: r for n, r in results.items() if r is not None},
      'config': config.to_dict(),
  }


def cell(value, reference=None) -> str:
  """A table cell: '91.23', with '(+0.45)' against `reference`; '–' if
  there is no value."""
  if value is None:
    return '–'
  text = f'{value:.2f}'
  if reference is not None:
    text += f' ({value - reference:+.2f})'
  return text


def signed(value) -> str:
  """A change: '+0.45', '–' if there is none."""
  return '–' if value is None else f'{value:+.2f}'


def _get(entry, kind):
  return None if entry is None else entry.get(kind)


def _student_methods(results: dict[str, Any]) -> list[methods.Method]:
  config = results.get('config', {})
  methods.load_extensions(config.get('extensions'))
  names = methods.parse_list(config.get('students', {}).get('methods',
                                                            'ce+kd'))
  num_classes = config.get('dataset', {}).get('num_classes', 10)
  return [methods.get(n) for n in methods.expand(names, num_classes)]


def table(results: dict[str, Any], kind: str,
          method: methods.Method | None = None) -> str:
  """One markdown table (kind 'best' or 'last') in the paper's layout.

  Rows: the student alone (and every other student method that reads no
  teacher), then one row per teacher with the `method` student of each
  architecture (default KD), changes against the student alone.
  """
  method = method or methods.get('kd')
  archs = list(results['students'])
  arch_name = results['teacher_arch']
  lines = ['| Teacher network | Teacher accuracy | '
           + ' | '.join(archs) + ' |',
           '|---' * (len(archs) + 2) + '|']

  def student(arch, role):
    return _get(results['students'][arch].get(role), kind)

  baselines = [student(a, methods.get('ce').stage_prefix) for a in archs]
  lines.append('| Student baseline | – | '
               + ' | '.join(cell(b) for b in baselines) + ' |')
  for alone in _student_methods(results):
    if alone.reads_teacher or alone.name == 'ce':
      continue
    cells = [cell(student(a, alone.stage_prefix), b)
             for a, b in zip(archs, baselines)]
    lines.append(f'| {alone.label or alone.name} | – | '
                 + ' | '.join(cells) + ' |')
  teachers = results['teachers']
  normal = _get(teachers.get('normal'), kind)
  for name, entry in teachers.items():
    reference = None if name == 'normal' else normal
    cells = [cell(student(a, method.stage_name(name, a).split('/')[0]), b)
             for a, b in zip(archs, baselines)]
    lines.append(f'| {arch_name} ({name}) | '
                 f'{cell(_get(entry, kind), reference)} | '
                 + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def data_free_table(results: dict[str, Any]) -> str:
  """Table 6's layout: teacher and DAFL student accuracy per teacher."""
  dafl = results['data_free']['dafl']
  archs = sorted({e['student_arch'] for e in dafl.values() if e})
  arch = ', '.join(archs) or 'student'
  rows = {}
  for role in dafl:
    entry = dafl.get(role) or {}
    # The accuracy DAFL's own stage measured, else the teacher stage's.
    teacher_acc = entry.get('teacher')
    if teacher_acc is None:
      teacher_acc = _get(results['teachers'].get(role), 'best')
    rows[role] = [teacher_acc] + [entry.get(kind) for kind in KINDS]
  lines = [f'| Teacher network | Teacher accuracy | DAFL {arch} (best) | '
           f'DAFL {arch} (last) |', '|---|---|---|---|']
  for role, row in rows.items():
    refs = (rows['normal'] if role != 'normal' and 'normal' in rows
            else [None] * len(row))
    cells = ' | '.join(cell(v, r) for v, r in zip(row, refs))
    lines.append(f'| {results["teacher_arch"]} ({role}) | {cells} |')
  return '\n'.join(lines)


def _deepinversion_section(results: dict[str, Any]) -> list[str]:
  """Figure 6's images and what the teachers make of their own batches."""
  inversion = results['data_free']['deepinversion']
  parts = ['## DeepInversion (Figure 6)', '']
  if inversion.get('comparison'):
    parts += [f'![teachers side by side]({inversion["comparison"]})', '']
  parts += ['| Teacher | Teacher accuracy on its synthetic batch | KD '
            'student (best) | grid |', '|---|---|---|---|']
  for role, entry in inversion.items():
    if role == 'comparison':
      continue
    if entry is None:
      parts.append(f'| {role} | – | – | – |')
      continue
    parts.append(
        f'| {role} | {cell(entry.get("synthetic_teacher_accuracy"))} | '
        f'{cell(entry.get("best"))} | [{entry["grid"]}]({entry["grid"]}) |')
  return parts + ['']


def markdown(results: dict[str, Any]) -> str:
  """The whole results.md text."""
  title = (f'# {results["dataset"]}: {results["teacher_arch"]} teacher, '
           f'seed {results["seed"]}')
  parts = [title, '',
           'Test accuracy (%); students in parentheses: change against the '
           'same student trained alone; teachers: change against the normal '
           'teacher.', '']
  readers = [m for m in _student_methods(results) if m.reads_teacher]
  for kind, heading in (('best', 'Best epoch (what the reference reports)'),
                        ('last', 'Last epoch')):
    parts += [f'## {heading}', '']
    for i, method in enumerate(readers or [methods.get('kd')]):
      if i:
        parts += [f'### Students by {method.label or method.name}', '']
      parts += [table(results, kind, method), '']
  data_free = results.get('data_free', {})
  if 'dafl' in data_free:
    parts += ['## Data-free KD: DAFL (Table 6)', '',
              'Test accuracy (%); the other rows: change against the normal '
              'row. DAFL students are kept at their best test epoch, as '
              'DAFL-train.py saves them.', '', data_free_table(results), '']
  if 'deepinversion' in data_free:
    parts += _deepinversion_section(results)
  parts += ['## Stages', '', '| stage | status | best (epoch) | last | '
            'img/s | devices |', '|---|---|---|---|---|---|']
  for name, r in results['stages'].items():
    status = r.get('status', '')
    if status == 'nonfinite':
      status = f'stopped: non-finite loss at step {r.get("nonfinite_step")}'
    # A DeepInversion stage without KD trains nothing: no epochs, no img/s.
    epoch = f' ({r["best_epoch"]})' if r.get('best_epoch') else ''
    parts.append(
        f'| {name} | {status} | {cell(r.get("best"))}{epoch}'
        f' | {cell(r.get("last"))} | {r.get("images_per_second") or 0:.0f} |'
        f' {r.get("devices")} {r.get("parallelism")} |')
  if results['incomplete']:
    parts += ['', 'Not finished: ' + ', '.join(results['incomplete'])]
  if results.get('stale'):
    parts += ['', 'Left out, made with other settings: '
              + ', '.join(results['stale'])]
  return '\n'.join(parts) + '\n'


def write(results: dict[str, Any], workdir: str) -> None:
  """Writes workdir/results.json and workdir/results.md (atomically)."""
  jsonio.write(os.path.join(workdir, 'results.json'), results, default=str)
  jsonio.write_text(os.path.join(workdir, 'results.md'), markdown(results))
