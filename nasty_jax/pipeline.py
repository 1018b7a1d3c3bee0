"""The paper's pipeline for one config: teachers, then students, then tables.

normal teacher -> nasty teacher (adversary: that normal teacher, as
train_nasty.py) -> for every student architecture: baseline, KD from the
normal teacher, KD from the nasty teacher (train_kd.py) -> when enabled, the
data-free attacks of §4.4 on both teachers: a DAFL student from each
(Table 6) and a DeepInversion batch of each (Figure 6). Each stage has its
own folder under the workdir, is skipped once complete and resumes when
interrupted (`train.py`). At the end `results.json` and `results.md` gather
every finished stage into the paper's table shape.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging

from nasty_jax import results as results_lib
from nasty_jax import train
from nasty_jax.data_free import dafl
from nasty_jax.data_free import deepinversion

# Selectors accepted by config.stages, besides single stage names.
STAGE_GROUPS = ('all', 'normal', 'nasty', 'students', 'baseline',
                'kd_normal', 'kd_nasty', 'dafl', 'deepinversion')
# What runs a stage, by StageSpec.mode.
RUNNERS = {
    'normal': train.train_and_evaluate,
    'nasty': train.train_and_evaluate,
    'kd': train.train_and_evaluate,
    dafl.MODE: dafl.run_dafl,
    deepinversion.MODE: deepinversion.run_deepinversion,
}
# Figure 6, written once both DeepInversion stages are done.
COMPARISON_FILE = 'deepinversion/normal_vs_nasty.png'


def student_archs(config: ml_collections.ConfigDict) -> list[str]:
  """The student architectures ('+'-separated in config.students.archs)."""
  text = config.students.archs.replace(',', '+')
  return [a.strip() for a in text.split('+') if a.strip()]


@dataclasses.dataclass(frozen=True)
class PlannedStage:
  spec: train.StageSpec
  directory: str
  # Stage names whose `best/` this stage reads.
  needs: tuple[str, ...] = ()


def plan(config: ml_collections.ConfigDict, workdir: str
         ) -> list[PlannedStage]:
  """Every stage of the config's pipeline, in run order."""
  teacher = config.teacher.arch
  stages = []
  own = lambda name: os.path.join(workdir, name)

  normal_ckpt, normal_needs = config.teacher.checkpoint, ()
  if normal_ckpt is None:
    stages.append(PlannedStage(train.StageSpec('normal', 'normal', teacher),
                               own('normal')))
    normal_ckpt, normal_needs = own('normal'), ('normal',)

  nasty_ckpt, nasty_needs = config.nasty.checkpoint, ()
  if nasty_ckpt is None:
    adversary_ckpt = config.nasty.adversary_checkpoint
    adversary_needs = () if adversary_ckpt else normal_needs
    stages.append(PlannedStage(
        train.StageSpec('nasty', 'nasty', teacher,
                        config.nasty.adversary_arch or teacher,
                        adversary_ckpt or normal_ckpt),
        own('nasty'), adversary_needs))
    nasty_ckpt, nasty_needs = own('nasty'), ('nasty',)

  for arch in student_archs(config):
    stages.append(PlannedStage(
        train.StageSpec(f'baseline/{arch}', 'normal', arch),
        own(f'baseline/{arch}')))
    stages.append(PlannedStage(
        train.StageSpec(f'kd_normal/{arch}', 'kd', arch, teacher,
                        normal_ckpt), own(f'kd_normal/{arch}'), normal_needs))
    stages.append(PlannedStage(
        train.StageSpec(f'kd_nasty/{arch}', 'kd', arch, teacher, nasty_ckpt),
        own(f'kd_nasty/{arch}'), nasty_needs))

  teachers = {'normal': (normal_ckpt, normal_needs),
              'nasty': (nasty_ckpt, nasty_needs)}
  for mode, cfg, arch in ((dafl.MODE, config.dafl, config.dafl.student_arch),
                          (deepinversion.MODE, config.deepinversion,
                           config.deepinversion.kd_student_arch)):
    if not cfg.enabled:
      continue
    for role in results_lib.TEACHERS:
      checkpoint, needs = teachers[role]
      stages.append(PlannedStage(
          train.StageSpec(f'{mode}/{role}', mode, arch, teacher, checkpoint),
          own(f'{mode}/{role}'), needs))
  return stages


