"""Is a teacher undistillable? Every known KD attack against the LS bar.

  python -m nasty_jax.audit --config=configs/cifar10.py:resnet18 \\
      --teacher=runs/c10/nasty --workdir=runs/audit_nasty \\
      [--attacks=kd,hard_label,topk_api,skeptical] [--students=net+resnet18] \\
      [--data_free]

A teacher counts as *distillable* when some KD attack yields a student that
beats the same student trained alone with label smoothing (the LS student,
the criterion of MKD and CMIM; docs/attacks.md). For every student
architecture the audit trains the student alone (CE), the LS student and
one student per attack, each a resumable, skippable stage of the engine in
`--workdir`, then writes `audit.json` and `audit.md`: per attack and
student, best- and last-epoch test accuracy, the change against the LS and
the CE student, and a verdict per student.

The teacher is any finished stage's folder (its `best/`) or a checkpoint
converted from a PyTorch file; its architecture is read from it. The
attacks are registered student-side methods (`methods.py`); 'kd' and
'topk_api' stand for their default sweeps, 'attacks' for the whole default
set, and `--data_free` adds DAFL and DeepInversion + KD.
"""

from nasty_jax import runtime  # Before jax starts: it sets XLA_FLAGS.

runtime.set_cpu_flags()
runtime.quiet_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
import os
from typing import Any, Sequence

import jax
import ml_collections
from absl import app
from absl import flags
from absl import logging

from nasty_jax import checkpointing
from nasty_jax import cli
from nasty_jax import engine
from nasty_jax import jsonio
from nasty_jax import methods
from nasty_jax import pipeline
from nasty_jax import programs
from nasty_jax import results as results_lib
from nasty_jax import serving
# pylint: enable=g-import-not-at-top,wrong-import-position

AUDIT_JSON = 'audit.json'
AUDIT_MD = 'audit.md'
# The stage of the teacher under audit in stage names ('kd_t4_a0.9/net').
TEACHER = 'audited'
BARS = ('ce', 'ls')
DATA_FREE = ('dafl', 'deepinversion')


def attack_names(spec: str, num_classes: int) -> list[str]:
  """'kd,topk_api,skeptical' -> method names, sweeps expanded."""
  sweeps = {n: [a for a in methods.attack_set(num_classes)
                if a.startswith(n.split('_')[0])]
            for n in ('kd', 'topk_api')}
  out = []
  for name in methods.parse_list(spec):
    for expanded in (methods.attack_set(num_classes) if name == 'attacks'
                     else sweeps.get(name, [name])):
      method = methods.get(expanded)
      if method.role != methods.STUDENT or not method.reads_teacher:
        raise ValueError(f'{expanded!r} is no attack (a student method '
                         'that reads the teacher); attacks: '
                         + ', '.join(n for n in methods.names(methods.STUDENT)
                                     if methods.get(n).reads_teacher))
      if expanded not in out:
        out.append(expanded)
  return out


def teacher_arch(config: ml_collections.ConfigDict, checkpoint: str) -> str:
  """The architecture a checkpoint records (else config.teacher.arch)."""
  _, meta = checkpointing.load_variables(checkpoint)
  return meta.get('arch') or config.teacher.arch


def plan(config: ml_collections.ConfigDict, teacher: str, arch: str,
         workdir: str, attacks: Sequence[str], students: Sequence[str],
         api: str = ''
         ) -> tuple[list[pipeline.PlannedStage], list[tuple[str, str]]]:
  """The audit's stages, and the (attack, student) pairs that do not apply.

  Per student: `baseline/<arch>`, `ls/<arch>`, then `<attack>/<arch>` for
  every attack that has a network for that student; data-free attacks
  (own student architecture) `<attack>/audited`. `api` is the serving
  transform every attack sees the teacher through (`serving.resolve`).
  """
  frozen = (programs.FrozenSpec(methods.TEACHER, arch,
                                os.path.abspath(teacher), api),)
  stages, skipped = [], []

  def add(method, name, student, trained, reads):
    stages.append(pipeline.PlannedStage(
        programs.StageSpec(name, method.name, trained, frozen if reads
                           else ()), os.path.join(workdir, name),
        teacher=TEACHER if reads else None, student_arch=student))

  for student in students:
    for name in BARS:
      method = methods.get(name)
      add(method, f'{method.stage_prefix}/{student}', student, student,
          False)
    for name in attacks:
      method = methods.get(name)
      if method.per_teacher_stage:
        continue
      if (method.student_archs is not None
          and student not in method.student_archs):
        skipped.append((name, student))
        continue
      add(method, f'{method.stage_prefix}/{student}', student,
          method.trained_arch(student), True)
  for name in attacks:
    method = methods.get(name)
    if method.per_teacher_stage and api:
      # The generator and the inversion need the teacher's internals.
      skipped.append((name, 'served'))
    elif method.per_teacher_stage:
      fields = methods.fields(config, method)
      add(method, f'{method.stage_prefix}/{TEACHER}', fields.student_arch,
          fields.student_arch, True)
  return stages, skipped


