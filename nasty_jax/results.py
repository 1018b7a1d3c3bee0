"""results.json and results.md: a pipeline's stages in the paper's shape.

The paper's Tables 1-3 list, per teacher, the teacher's accuracy and every
student's accuracy with its change against the student trained alone. The
reference reports best-on-test epochs (SPEC §6), so both the best-epoch and
the last-epoch accuracy are kept. Table 6 lists, per teacher, the teacher's
accuracy and the DAFL student's (best-on-test, as DAFL-train.py saves it),
with changes of the nasty row against the normal one; Figure 6 is the
DeepInversion image grids of the two teachers.
"""

import json
import os
from typing import Any

import ml_collections

KINDS = ('best', 'last')
STUDENT_ROLES = ('baseline', 'kd_normal', 'kd_nasty')
TEACHERS = ('normal', 'nasty')
DATA_FREE = ('dafl', 'deepinversion')


def _accuracies(result: dict[str, Any] | None) -> dict[str, Any] | None:
  if result is None:
    return None
  out = {k: result.get(k) for k in KINDS}
  out['best_epoch'] = result.get('best_epoch')
  if result.get('status') == 'nonfinite':
    out['nonfinite_step'] = result.get('nonfinite_step')
  return out


def _frozen(stages: dict[str, Any], prefix: str) -> dict[str, Any] | None:
  """A teacher given as a checkpoint: its accuracy as a stage measured it."""
  for name, result in stages.items():
    if (name == prefix or name.startswith(prefix)) and result and (
        result.get('frozen_accuracy') is not None):
      acc = result['frozen_accuracy']
      return {'best': acc, 'last': acc, 'source': result['frozen_checkpoint']}
  return None


def _first_frozen(stages: dict[str, Any], prefixes: tuple[str, ...]
                  ) -> dict[str, Any] | None:
  for prefix in prefixes:
    found = _frozen(stages, prefix)
    if found is not None:
      return found
  return None


def _data_free(stages: dict[str, dict[str, Any] | None],
               comparison: str | None) -> dict[str, Any]:
  """DAFL and DeepInversion entries of planned data-free stages, by teacher.

  File paths are relative to the workdir (a stage's folder is its name).
  """
  out = {}
  for method in DATA_FREE:
    planned = {role: f'{method}/{role}' for role in TEACHERS
               if f'{method}/{role}' in stages}
    if not planned:
      continue
    entries = {}
    for role, name in planned.items():
      result = stages[name]
      entry = _accuracies(result)
      if entry is not None:
        entry.update(stage=name, student_arch=result.get('arch'),
                     teacher=result.get('frozen_accuracy'))
        if method == 'deepinversion':
          entry.update(
              grid=f'{name}/{result["grid"]}',
              images=f'{name}/{result["images"]}',
              synthetic_teacher_accuracy=result.get(
                  'synthetic_teacher_accuracy'),
              final_losses=result.get('final'))
      entries[role] = entry
    if method == 'deepinversion':
      entries['comparison'] = comparison
    out[method] = entries
  return out


def gather(config: ml_collections.ConfigDict, student_archs: list[str],
           stages: dict[str, dict[str, Any] | None], *,
           deepinversion_comparison: str | None = None) -> dict[str, Any]:
  """Collects finished stage results into the results.json layout.

  Args:
    config: the pipeline config.
    student_archs: the student architectures, in table order.
    stages: every planned stage's result (None while unfinished).
    deepinversion_comparison: Figure 6's PNG, relative to the workdir.

  Returns:
    The results.json dictionary.
  """
  # A teacher given as a checkpoint: as a stage that read it measured it.
  normal = _accuracies(stages.get('normal')) or _first_frozen(
      stages, ('kd_normal/', 'dafl/normal', 'deepinversion/normal'))
  nasty = _accuracies(stages.get('nasty')) or _first_frozen(
      stages, ('kd_nasty/', 'dafl/nasty', 'deepinversion/nasty'))
  students = {}
  for arch in student_archs:
    students[arch] = {role: _accuracies(stages.get(f'{role}/{arch}'))
                      for role in STUDENT_ROLES}
  return {
      'dataset': config.dataset.name,
      'teacher_arch': config.teacher.arch,
      'seed': config.seed,
      'teachers': {'normal': normal, 'nasty': nasty},
      'students': students,
      'data_free': _data_free(stages, deepinversion_comparison),
      'incomplete': sorted(n for n, r in stages.items() if r is None),
      'stages': {n: r for n, r in stages.items() if r is not None},
      'config': config.to_dict(),
  }


def _cell(value, reference=None) -> str:
  if value is None:
    return '–'
  text = f'{value:.2f}'
  if reference is not None:
    text += f' ({value - reference:+.2f})'
  return text


