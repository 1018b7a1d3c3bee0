"""The paper's pipeline for one config: teachers, then students, then tables.

Stages come from the method registry (`methods.py`) and three config
fields:

* `config.teachers` ('normal+nasty'): the teacher-side methods, each
  trained on `config.teacher.arch` (or read from `<group>.checkpoint`). A
  teacher-side method's other frozen networks (nasty's adversary) default
  to the normal teacher, as train_nasty.py has it.
* `config.students.methods` ('ce+ls+kd') over `config.students.archs`: a
  student method that reads a teacher trains once per teacher
  (`kd_normal/net`, `kd_nasty/net`), one that does not once (`baseline/net`).
* data-free student methods switched on by `<group>.enabled` (DAFL,
  DeepInversion): one stage per teacher (`dafl/nasty`).

Each stage has its own folder under the workdir, is skipped once complete
and resumes when interrupted (`engine.py`). At the end `results.json` and
`results.md` gather every finished stage into the paper's table shape.
"""

import dataclasses
import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from nasty_jax import engine
from nasty_jax import fingerprint
from nasty_jax import jsonio
from nasty_jax import methods
from nasty_jax import programs
from nasty_jax import results as results_lib
from nasty_jax import serving
from nasty_jax.data_free import deepinversion

# Figure 6, written once both DeepInversion stages are done.
COMPARISON_FILE = 'deepinversion/normal_vs_nasty.png'


def teacher_names(config: ml_collections.ConfigDict) -> list[str]:
  """The teacher-side methods of `config.teachers`, in order."""
  return methods.parse_list(config.teachers)


def student_archs(config: ml_collections.ConfigDict) -> list[str]:
  """The student architectures ('+'-separated in config.students.archs)."""
  return methods.parse_list(config.students.archs)


def serving_api(config: ml_collections.ConfigDict) -> str:
  """The API output mode students see ('' for the full logits)."""
  mode = config.api
  serving.api(mode)  # Raises on an unknown mode.
  return '' if mode == 'logits' else mode


def student_methods(config: ml_collections.ConfigDict) -> list[str]:
  """The student-side methods of `config.students.methods`, in order
  ('attacks' stands for the audit's default set, `methods.attack_set`)."""
  return methods.expand(methods.parse_list(config.students.methods),
                        config.dataset.num_classes)


@dataclasses.dataclass(frozen=True)
class PlannedStage:
  """A stage of the plan.

  Attributes:
    spec: what it trains.
    directory: its folder.
    needs: stage names whose `best/` it reads.
    teacher: the teacher-side method it is (teachers) or reads (students).
    student_arch: a student stage's architecture (None for teachers).
  """
  spec: programs.StageSpec
  directory: str
  needs: tuple[str, ...] = ()
  teacher: str | None = None
  student_arch: str | None = None


def _method(name: str, role: str, where: str) -> methods.Method:
  method = methods.get(name)
  if method.role != role:
    raise ValueError(
        f'{where} lists {name!r}, a {method.role}-side method; valid here: '
        f'{", ".join(methods.names(role))}.')
  return method


# Sequence fields and their element type. ml_collections type-checks
# scalars on override but takes any tuple, so `milestones=abc` would only
# fail deep inside the schedule, without the key's name.
SEQUENCE_FIELDS = {'milestones': int, 'temperatures': float}


def check_sequences(config: ml_collections.ConfigDict, prefix: str = ''
                    ) -> None:
  """Raises ValueError naming a sequence field with a wrong element."""
  for key, value in config.items():
    path = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      check_sequences(value, f'{path}.')
    elif key in SEQUENCE_FIELDS and value is not None:
      kind = SEQUENCE_FIELDS[key]
      items = value if isinstance(value, (tuple, list)) else (value,)
      for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or (
            kind is int and float(item) != int(item)):
          raise ValueError(
              f'--config.{path}={value!r}: expected a tuple of '
              f'{kind.__name__}s, e.g. --config.{path}="(5, 8)".')


# Counts a stage cannot run with fewer of: an optimiser's epochs of 0 or
# less would train nothing and read as a stage that failed. The top-level
# `num_epochs` and `num_train_steps` are -1 for "not overridden".
POSITIVE_FIELDS = ('optim.sgd.num_epochs', 'optim.adam.num_epochs',
                   'dafl.num_epochs', 'dafl.iters_per_epoch',
                   'deepinversion.iterations')