def _entry(result: dict[str, Any] | None) -> dict[str, Any] | None:
  if result is None:
    return None
  return {'best': result.get('best'), 'last': result.get('last'),
          'best_epoch': result.get('best_epoch'),
          'ensemble': result.get('ensemble')}


def _delta(value, reference):
  if value is None or reference is None:
    return None
  return value - reference


def verdict(student: str, bar: float | None,
            attacks: dict[str, dict[str, Any] | None]) -> tuple[bool | None,
                                                                 str]:
  """(distillable?, the verdict line) of one student from best epochs.

  Distillable when some attack's best-epoch accuracy is above the LS
  student's; None while a number is missing.
  """
  done = {n: a for n, a in attacks.items() if a and a['best'] is not None}
  if bar is None or len(done) < len(attacks):
    return None, (f'{student}: incomplete ({len(done)} of {len(attacks)} '
                  'attacks, LS student '
                  f'{"done" if bar is not None else "missing"}).')
  best_name, best = max(done.items(), key=lambda kv: kv[1]['best'])
  margin = best['best'] - bar
  if margin > 0:
    return True, (f'{student}: distillable: {best_name} beats the LS '
                  f'student by {margin:.2f} points ({best["best"]:.2f} vs '
                  f'{bar:.2f}).')
  closest = ('ties it' if margin == 0 else
             f'{-margin:.2f} points below it')
  return False, (f'{student}: undistillable under all {len(done)} attacks '
                 f'(closest: {best_name}, {best["best"]:.2f}, {closest}; '
                 f'the LS student {bar:.2f}).')


def gather(config: ml_collections.ConfigDict, teacher: str, arch: str,
           stages: list[pipeline.PlannedStage],
           stage_results: dict[str, Any], skipped: list[tuple[str, str]]
           ) -> dict[str, Any]:
  """The audit.json dictionary (see the module docstring)."""
  measured = next((r['frozen_accuracy'] for r in stage_results.values()
                   if isinstance(r, dict) and r.get('frozen_accuracy')
                   is not None), None)
  students = {}
  for stage in stages:
    method = methods.get(stage.spec.method)
    entry = students.setdefault(stage.student_arch, {'attacks': {}})
    value = _entry(stage_results.get(stage.spec.name))
    if stage.spec.method in BARS:
      entry[stage.spec.method] = value
    else:
      entry['attacks'][stage.spec.method] = value
      if value is not None:
        value['label'] = method.label
  for student, entry in students.items():
    bar = (entry.get('ls') or {}).get('best')
    ce = (entry.get('ce') or {}).get('best')
    for attack in entry['attacks'].values():
      if attack is not None:
        attack['vs_ls'] = _delta(attack['best'], bar)
        attack['vs_ce'] = _delta(attack['best'], ce)
        attack['last_vs_ls'] = _delta(
            attack['last'], (entry.get('ls') or {}).get('last'))
    entry['distillable'], entry['verdict'] = verdict(student, bar,
                                                     entry['attacks'])
    entry['not_applicable'] = [a for a, s in skipped if s == student]
  return {
      'teacher': {'checkpoint': os.path.abspath(teacher), 'arch': arch,
                  'test_accuracy': measured},
      'dataset': config.dataset.name, 'seed': config.seed,
      'students': students,
      'settings': {name: methods.fields(config, methods.get(name)).to_dict()
                   for name in ('ls', 'skeptical')},
      'incomplete': sorted(n for n, r in stage_results.items()
                           if r is None),
      'stale': stage_results.get(pipeline.STALE, []),
  }