def select(stages: list[PlannedStage], selectors: str) -> list[PlannedStage]:
  """The planned stages that `config.stages` names, in run order.

  Selectors are ','- or '+'-separated ('+' fits inside a config argument,
  whose items ',' separates).

  Raises:
    ValueError: an unknown selector; the message lists the valid ones.
  """
  names = [s.spec.name for s in stages]
  chosen = set()
  for selector in (x.strip() for x in selectors.replace('+', ',').split(',')
                   if x.strip()):
    if selector == 'all':
      chosen.update(names)
    elif selector == 'students':
      chosen.update(n for n in names
                    if n.split('/')[0] in results_lib.STUDENT_ROLES)
    elif selector in STAGE_GROUPS:
      chosen.update(n for n in names
                    if n == selector or n.startswith(selector + '/'))
    elif selector in names:
      chosen.add(selector)
    else:
      raise ValueError(
          f'Unknown stage selector {selector!r} in config.stages. Valid: '
          f'{", ".join(STAGE_GROUPS)}, or one of {", ".join(names)}.')
  return [s for s in stages if s.spec.name in chosen]


def _check_ready(stage: PlannedStage, by_name: dict[str, PlannedStage]
                 ) -> None:
  for need in stage.needs:
    result = train.read_result(by_name[need].directory)
    if result is None:
      raise ValueError(
          f'Stage {stage.spec.name} needs the finished stage {need} '
          f'({by_name[need].directory}). Include it in --config.stages, or '
          'point the config at an existing checkpoint '
          '(--config.teacher.checkpoint / --config.nasty.checkpoint).')
    if result.get('best') is None:
      raise ValueError(
          f'Stage {stage.spec.name} needs {need}, which stopped at a '
          f'non-finite loss at step {result.get("nonfinite_step")} before '
          'any epoch finished, so it has no checkpoint to read.')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the selected stages, then writes results.json and results.md.

  Returns:
    The results dictionary written to `workdir/results.json`.
  """
  os.makedirs(workdir, exist_ok=True)
  stages = plan(config, workdir)
  by_name = {s.spec.name: s for s in stages}
  selected = select(stages, config.stages)
  for i, stage in enumerate(selected):
    _check_ready(stage, by_name)
    logging.info('=== Stage %d/%d: %s (%s, %s) -> %s', i + 1, len(selected),
                 stage.spec.name, stage.spec.mode, stage.spec.arch,
                 stage.directory)
    result = RUNNERS[stage.spec.mode](config, stage.spec, stage.directory)
    if result.get('status') == 'preempted':
      logging.warning('Pre-empted during %s; rerun the same command to '
                      'resume.', stage.spec.name)
      return {'status': 'preempted', 'stage': stage.spec.name}
  stage_results = {s.spec.name: train.read_result(s.directory)
                   for s in stages}
  # Every host computes the same results; one writes them (multi-host).
  writer = jax.process_index() == 0
  figure = (_write_deepinversion_comparison(by_name, stage_results, workdir)
            if writer else None)
  results = results_lib.gather(config, student_archs(config), stage_results,
                               deepinversion_comparison=figure)
  if writer:
    results_lib.write(results, workdir)
  return results


def _write_deepinversion_comparison(by_name, stage_results, workdir
                                    ) -> str | None:
  """Figure 6 (normal | nasty grids) once both inversions exist."""
  names = [f'{deepinversion.MODE}/{role}' for role in results_lib.TEACHERS]
  if not all(stage_results.get(n) for n in names):
    return None
  path = os.path.join(workdir, COMPARISON_FILE)
  deepinversion.write_comparison(
      {role: os.path.join(by_name[n].directory, deepinversion.IMAGES_FILE)
       for role, n in zip(results_lib.TEACHERS, names)}, path)
  return COMPARISON_FILE


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the config a workdir was run with (config.json)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config.to_dict(), f, indent=1, default=str)