OVERRIDE_FIELDS = {'num_epochs': "the optimiser's own",
                   'num_train_steps': 'no limit'}


def check_counts(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming an epoch or step count that cannot run."""
  def value(path):
    node = config
    for key in path.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        return None
      node = node[key]
    return node

  for path in POSITIVE_FIELDS:
    if (v := value(path)) is not None and v < 1:
      raise ValueError(f'--config.{path}={v}: must be at least 1.')
  for path, unset in OVERRIDE_FIELDS.items():
    if (v := value(path)) is not None and v != -1 and v < 1:
      raise ValueError(f'--config.{path}={v}: must be at least 1, or -1 '
                       f'for {unset}.')


def plan(config: ml_collections.ConfigDict, workdir: str
         ) -> list[PlannedStage]:
  """Every stage of the config's pipeline, in run order.

  Raises:
    ValueError: an unknown method, or one on the wrong side; a sequence
      field holding values of the wrong type; an epoch or step count that
      cannot run (`check_counts`).
  """
  check_sequences(config)
  check_counts(config)
  methods.load_extensions(config.extensions)
  arch = config.teacher.arch
  own = lambda name: os.path.join(workdir, name)
  stages = []
  # Teacher name -> (checkpoint, stages it comes from, serving transform).
  teachers: dict[str, tuple[str, tuple[str, ...], str]] = {}

  def normal_teacher(name, what):
    if 'normal' not in teachers:
      raise ValueError(
          f'Teacher {name!r} {what} (by default the normal teacher): list '
          "'normal' before it in config.teachers.")
    return teachers['normal']

  for name in teacher_names(config):
    method = _method(name, methods.TEACHER, 'config.teachers')
    fields = methods.fields(config, method)
    if method.transform is not None:
      checkpoint, needs, _ = normal_teacher(name, 'serves a normal teacher')
      teachers[name] = (checkpoint, needs, name)
      continue
    if fields.get('checkpoint'):
      teachers[name] = (fields.checkpoint, (), '')
      continue
    frozen, needs = [], ()
    for role in method.frozen:
      checkpoint = fields.get(f'{role}_checkpoint')
      if checkpoint is None:
        checkpoint, needs, _ = normal_teacher(
            name, f'reads a frozen {role}; or set --config.'
            f'{method.config_group}.{role}_checkpoint')
      frozen.append(programs.FrozenSpec(
          role, fields.get(f'{role}_arch') or arch, checkpoint))
    stage = method.stage_name()
    stages.append(PlannedStage(
        programs.StageSpec(stage, name, arch, tuple(frozen)), own(stage),
        needs, teacher=name))
    teachers[name] = (own(stage), (stage,), '')
  api = serving_api(config)

  def reading(teacher):
    checkpoint, needs, transform = teachers[teacher]
    served = '+'.join(t for t in (transform, api) if t)
    return ((programs.FrozenSpec(methods.TEACHER, arch, checkpoint, served),),
            needs)

  for student in student_archs(config):
    for name in student_methods(config):
      method = _method(name, methods.STUDENT, 'config.students.methods')
      if (method.student_archs is not None
          and student not in method.student_archs):
        logging.warning('%s has a network of its own for students %s only; '
                        'no %s stage for %s.', name,
                        ', '.join(sorted(method.student_archs)), name,
                        student)
        continue
      if method.per_teacher_stage:
        raise ValueError(
            f'{name!r} runs one stage per teacher: switch it on with '
            f'--config.{method.config_group}.enabled=true rather than in '
            'config.students.methods.')
      trained = method.trained_arch(student)
      for teacher in (list(teachers) if method.reads_teacher else [None]):
        frozen, needs = reading(teacher) if teacher else ((), ())
        stage = method.stage_name(teacher, student)
        stages.append(PlannedStage(
            programs.StageSpec(stage, name, trained, frozen), own(stage),
            needs, teacher=teacher, student_arch=student))

  for name in methods.names(methods.STUDENT):
    method = methods.get(name)
    if not method.per_teacher_stage:
      continue
    fields = methods.fields(config, method)
    if not fields.enabled:
      continue
    for teacher in teachers:
      if teachers[teacher][2] or api:
        # The generator and the inversion need the teacher's features,
        # BN statistics and gradients: a trained teacher's internals.
        logging.warning('%s needs the teacher\'s internals; no %s stage '
                        'for the served teacher %s.', name, name, teacher)
        continue
      frozen, needs = reading(teacher)
      stage = method.stage_name(teacher)
      stages.append(PlannedStage(
          programs.StageSpec(stage, name, fields.student_arch, frozen),
          own(stage), needs, teacher=teacher,
          student_arch=fields.student_arch))
  return stages


def selector_groups(stages: list[PlannedStage]) -> list[str]:
  """What `config.stages` accepts besides single stage names."""
  groups = ['all', 'teachers', 'students']
  for s in stages:
    for group in (s.spec.name.split('/')[0], s.spec.method):
      if group not in groups:
        groups.append(group)
  return groups


def select(stages: list[PlannedStage], selectors: str) -> list[PlannedStage]:
  """The planned stages that `config.stages` names, in run order.

  A selector is 'all', 'teachers', 'students' (the per-architecture student
  stages), a method name (every stage it trains), a stage name's first
  part ('kd_nasty', 'dafl') or a stage name ('kd_nasty/net'); ','- or
  '+'-separated ('+' fits inside a config argument).

  Raises:
    ValueError: an unknown selector; the message lists the valid ones.
  """
  names = [s.spec.name for s in stages]
  groups = selector_groups(stages)
  chosen = set()
  for selector in methods.parse_list(selectors):
    for s in stages:
      name = s.spec.name
      if (selector in ('all', name, name.split('/')[0], s.spec.method)
          or (selector == 'teachers' and s.student_arch is None)
          or (selector == 'students' and s.student_arch is not None
              and not methods.get(s.spec.method).per_teacher_stage)):
        chosen.add(name)
    if selector not in groups and selector not in names:
      raise ValueError(
          f'Unknown stage selector {selector!r} in config.stages. Valid: '
          f'{", ".join(groups)}, or one of {", ".join(names)}.')
  return [s for s in stages if s.spec.name in chosen]


def expected_settings(config: ml_collections.ConfigDict,
                      stages: list[PlannedStage]) -> dict[str, dict[str, Any]]:
  """Every planned stage's settings, before anything runs.

  A frozen network that an earlier planned stage produces has that stage's
  expected fingerprint as its source (so a retrained teacher makes every
  stage after it stale); one from elsewhere its checkpoint's identity.
  """
  out, produced = {}, {}
  for stage in stages:
    sources = {}
    for frozen in stage.spec.frozen:
      producer = produced.get(os.path.abspath(frozen.checkpoint))
      sources[frozen.role] = (producer if producer is not None else
                              fingerprint.checkpoint_identity(
                                  frozen.checkpoint))
    out[stage.spec.name] = engine.stage_settings(config, stage.spec, sources)
    produced[os.path.abspath(stage.directory)] = fingerprint.of(
        out[stage.spec.name])
  return out


def downstream(stages: list[PlannedStage], names: set[str]) -> set[str]:
  """`names` and every stage that reads one of them, transitively."""
  out = set(names)
  for stage in stages:  # Plan order: producers come first.
    if out.intersection(stage.needs):
      out.add(stage.spec.name)
  return out


def _check_ready(stage: PlannedStage, by_name: dict[str, PlannedStage]
                 ) -> None:
  for need in stage.needs:
    result = engine.read_result(by_name[need].directory)
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
    The results dictionary written to `workdir/results.json`, or
    {'status': 'preempted', 'stage': ...}.

  Raises:
    engine.StaleStageError: a selected stage's folder has other settings
      (`execute`).
  """
  stages = plan(config, workdir)
  stage_results = execute(config, workdir, stages,
                          select(stages, config.stages))
  if stage_results.get('status') == 'preempted':
    return stage_results
  stale = stage_results.pop(STALE)
  # Every host computes the same results; one writes them (multi-host).
  writer = jax.process_index() == 0
  figure = (_write_deepinversion_comparison(stages, stage_results, workdir)
            if writer else None)
  results = results_lib.gather(config, stages, stage_results,
                               deepinversion_comparison=figure)
  results['stale'] = stale
  results['nonfinite'] = sorted(
      name for name, r in stage_results.items()
      if r and r.get('status') == 'nonfinite')
  if writer:
    results_lib.write(results, workdir)
  return results


STALE = '__stale__'


def execute(config: ml_collections.ConfigDict, workdir: str,
            stages: list[PlannedStage], selected: list[PlannedStage]
            ) -> dict[str, Any]:
  """Runs `selected` (of `stages`, in plan order) and reads every result.

  Before anything runs or is written, every selected stage's folder is
  checked against the settings asked for (`engine.check_folder`): a folder
  made with other settings stops the run with the keys that differ, unless
  `config.retrain` names it (or a stage it reads). config.json is written
  only then.

  Returns:
    {stage name: result or None (unfinished or stale), STALE: the stale
    stages' names}, or {'status': 'preempted', 'stage': name}.

  Raises:
    engine.StaleStageError: a selected stage's folder has other settings.
  """
  by_name = {s.spec.name: s for s in stages}
  wanted = expected_settings(config, stages)
  retrain = downstream(stages, {s.spec.name for s in select(
      stages, config.retrain)} if config.retrain else set())
  for stage in selected:
    if stage.spec.name not in retrain:
      engine.check_folder(stage.spec, stage.directory,
                          wanted[stage.spec.name])
  if jax.process_index() == 0:
    write_config(config, workdir)
  trained, seconds = 0, 0.0  # Stages trained (not skipped) and their time.
  for i, stage in enumerate(selected):
    _check_ready(stage, by_name)
    logging.info('=== Stage %d/%d: %s (%s, %s) -> %s%s', i + 1, len(selected),
                 stage.spec.name, stage.spec.method, stage.spec.arch,
                 stage.directory,
                 _pipeline_eta(seconds, trained, len(selected) - i))
    sources = {r: s['source'] for r, s in
               wanted[stage.spec.name]['frozen'].items()}
    will_train, started = (engine.read_result(stage.directory) is None,
                           time.perf_counter())
    result = engine.run_stage(config, stage.spec, stage.directory,
                              sources=sources,
                              retrain=stage.spec.name in retrain)
    if result.get('status') == 'preempted':
      logging.warning('Pre-empted during %s; rerun the same command to '
                      'resume.', stage.spec.name)
      return {'status': 'preempted', 'stage': stage.spec.name}
    if will_train:
      trained, seconds = trained + 1, seconds + time.perf_counter() - started
  out, stale = {}, []
  for s in stages:
    recorded = _recorded(s.directory)
    current = recorded == fingerprint.of(wanted[s.spec.name])
    if recorded is not None and not current:
      stale.append(s.spec.name)
    out[s.spec.name] = engine.read_result(s.directory) if current else None
  out[STALE] = sorted(stale)
  return out


def _pipeline_eta(seconds: float, trained: int, remaining: int) -> str:
  """' | pipeline ETA ~H:M:S' from the mean of the stages trained so far."""
  if not trained:
    return ''
  eta = engine.format_duration(seconds / trained * remaining)
  return f' | pipeline ETA ~{eta} ({remaining} stages left, rough)'


def _recorded(stage_dir: str) -> str | None:
  try:
    recorded = fingerprint.read(stage_dir)
  except jsonio.UnreadableFileError:
    return None
  return None if recorded is None else recorded.get('fingerprint')


def _write_deepinversion_comparison(stages, stage_results, workdir
                                    ) -> str | None:
  """Figure 6 (one grid per teacher) once every inversion exists."""
  inversions = [s for s in stages if s.spec.method == deepinversion.MODE]
  if not inversions or not all(stage_results.get(s.spec.name)
                               for s in inversions):
    return None
  path = os.path.join(workdir, COMPARISON_FILE)
  deepinversion.write_comparison(
      {s.teacher: os.path.join(s.directory, deepinversion.IMAGES_FILE)
       for s in inversions}, path)
  return COMPARISON_FILE


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the config a workdir was last run with (config.json)."""
  jsonio.write(os.path.join(workdir, 'config.json'), config.to_dict(),
               default=str)
