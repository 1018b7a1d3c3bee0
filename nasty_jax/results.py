"""results.json and results.md: a pipeline's stages in the paper's shape.

The paper's Tables 1-3 list, per teacher, the teacher's accuracy and every
student's accuracy with its change against the student trained alone. The
reference reports best-on-test epochs (SPEC §6), so both the best-epoch and
the last-epoch accuracy are kept.
"""

import json
import os
from typing import Any

import ml_collections

KINDS = ('best', 'last')
STUDENT_ROLES = ('baseline', 'kd_normal', 'kd_nasty')


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


def gather(config: ml_collections.ConfigDict, student_archs: list[str],
           stages: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
  """Collects finished stage results into the results.json layout."""
  normal = _accuracies(stages.get('normal')) or _frozen(stages, 'kd_normal/')
  if normal is None:
    normal = _frozen(stages, 'nasty')
  nasty = _accuracies(stages.get('nasty')) or _frozen(stages, 'kd_nasty/')
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
  parts += ['## Stages', '', '| stage | status | best (epoch) | last | '
            'img/s | devices |', '|---|---|---|---|---|---|']
  for name, r in results['stages'].items():
    status = r.get('status', '')
    if status == 'nonfinite':
      status = f'stopped: non-finite loss at step {r.get("nonfinite_step")}'
    parts.append(
        f'| {name} | {status} | {_cell(r.get("best"))} ({r.get("best_epoch")})'
        f' | {_cell(r.get("last"))} | {r.get("images_per_second", 0):.0f} | '
        f'{r.get("devices")} {r.get("parallelism")} |')
  if results['incomplete']:
    parts += ['', 'Not finished: ' + ', '.join(results['incomplete'])]
  return '\n'.join(parts) + '\n'


def write(results: dict[str, Any], workdir: str) -> None:
  """Writes workdir/results.json and workdir/results.md."""
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1, default=str)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(markdown(results))