def _get(entry, kind):
  return None if entry is None else entry.get(kind)


def table(results: dict[str, Any], kind: str) -> str:
  """One markdown table (kind 'best' or 'last') in the paper's layout."""
  archs = list(results['students'])
  teacher = results['teacher_arch']
  normal = _get(results['teachers']['normal'], kind)
  nasty = _get(results['teachers']['nasty'], kind)
  lines = ['| Teacher network | Teacher accuracy | '
           + ' | '.join(archs) + ' |',
           '|---' * (len(archs) + 2) + '|']
  baselines = [_get(results['students'][a]['baseline'], kind) for a in archs]
  lines.append('| Student baseline | – | '
               + ' | '.join(_cell(b) for b in baselines) + ' |')
  for role, label, acc, ref in (
      ('kd_normal', f'{teacher} (normal)', normal, None),
      ('kd_nasty', f'{teacher} (nasty)', nasty, normal)):
    cells = [_cell(_get(results['students'][a][role], kind), b)
             for a, b in zip(archs, baselines)]
    lines.append(f'| {label} | {_cell(acc, ref)} | ' + ' | '.join(cells)
                 + ' |')
  return '\n'.join(lines)


def data_free_table(results: dict[str, Any]) -> str:
  """Table 6's layout: teacher and DAFL student accuracy per teacher."""
  dafl = results['data_free']['dafl']
  archs = sorted({e['student_arch'] for e in dafl.values() if e})
  arch = ', '.join(archs) or 'student'
  rows = {}
  for role in TEACHERS:
    entry = dafl.get(role) or {}
    # The accuracy DAFL's own stage measured, else the teacher stage's.
    teacher_acc = entry.get('teacher')
    if teacher_acc is None:
      teacher_acc = _get(results['teachers'][role], 'best')
    rows[role] = [teacher_acc] + [entry.get(kind) for kind in KINDS]
  lines = [f'| Teacher network | Teacher accuracy | DAFL {arch} (best) | '
           f'DAFL {arch} (last) |', '|---|---|---|---|']
  for role in TEACHERS:
    refs = rows['normal'] if role == 'nasty' else [None] * len(rows[role])
    cells = ' | '.join(_cell(v, r) for v, r in zip(rows[role], refs))
    lines.append(f'| {results["teacher_arch"]} ({role}) | {cells} |')
  return '\n'.join(lines)


def _deepinversion_section(results: dict[str, Any]) -> list[str]:
  """Figure 6's images and what the teachers make of their own batches."""
  inversion = results['data_free']['deepinversion']
  parts = ['## DeepInversion (Figure 6)', '']
  if inversion.get('comparison'):
    parts += [f'![normal vs nasty]({inversion["comparison"]})', '']
  parts += ['| Teacher | Teacher accuracy on its synthetic batch | KD '
            'student (best) | grid |', '|---|---|---|---|']
  for role in TEACHERS:
    entry = inversion.get(role)
    if entry is None:
      parts.append(f'| {role} | – | – | – |')
      continue
    parts.append(
        f'| {role} | {_cell(entry.get("synthetic_teacher_accuracy"))} | '
        f'{_cell(entry.get("best"))} | [{entry["grid"]}]({entry["grid"]}) |')
  return parts + ['']


def markdown(results: dict[str, Any]) -> str:
  """The whole results.md text."""
  title = (f'# {results["dataset"]}: {results["teacher_arch"]} teacher, '
           f'seed {results["seed"]}')
  parts = [title, '',
           'Test accuracy (%); students in parentheses: change against the '
           'same student trained alone; the nasty teacher: change against '
           'the normal teacher.', '']
  for kind, heading in (('best', 'Best epoch (what the reference reports)'),
                        ('last', 'Last epoch')):
    parts += [f'## {heading}', '', table(results, kind), '']
  data_free = results.get('data_free', {})
  if 'dafl' in data_free:
    parts += ['## Data-free KD: DAFL (Table 6)', '',
              'Test accuracy (%); the nasty row: change against the normal '
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
        f'| {name} | {status} | {_cell(r.get("best"))}{epoch}'
        f' | {_cell(r.get("last"))} | {r.get("images_per_second") or 0:.0f} |'
        f' {r.get("devices")} {r.get("parallelism")} |')
  if results['incomplete']:
    parts += ['', 'Not finished: ' + ', '.join(results['incomplete'])]
  return '\n'.join(parts) + '\n'


def write(results: dict[str, Any], workdir: str) -> None:
  """Writes workdir/results.json and workdir/results.md."""
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1, default=str)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(markdown(results))