def markdown(audit: dict[str, Any]) -> str:
  """audit.md: a table and a verdict per student."""
  teacher = audit['teacher']
  parts = [f'# Audit of {teacher["checkpoint"]} ({teacher["arch"]}, '
           f'{audit["dataset"]}, seed {audit["seed"]})', '',
           f'The attacks see the teacher\'s {teacher.get("api", "logits")}.',
           '',
           f'Teacher test accuracy: '
           f'{results_lib.cell(teacher["test_accuracy"])}. A teacher is '
           'distillable when an attack\'s student beats the LS student '
           '(best epoch); changes in points.', '']
  for student, entry in audit['students'].items():
    parts += [f'## Student {student}', '',
              '| student | best | last | vs LS | vs CE |', '|---|---|---|---|---|']
    for name, label in (('ce', 'alone (CE)'), ('ls', 'alone, LS')):
      e = entry.get(name) or {}
      parts.append(f'| {label} | {results_lib.cell(e.get("best"))} | '
                   f'{results_lib.cell(e.get("last"))} | | |')
    for name, e in entry['attacks'].items():
      e = e or {}
      parts.append(
          f'| {e.get("label", name)} | {results_lib.cell(e.get("best"))} | '
          f'{results_lib.cell(e.get("last"))} | '
          f'{results_lib.signed(e.get("vs_ls"))} | '
          f'{results_lib.signed(e.get("vs_ce"))} |')
    parts += ['', f'**Verdict.** {entry["verdict"]}', '']
    if entry['not_applicable']:
      parts += ['Not applicable to this student: '
                + ', '.join(entry['not_applicable']) + '.', '']
  settings = audit['settings']
  parts += ['## Settings', '',
            f'LS student: ε = {settings["ls"]["epsilon"]} '
            f'({settings["ls"]["spread"]}). Skeptical student: loc = '
            f'{settings["skeptical"]["loc"]}, τ = '
            f'{settings["skeptical"]["temperature"]}, α = '
            f'{settings["skeptical"]["alpha"]}, kd_delay = '
            f'{settings["skeptical"]["kd_delay"]} (choices where the '
            'authors published none; docs/attacks.md).', '']
  if audit['incomplete']:
    parts += ['Not finished: ' + ', '.join(audit['incomplete']), '']
  return '\n'.join(parts)


def run(config: ml_collections.ConfigDict, teacher: str, workdir: str, *,
        attacks: str = 'attacks', students: str | None = None,
        data_free: bool = False, api: str = 'logits') -> dict[str, Any]:
  """Plans, runs (resuming, skipping) and writes the audit.

  Returns:
    The audit.json dictionary, or {'status': 'preempted', 'stage': ...}.

  Raises:
    ValueError: an unknown attack or architecture, a bad checkpoint, a
      stage folder made with other settings.
  """
  methods.load_extensions(config.extensions)
  arch = teacher_arch(config, teacher)
  names = attack_names(attacks, config.dataset.num_classes)
  if data_free:
    names += [n for n in DATA_FREE if n not in names]
  archs = methods.parse_list(students or config.students.archs)
  served = '' if api in ('', 'logits') else api
  serving.resolve(served, config)  # Raises on an unknown transform.
  stages, skipped = plan(config, teacher, arch, workdir, names, archs,
                         served)
  stage_results = pipeline.execute(config, workdir, stages, stages)
  if stage_results.get('status') == 'preempted':
    return stage_results
  audit = gather(config, teacher, arch, stages, stage_results, skipped)
  audit['teacher']['api'] = api
  audit['nonfinite'] = sorted(
      name for name, r in stage_results.items()
      if isinstance(r, dict) and r.get('status') == 'nonfinite')
  if jax.process_index() == 0:
    jsonio.write(os.path.join(workdir, AUDIT_JSON), audit)
    jsonio.write_text(os.path.join(workdir, AUDIT_MD), markdown(audit))
  for entry in audit['students'].values():
    logging.info('%s', entry['verdict'])
  return audit


def define_flags() -> None:
  cli.define_config_flag(
      'config', None, 'configs/<dataset>.py[:ARG]: the dataset, the student '
      'architectures and the attacks\' settings.')
  flags.DEFINE_string('teacher', None, 'The teacher: a stage folder or a '
                      'converted checkpoint.')
  flags.DEFINE_string('workdir', None, 'Where the students and audit.json '
                      'go.')
  flags.DEFINE_string('attacks', 'attacks', "Attacks ('+'/','-separated): "
                      "kd, hard_label, topk_api, skeptical, or a variant "
                      "such as kd_t4_a0.9; 'attacks' = all of them.")
  flags.DEFINE_string('students', None, 'Student architectures; default '
                      'the config\'s students.archs.')
  flags.DEFINE_bool('data_free', False, 'Also DAFL and DeepInversion + KD '
                    '(their config groups\' settings).')
  flags.DEFINE_string('api', 'logits', 'What the attacks see of the '
                      'teacher: logits, probs, topk:K, label, or a '
                      'defense\'s serving transform (stingy, reverse), '
                      "'+'-joined.")
  flags.mark_flags_as_required(['config', 'teacher', 'workdir'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_console()
  runtime.configure()
  engine.install_preemption_handler()
  f = flags.FLAGS
  config = cli.config_or_exit()

  def body():
    outcome = run(config, f.teacher, f.workdir, attacks=f.attacks,
                  students=f.students, data_free=f.data_free, api=f.api)
    if outcome.get('status') != 'preempted':
      print(markdown(outcome))  # The command's output: the audit.
    return outcome

  cli.run_command(body, f.workdir)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
