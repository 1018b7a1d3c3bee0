"""Every table and ablation of the paper as runs of the main command.

  python -m nasty_jax.experiments list                  # all entries
  python -m nasty_jax.experiments run cifar10_table1 --workdir DIR
  python -m nasty_jax.experiments report cifar10_table1 --workdir DIR

Entries are data: runs (config file, argument, `--config.x=y` overrides, a
folder) and the tables and figures drawn from their results.json files; no
training code. Runs with the same name share one folder per seed, so e.g. Figure
4 reuses Table 1's teachers. The paper's numbers sit in the cells (`paper`),
taken from docs/paper.md, which holds every number the paper prints (Tables
1-6); None (reported as n/a) where it prints none: Figures 3-5 show only
curves, and the paper has no label-smoothing student, no attack but KD, no
defense but the nasty teacher and no digits. Entries on other data or schedules
(the CPU and digits entries) carry Table 1's CIFAR-10 numbers for the cells
that have a counterpart there, as a reference, and say so in a note.

CIFAR-10/100 read TFDS's prepared `cifar10` / `cifar100` and Tiny-ImageNet
a prepared `tiny_imagenet` (`python -m nasty_jax.data.prepare NAME`, once,
into the default TFDS data dir; add `--config.dataset.data_dir` overrides
here to use another). The CPU entries on CIFAR-10 (`cifar10_table1_short`,
`cifar10_cpu`, `cifar10_cpu_fig3`, `benchmark_cifar10_cpu`) read the real
CIFAR-10 as JPEGs unpacked as an image folder (see `_CIFAR10_JPEG`).

Ablations follow §4.3's setting as this registry assumes it: the CIFAR-10
ResNet-18 teacher with the CNN and ResNetC-20 students, and, for ω and τ_S,
the CIFAR-100 ResNet-18 teacher with ShuffleNetV2 and MobileNetV2.
"""

from configs import digits
from nasty_jax.experiment_schema import Cell
from nasty_jax.experiment_schema import Entry
from nasty_jax.experiment_schema import Panel
from nasty_jax.experiment_schema import Plot
from nasty_jax.experiment_schema import Run
from nasty_jax.experiment_schema import Series
from nasty_jax.experiment_schema import StageRef
from nasty_jax.experiment_schema import Table

C10 = 'configs/cifar10.py'
C100 = 'configs/cifar100.py'
TINY = 'configs/tinyimagenet.py'
DIGITS = 'configs/digits.py'

NAMES = {
    'net': 'CNN', 'mlp': 'MLP', 'preresnet20': 'ResNetC-20',
    'preresnet32': 'ResNetC-32', 'resnet18': 'ResNet-18',
    'resnet34': 'ResNet-34', 'resnet50': 'ResNet-50',
    'resnext29': 'ResNeXt-29', 'shufflenetv2': 'ShuffleNetV2',
    'mobilenetv2': 'MobileNetV2',
}


def _label(arch: str) -> str:
  return NAMES.get(arch, arch)


def student_table(title: str, teacher_run: str, student_run: str,
                  teacher: str, archs: tuple[str, ...],
                  paper: dict[str, float] | None = None,
                  note: str = '', ls: bool = False) -> Table:
  """Tables 1-3's layout: baseline, KD from the normal and nasty teacher.

  Args:
    title: the table's heading.
    teacher_run: the run holding the `normal` and `nasty` teachers.
    student_run: the run holding the students' stages.
    teacher: the teacher's architecture.
    archs: student columns (the teacher's own arch: "Teacher Self").
    paper: the paper's numbers by key ('normal', 'kd_nasty/net', ...).
    note: printed under the heading.
    ls: a row for the student with label smoothing (`ls/<arch>`).
  """
  paper = paper or {}

  def cell(run, key, versus=None):
    return Cell(run, key, paper.get(key), versus)

  baselines = [cell(student_run, f'baseline/{a}') for a in archs]
  normal = cell(teacher_run, 'normal')
  columns = ('Teacher',) + tuple(
      'Teacher Self' if a == teacher else _label(a) for a in archs)
  rows = [('Student baseline', (None, *baselines))]
  if ls:
    rows.append(('Student, label smoothing', (None, *[
        cell(student_run, f'ls/{a}', b) for a, b in zip(archs, baselines)])))
  rows += [(f'{_label(teacher)} (normal)',
           (normal, *[cell(student_run, f'kd_normal/{a}', b)
                      for a, b in zip(archs, baselines)])),
          (f'{_label(teacher)} (nasty)',
           (cell(teacher_run, 'nasty', normal),
            *[cell(student_run, f'kd_nasty/{a}', b)
              for a, b in zip(archs, baselines)]))]
  return Table(title, columns, tuple(rows), note)


def self_stages(arch: str) -> str:
  """The stages of a "Teacher Self" column: the teacher as its student."""
  return f'normal,nasty,baseline/{arch},kd_normal/{arch},kd_nasty/{arch}'


def teacher_self_table(title: str, runs: dict[str, str],
                       paper: dict[str, dict[str, float]],
                       note: str = '') -> Table:
  """"Teacher Self": each teacher distilled into its own architecture.

  `paper`: by teacher arch, the paper's numbers keyed as `student_table`'s
  ('normal', 'baseline/<arch>', 'kd_nasty/<arch>', ...).
  """
  rows = []
  for arch, run in runs.items():
    numbers = paper.get(arch, {})

    def cell(key, versus=None, numbers=numbers, run=run):
      return Cell(run, key, numbers.get(key), versus)

    normal = cell('normal')
    baseline = cell(f'baseline/{arch}')
    rows.append((_label(arch), (
        normal, cell('nasty', normal), baseline,
        cell(f'kd_normal/{arch}', baseline),
        cell(f'kd_nasty/{arch}', baseline))))
  return Table(title, ('Teacher (normal)', 'Teacher (nasty)',
                       'Student baseline', 'KD from normal',
                       'KD from nasty'), tuple(rows), note)


def pipeline_entry(name: str, title: str, config: str, teacher: str,
                   archs: tuple[str, ...], *, run_name: str,
                   overrides: tuple = (), paper=None, note: str = '',
                   table_note: str = '') -> Entry:
  """One teacher's whole pipeline (a row group of Tables 1-3)."""
  run = Run(run_name, config, teacher, overrides)
  return Entry(name, title, (run,), (
      student_table(title, run_name, run_name, teacher, archs, paper,
                    table_note),), note=note)


# Sweeps (Figures 3-5). `kind` decides what the shared base run provides
# and what each point's run trains:
#   'nasty':   base = normal teacher, baselines, KD from normal; each point
#              trains its own nasty teacher and KD-from-nasty students.
#   'student': base = both teachers and the baselines; each point trains
#              KD-from-normal and KD-from-nasty students.
#   'data':    base = both teachers; each point trains every student.
# The base run also provides the point at the config's own value
# (`base_value`), so that point is not trained twice.
_SWEEP_BASE = {'nasty': ('normal', 'baseline', 'kd_normal'),
               'student': ('normal', 'nasty', 'baseline'),
               'data': ('normal', 'nasty')}
_SWEEP_POINT = {'nasty': ('nasty', 'kd_nasty'),
                'student': ('kd_normal', 'kd_nasty'),
                'data': ('baseline', 'kd_normal', 'kd_nasty')}
_ROLE_LABELS = {'baseline': 'alone', 'kd_normal': 'KD from normal',
                'kd_nasty': 'KD from nasty'}


def _stage_list(groups, archs) -> str:
  """Stage selectors: teachers as they are, student roles per arch."""
  out = []
  for group in groups:
    out += [group] if group in ('normal', 'nasty') else [
        f'{group}/{a}' for a in archs]
  return ','.join(out)


def sweep_entry(name: str, title: str, *, kind: str, base: Run,
                archs: tuple[str, ...], key: str, values: tuple[float, ...],
                base_value: float, xlabel: str, log_x: bool = False,
                scale: float = 1.0, note: str = '') -> Entry:
  """An ablation: one run per value of config field `key`.

  Args:
    name: the entry's name.
    title: the figure it reproduces.
    kind: 'nasty', 'student' or 'data' (see above).
    base: the shared run (its stages are set here).
    archs: the students plotted.
    key: the swept config field.
    values: its other values, each trained by its own run.
    base_value: the base run's value of `key` (plotted value units).
    xlabel: the x axis.
    log_x: a logarithmic x axis.
    scale: config value = plotted value * scale (percent -> fraction).
    note: the entry's note.
  """
  if base_value in values:
    raise ValueError(f'{name}: {base_value} is the base run\'s own value.')
  base = Run(base.name, base.config, base.arg, base.overrides,
             _stage_list(_SWEEP_BASE[kind] + _SWEEP_POINT[kind], archs))
  shared = [('teacher.checkpoint', StageRef(base.name, 'normal'))]
  if kind != 'nasty':
    shared.append(('nasty.checkpoint', StageRef(base.name, 'nasty')))
  short = key.rsplit('.', 1)[-1]
  points = {v: Run(f'{base.name}_{short}{v:g}', base.config, base.arg,
                   base.overrides + tuple(shared) + (
                       (key, f'{v * scale:g}'),
                       ('students.archs', '+'.join(archs))),
                   ','.join(_SWEEP_POINT[kind])) for v in values}
  xs = tuple(sorted(values + (base_value,)))
  sources = [points[x].name if x in points else base.name for x in xs]
  normal = Cell(base.name, 'normal')
  baseline = {a: Cell(base.name, f'baseline/{a}') for a in archs}
  panels, columns, rows = [], [], [[] for _ in xs]

  def add_column(label, cells):
    columns.append(label)
    for row, cell in zip(rows, cells):
      row.append(cell)

  if kind == 'nasty':
    nasty = tuple(Cell(s, 'nasty', versus=normal) for s in sources)
    panels.append(Panel('Teacher', (Series('nasty teacher', nasty),),
                        (('normal teacher', normal),)))
    add_column('Teacher (nasty)', nasty)
  roles = [r for r in _SWEEP_POINT[kind] if r in _ROLE_LABELS]
  for arch in archs:
    series = []
    for role in roles:
      # Against the student alone: the base run's, or (Figure 5b) the one
      # trained on the same fraction of the data.
      versus = [None if role == 'baseline' else
                Cell(s, f'baseline/{arch}') if kind == 'data' else
                baseline[arch] for s in sources]
      cells = tuple(Cell(s, f'{role}/{arch}', versus=v)
                    for s, v in zip(sources, versus))
      series.append(Series(_ROLE_LABELS[role], cells))
      add_column(f'{_label(arch)} {_ROLE_LABELS[role]}', cells)
    references = () if kind == 'data' else (('alone', baseline[arch]),)
    if kind == 'nasty':
      references += (('KD from normal', Cell(
          base.name, f'kd_normal/{arch}', versus=baseline[arch])),)
    panels.append(Panel(f'Student {_label(arch)}', tuple(series),
                        references))
  labels = [f'{xlabel} = {x:g}' + (' (base run)' if s == base.name else '')
            for x, s in zip(xs, sources)]
  table_rows = [(label, tuple(cells)) for label, cells in zip(labels, rows)]
  if kind != 'data':
    # The base run's references under the same columns.
    alone = [None] if kind == 'nasty' else []
    for arch in archs:
      alone += [baseline[arch]] * len(roles)
    table_rows.append(('student alone (base run)', tuple(alone)))
  if kind == 'nasty':
    table_rows.append(('normal teacher, KD from normal (base run)', (
        normal, *[Cell(base.name, f'kd_normal/{a}', versus=baseline[a])
                  for a in archs])))
  table = Table(title, tuple(columns), tuple(table_rows),
                f'Base run {base.name}: the shared teachers and baselines.')
  plot = Plot('figure', title, xlabel, xs, tuple(panels), log_x)
  return Entry(name, title, (base, *points.values()), (table,), (plot,),
               note)


# --- Tables 1-3: the main results. -----------------------------------------

# The paper's numbers (docs/paper.md), keyed as the cells.


def _paper(normal: float, nasty: float,
           **archs: tuple[float | None, float, float]) -> dict[str, float]:
  """One teacher's numbers: its normal and nasty accuracy, and per student
  `arch=(alone, KD from normal, KD from nasty)` (None: not printed)."""
  out = {'normal': normal, 'nasty': nasty}
  for arch, numbers in archs.items():
    for role, value in zip(('baseline', 'kd_normal', 'kd_nasty'), numbers):
      if value is not None:
        out[f'{role}/{arch}'] = value
  return out


# Table 1 (and Table 4's first rows).
_PAPER_C10 = _paper(95.13, 94.56, net=(86.64, 87.75, 82.46),
                    preresnet20=(92.28, 92.49, 88.01),
                    preresnet32=(93.04, 93.31, 89.69),
                    resnet18=(95.13, 95.39, 93.41))
# Table 2. The Teacher Self column prints no student alone ('–'); the
# ResNet-50 and ResNeXt-29 trained alone are Table 5's CIFAR-100 students.
_PAPER_C100 = {
    'resnet18': _paper(77.44, 77.42, shufflenetv2=(71.17, 74.24, 64.49),
                       mobilenetv2=(69.12, 73.11, 3.45),
                       resnet18=(77.44, 79.03, 74.81)),
    'resnet50': _paper(78.12, 77.14, shufflenetv2=(71.17, 74.00, 63.16),
                       mobilenetv2=(69.12, 72.81, 3.36),
                       resnet18=(77.44, 79.65, 71.94),
                       resnet50=(78.12, 80.02, 75.03)),
    'resnext29': _paper(81.85, 80.26, shufflenetv2=(71.17, 74.50, 58.99),
                        mobilenetv2=(69.12, 72.43, 1.55),
                        resnet18=(77.44, 80.84, 68.52),
                        resnext29=(81.85, 83.53, 75.08)),
}
# Table 3; no student alone for Teacher Self's ResNet-50 and ResNeXt-29.
_PAPER_TINY = {
    'resnet18': _paper(58.73, 57.77, shufflenetv2=(55.74, 58.09, 23.16),
                       mobilenetv2=(51.72, 55.99, 1.82),
                       resnet18=(58.73, 61.45, 44.73)),
    'resnet50': _paper(62.01, 60.06, shufflenetv2=(55.74, 58.01, 41.84),
                       mobilenetv2=(51.72, 54.18, 1.41),
                       resnet18=(58.73, 62.01, 48.24),
                       resnet50=(None, 63.91, 51.27)),
    'resnext29': _paper(62.81, 60.21, shufflenetv2=(55.74, 57.87, 42.73),
                        mobilenetv2=(51.72, 54.34, 1.09),
                        resnet18=(58.73, 62.38, 54.53),
                        resnext29=(None, 64.22, 59.54)),
}
_PAPER = {'cifar100': _PAPER_C100, 'tinyimagenet': _PAPER_TINY}
# Table 1's CNN column and teachers, for the entries on other data or
# schedules (the CPU and digits entries), with _TABLE1_NOTE.
_PAPER_C10_CNN = {k: v for k, v in _PAPER_C10.items()
                  if k in ('normal', 'nasty') or k.endswith('/net')}
_TABLE1_NOTE = ('"paper": Table 1\'s numbers, i.e. the paper\'s CIFAR-10 '
                'ResNet-18 setting (ResNet-18 teachers for 160 epochs, the '
                'CNN student for 100), not this one: a reference, not a '
                'target.')

_C10_STUDENTS = ('net', 'preresnet20', 'preresnet32', 'resnet18')
_HUB_STUDENTS = {
    'resnet18': ('shufflenetv2', 'mobilenetv2', 'resnet18'),
    'resnet50': ('shufflenetv2', 'mobilenetv2', 'resnet18', 'resnet50'),
    'resnext29': ('shufflenetv2', 'mobilenetv2', 'resnet18', 'resnext29'),
}
_TEACHERS = tuple(_HUB_STUDENTS)

_FULL_SCHEDULE = ('The reference schedule of the config file '
                  '(docs/reference.md#hyper-parameters), seeds as given to '
                  '`run`.')

ENTRIES = [
    pipeline_entry('cifar10_table1', 'Table 1: CIFAR-10, ResNet-18 teacher',
                   C10, 'resnet18', _C10_STUDENTS, run_name='cifar10/resnet18',
                   paper=_PAPER_C10, note=_FULL_SCHEDULE + ' ω = 0.04 as the '
                   'reference code (the paper text says 0.004; '
                   'docs/reference.md, "Where the paper and the code '
                   'differ").'),
]
for _t in _TEACHERS:
  ENTRIES.append(pipeline_entry(
      f'cifar100_table2_{_t}', f'Table 2: CIFAR-100, {_label(_t)} teacher',
      C100, _t, _HUB_STUDENTS[_t], run_name=f'cifar100/{_t}',
      paper=_PAPER_C100[_t], note=_FULL_SCHEDULE + (
          ' The reference nasty ResNet-50 goes NaN (its issue #17); the '
          'stage then stops and reports its last good epoch.'
          if _t == 'resnet50' else '')))
for _t in _TEACHERS:
  ENTRIES.append(pipeline_entry(
      f'tinyimagenet_table3_{_t}',
      f'Table 3: Tiny-ImageNet, {_label(_t)} teacher', TINY, _t,
      _HUB_STUDENTS[_t], run_name=f'tinyimagenet/{_t}',
      paper=_PAPER_TINY[_t], note=_FULL_SCHEDULE))

for _dataset, _config, _title in (('cifar100', C100, 'CIFAR-100'),
                                  ('tinyimagenet', TINY, 'Tiny-ImageNet')):
  _runs = {t: f'{_dataset}/{t}' for t in _TEACHERS}
  ENTRIES.append(Entry(
      f'{_dataset}_teacher_self',
      f'Teacher Self ({_title}): each teacher distilled into its own '
      'architecture',
      tuple(Run(r, _config, t, stages=self_stages(t))
            for t, r in _runs.items()),
      (teacher_self_table(
          f'Teacher Self, {_title}', _runs, _PAPER[_dataset],
          '"paper": the Teacher Self column of Table '
          f'{2 if _dataset == "cifar100" else 3}, which prints no student '
          'alone; ' + ('those are its ResNet-18 column\'s and Table 5\'s '
                       'ResNet-50 and ResNeXt-29.' if _dataset == 'cifar100'
                       else 'only the ResNet-18 one is printed (its '
                       'ResNet-18 column).')),),
      note=_FULL_SCHEDULE + ' Shares its runs with Table 2/3.'))

# --- Table 4: the adversarial network. -------------------------------------


# Table 4's nasty rows by adversary: the teacher, then the CNN, ResNetC-20,
# ResNetC-32 and ResNet-18 students by KD (the student alone and the normal
# teacher's rows are Table 1's).
_PAPER_TABLE4 = {'resnet18': (94.56, 82.46, 88.01, 89.69, 93.41),
                 'net': (93.82, 77.12, 88.32, 90.40, 94.05),
                 'resnext29': (94.55, 82.75, 88.17, 89.48, 93.75)}


def _adversary_entry() -> Entry:
  base = 'cifar10/resnet18'
  adversaries = {
      'net': StageRef(base, 'baseline/net'),  # The CNN trained alone.
      'resnext29': StageRef('cifar10/resnext29', 'normal'),
  }
  runs = [Run(base, C10, 'resnet18'),
          Run('cifar10/resnext29', C10, 'resnext29', stages='normal')]
  for arch, ref in adversaries.items():
    runs.append(Run(
        f'{base}_adv-{arch}', C10, 'resnet18',
        (('teacher.checkpoint', StageRef(base, 'normal')),
         ('nasty.adversary_arch', arch), ('nasty.adversary_checkpoint', ref)),
        'nasty,kd_nasty'))
  normal = Cell(base, 'normal', _PAPER_C10['normal'])
  baselines = [Cell(base, f'baseline/{a}', _PAPER_C10[f'baseline/{a}'])
               for a in _C10_STUDENTS]
  rows = [('Student baseline', (None, *baselines)),
          ('ResNet-18 (normal)', (normal, *[
              Cell(base, f'kd_normal/{a}', _PAPER_C10[f'kd_normal/{a}'], b)
              for a, b in zip(_C10_STUDENTS, baselines)]))]
  for arch, run in (('resnet18', base), ('net', f'{base}_adv-net'),
                    ('resnext29', f'{base}_adv-resnext29')):
    teacher, *students = _PAPER_TABLE4[arch]
    rows.append((f'ResNet-18 (nasty), adversary {_label(arch)}', (
        Cell(run, 'nasty', teacher, normal), *[
            Cell(run, f'kd_nasty/{a}', number, b)
            for a, number, b in zip(_C10_STUDENTS, students, baselines)])))
  title = 'Table 4: the adversarial network (CIFAR-10, ResNet-18 teacher)'
  return Entry(
      'cifar10_table4', title, tuple(runs),
      (Table(title, ('Teacher',) + tuple(_label(a) for a in _C10_STUDENTS),
             tuple(rows)),),
      note=_FULL_SCHEDULE + ' The CNN adversary is Table 1\'s CNN trained '
      'alone; the ResNeXt-29 adversary a normally trained ResNeXt-29 '
      '(the reference\'s CIFAR10/baseline/resnext29 schedule).')


ENTRIES.append(_adversary_entry())

# --- Table 5: students larger than the teacher. ----------------------------


# Table 5's students; the teachers' accuracies are Tables 1 and 2's.
_PAPER_TABLE5 = {
    'cifar10': _paper(95.13, 94.56, resnet50=(94.98, 94.45, 93.13),
                      resnext29=(95.60, 95.92, 92.20)),
    'cifar100': _paper(77.44, 77.42, resnet50=(78.12, 79.94, 74.28),
                       resnext29=(81.85, 82.14, 78.88)),
}


def _large_students_entry() -> Entry:
  runs, tables = [], []
  for dataset, config, title in (('cifar10', C10, 'CIFAR-10'),
                                 ('cifar100', C100, 'CIFAR-100')):
    base = f'{dataset}/resnet18'
    students = f'{base}_large-students'
    archs = ('resnet50', 'resnext29')
    runs += [Run(base, config, 'resnet18', stages='normal,nasty'),
             Run(students, config, 'resnet18', (
                 ('teacher.checkpoint', StageRef(base, 'normal')),
                 ('nasty.checkpoint', StageRef(base, 'nasty')),
                 ('students.archs', '+'.join(archs))), 'students')]
    tables.append(student_table(f'{title}: ResNet-18 teacher', base,
                                students, 'resnet18', archs,
                                _PAPER_TABLE5[dataset]))
  return Entry('table5', 'Table 5: students larger than the teacher '
               '(reversed KD)', tuple(runs), tuple(tables),
               note=_FULL_SCHEDULE + ' Teachers shared with Tables 1 and 2 '
               '(their paper numbers too: Table 5 prints the students '
               'only).')


ENTRIES.append(_large_students_entry())

# --- Table 6: data-free KD (DAFL), and Figure 6 (DeepInversion). -----------

_PAPER_TABLE6 = {
    'cifar10': {'normal': 95.42, 'dafl/normal': 92.49, 'nasty': 94.54,
                'dafl/nasty': 86.15},
    'cifar100': {'normal': 76.97, 'dafl/normal': 71.06, 'nasty': 76.12,
                 'dafl/nasty': 65.67},
}
for _dataset, _config, _title in (('cifar10', C10, 'CIFAR-10'),
                                  ('cifar100', C100, 'CIFAR-100')):
  _run = f'{_dataset}/resnet34'
  _paper = _PAPER_TABLE6[_dataset]
  _normal = Cell(_run, 'normal', _paper['normal'])
  _dafl_normal = Cell(_run, 'dafl/normal', _paper['dafl/normal'])
  ENTRIES.append(Entry(
      f'{_dataset}_table6',
      f'Table 6: data-free KD (DAFL) from ResNet-34, {_title}',
      (Run(_run, _config, 'resnet34',
           stages='normal,nasty,dafl,deepinversion'),),
      (Table(f'Table 6 ({_title}): DAFL ResNet-18 student',
             ('Teacher', 'DAFL ResNet-18'),
             (('ResNet-34 (normal)', (_normal, _dafl_normal)),
              ('ResNet-34 (nasty)', (
                  Cell(_run, 'nasty', _paper['nasty'], _normal),
                  Cell(_run, 'dafl/nasty', _paper['dafl/nasty'],
                       _dafl_normal))))),),
      note=_FULL_SCHEDULE + ' Stages dafl/normal and dafl/nasty (DAFL, '
      'docs/data_free.md#dafl); deepinversion/normal and '
      'deepinversion/nasty draw Figure 6 into the run folder '
      '(deepinversion/normal_vs_nasty.png).'))

# --- Figures 3-5: ablations. -----------------------------------------------

_FIG_SWEEPS = {
    'fig3': ('Figure 3: the weight ω of the self-undermining term',
             dict(kind='nasty', key='nasty.omega', xlabel='ω', log_x=True)),
    'fig4': ('Figure 4: the students\' temperature τ_S',
             dict(kind='student', key='kd.temperature', xlabel='τ_S',
                  log_x=True)),
    'fig5a': ('Figure 5a: the KD weight α',
              dict(kind='student', key='kd.alpha', xlabel='α')),
    'fig5b': ('Figure 5b: the percentage of training data for the students',
              dict(kind='data', key='dataset.subset_percent',
                   xlabel='% of training data', scale=0.01)),
}
_SUBSET_NOTE = (' Figure 5b: the teachers see all the data; the students '
                '(alone and by KD) a fixed random subset (the reference\'s '
                'subset rule, seed 230).')


def ablation_entries(dataset: str, label: str, base: Run,
                     archs: tuple[str, ...], note: str,
                     **sweeps: tuple[tuple[float, ...], float]
                     ) -> list[Entry]:
  """Figures 3-5 of one setting: `fig3=(values, base value)`, ..."""
  out = []
  for fig, (values, base_value) in sweeps.items():
    title, kwargs = _FIG_SWEEPS[fig]
    figure = title.split(':')[0]
    out.append(sweep_entry(
        f'{dataset}_{fig}', f'{title} ({label})', base=base, archs=archs,
        values=values, base_value=base_value,
        note=note + (_SUBSET_NOTE if fig == 'fig5b' else '') + (
            f' The paper prints no numbers for {figure}, only its curves '
            '(docs/paper.md#figures-3-6), so the paper column is n/a.'),
        **kwargs))
  return out


ENTRIES += ablation_entries(
    'cifar10', 'CIFAR-10', Run('cifar10/resnet18', C10, 'resnet18'),
    ('net', 'preresnet20'), _FULL_SCHEDULE,
    fig3=((0.001, 0.004, 0.01, 0.02, 0.08), 0.04),
    fig4=((1, 2, 8, 16, 20), 4), fig5a=((0.1, 0.3, 0.5, 0.7), 0.9),
    fig5b=((10, 30, 50, 70, 90), 100))
ENTRIES += ablation_entries(
    'cifar100', 'CIFAR-100', Run('cifar100/resnet18', C100, 'resnet18'),
    ('shufflenetv2', 'mobilenetv2'), _FULL_SCHEDULE,
    fig3=((0.001, 0.002, 0.01, 0.02, 0.04), 0.005),
    fig4=((1, 4, 10, 40), 20))

# --- Runs that fit a 2-core CPU. ------------------------------------------

# The real CIFAR-10 as an image folder (<dir>/{train,test}/<class>/*.jpg);
# point `run --set=dataset.manual_dir=DIR --set=dataset.data_dir=DIR2` at
# your copy (the first stage prepares DIR2 from it).
_CIFAR10_JPEG = (('dataset.name', 'image_folder'),
                 ('dataset.manual_dir', 'data/cifar10_images'),
                 ('dataset.data_dir', 'data/tfds'))
_CPU_SCHEDULE = (('dataset.subset_percent', '0.5'),
                 ('students.archs', 'net'),
                 ('optim.sgd.num_epochs', '4'),
                 ('optim.sgd.milestones', '(2,3)'),
                 ('optim.adam.num_epochs', '4'))
ENTRIES.append(pipeline_entry(
    'cifar10_table1_short', 'Table 1, shortened: real CIFAR-10 on a 2-core '
    'CPU', C10, 'preresnet20', ('net',),
    run_name='cifar10_short/preresnet20',
    overrides=_CIFAR10_JPEG + _CPU_SCHEDULE, paper=_PAPER_C10_CNN,
    table_note=_TABLE1_NOTE,
    note='A schedule cut to fit a 2-core CPU, not the paper\'s: a ResNetC-20 '
    '(preresnet20) teacher instead of ResNet-18, the CNN student only (a '
    'ResNetC-20 student stage takes ~20 minutes here), half of the training '
    'set (25,000 images, the reference\'s subset rule) for every stage, '
    '4 epochs per stage: SGD 0.1 x0.1 before epochs 3 and 4 (160 epochs\' '
    '80/120 scaled), CNN with Adam 1e-3; batch 128, τ_A = τ_S = 4, '
    'ω = 0.04, α = 0.9; evaluated on the whole 10,000-image test set. '
    'Data: the real CIFAR-10 as JPEGs unpacked as an image folder '
    '(`<dir>/{train,test}/<class>/*.jpg`, given as `dataset.manual_dir`).'))

# Table 1's shape on the real CIFAR-10, within ~2.5 hours of a quiet 2-core
# CPU: a normal and a nasty ResNetC-20 (seed 0) on all 50,000 training
# images, then the 32-channel CNN alone, with label smoothing and by KD
# from each teacher, for student seeds 0, 1, 2 over the same two teachers.
_CPU_TEACHERS = 'cifar10_cpu/teachers'
_CPU_STUDENTS = 'cifar10_cpu/students'
# ω at the top of Figure 3's range: at the paper's 0.04 a 10-epoch nasty
# teacher was as good a teacher as the normal one (experiments/results/
# README.md).
_CPU_SHORT = (('optim.sgd.num_epochs', '20'), ('optim.sgd.schedule', 'cosine'),
              ('optim.sgd.warmup_epochs', '1'),
              ('optim.adam.num_epochs', '3'),
              ('optim.adam.schedule', 'cosine'), ('nasty.omega', '0.1'))
_CPU_REFS = (('teacher.checkpoint', StageRef(_CPU_TEACHERS, 'normal', seed=0)),
             ('nasty.checkpoint', StageRef(_CPU_TEACHERS, 'nasty', seed=0)),
             ('students.archs', 'net'))
_CPU_RUNS = (
    Run(_CPU_TEACHERS, C10, 'preresnet20', _CIFAR10_JPEG + _CPU_SHORT,
        'normal,nasty', seed=0),
    Run(_CPU_STUDENTS, C10, 'preresnet20', _CIFAR10_JPEG + _CPU_SHORT +
        _CPU_REFS + (('students.methods', 'ce+ls+kd'),), 'students'))
ENTRIES.append(Entry(
    'cifar10_cpu', 'Table 1 on the real CIFAR-10, on a 2-core CPU',
    _CPU_RUNS,
    (student_table(
        'Table 1 shape, real CIFAR-10 (ResNetC-20 teachers, CNN student)',
        _CPU_TEACHERS, _CPU_STUDENTS, 'preresnet20', ('net',),
        paper=_PAPER_C10_CNN, note=_TABLE1_NOTE + ' The paper has no '
        'label-smoothing student.', ls=True),),
    note='A short schedule, a documented deviation: teachers ResNetC-20 '
    '(preresnet20) for 20 epochs of SGD 0.1 (momentum 0.9, wd 5e-4) with a '
    '1-epoch warm-up and a per-step cosine decay, students the 32-channel '
    'CNN for 3 epochs of Adam 1e-3 with cosine decay; batch 128, τ_A = '
    'τ_S = 4, ω = 0.1 (the top of Figure 3\'s range; the paper\'s CIFAR-10 '
    'code uses 0.04 over 160 epochs), α = 0.9, LS ε = 0.1; all 50,000 '
    'training images, '
    'the whole test set; teachers seed 0, students seeds as given. '
    'cifar10_cpu_fig3 adds a nasty teacher at ω 0.06 over the same normal '
    'teacher, and its KD students.'))

# Figure 3 on cifar10_cpu: a nasty teacher at a smaller ω over the same
# normal teacher, and its KD students (seeds as given), beside the entry's
# own ω 0.1. Each point trades teacher accuracy for harm: the aim is a nasty
# teacher within 2 points of the normal one whose KD student still lands at
# least 2 below KD from the normal one.
_CPU_OMEGAS = (0.06,)
_CPU_NORMAL = Cell(_CPU_TEACHERS, 'normal')
_CPU_ALONE = Cell(_CPU_STUDENTS, 'baseline/net')
_CPU_KD_NORMAL = Cell(_CPU_STUDENTS, 'kd_normal/net')


def _cpu_omega_runs(omega: float) -> tuple[Run, Run]:
  """The nasty teacher at `omega` (seed 0) and its KD students."""
  teachers, students = (f'{_CPU_TEACHERS}_omega{omega:g}',
                        f'{_CPU_STUDENTS}_omega{omega:g}')
  overrides = _CIFAR10_JPEG + tuple(
      o for o in _CPU_SHORT if o[0] != 'nasty.omega') + (
          ('nasty.omega', f'{omega:g}'), _CPU_REFS[0])
  return (Run(teachers, C10, 'preresnet20', overrides, 'nasty', seed=0),
          Run(students, C10, 'preresnet20', overrides + (
              ('nasty.checkpoint', StageRef(teachers, 'nasty', seed=0)),
              ('students.archs', 'net'), ('teachers', 'nasty'),
              ('students.methods', 'kd')), 'students'))


_CPU_OMEGA_RUNS = {w: _cpu_omega_runs(w) for w in _CPU_OMEGAS}
_CPU_OMEGA_POINTS = tuple(sorted(
    [(w, runs[0].name, runs[1].name) for w, runs in _CPU_OMEGA_RUNS.items()]
    + [(float(dict(_CPU_SHORT)['nasty.omega']), _CPU_TEACHERS,
        _CPU_STUDENTS)]))
_CPU_OMEGA_NASTY = tuple(Cell(t, 'nasty', versus=_CPU_NORMAL)
                         for _, t, _ in _CPU_OMEGA_POINTS)
_CPU_OMEGA_KD = tuple(Cell(s, 'kd_nasty/net', versus=_CPU_KD_NORMAL)
                      for _, _, s in _CPU_OMEGA_POINTS)
_CPU_OMEGA_TITLE = _FIG_SWEEPS['fig3'][0] + ' (real CIFAR-10, 2-core CPU)'
ENTRIES.append(Entry(
    'cifar10_cpu_fig3', _CPU_OMEGA_TITLE,
    _CPU_RUNS + tuple(r for runs in _CPU_OMEGA_RUNS.values() for r in runs),
    (Table(_CPU_OMEGA_TITLE, ('Teacher (nasty)', 'CNN KD from nasty'),
           tuple((f'ω = {w:g}' + (' (cifar10_cpu)' if t == _CPU_TEACHERS
                                  else ''), (n, k))
                 for (w, t, _), n, k in zip(_CPU_OMEGA_POINTS,
                                            _CPU_OMEGA_NASTY, _CPU_OMEGA_KD))
           + (('normal teacher, KD from normal (cifar10_cpu)',
               (_CPU_NORMAL, Cell(_CPU_STUDENTS, 'kd_normal/net',
                                  versus=_CPU_ALONE))),
              ('student alone (cifar10_cpu)', (None, _CPU_ALONE))),
           'The nasty teachers are seed 0 over cifar10_cpu\'s normal '
           'teacher; the KD students are seeds as given.'),),
    (Plot('figure', _CPU_OMEGA_TITLE, 'ω',
          tuple(w for w, _, _ in _CPU_OMEGA_POINTS),
          (Panel('Teacher', (Series('nasty teacher', _CPU_OMEGA_NASTY),),
                 (('normal teacher', _CPU_NORMAL),)),
           Panel('Student CNN', (Series('KD from nasty', _CPU_OMEGA_KD),),
                 (('alone', _CPU_ALONE),
                  ('KD from normal', _CPU_KD_NORMAL))))),),
    note='cifar10_cpu\'s schedule, normal teacher and students; only the '
    'nasty teacher\'s ω changes (20 epochs, τ_A 4), and the CNN students '
    'distil from it (τ_S 4, α 0.9). The paper prints no numbers for '
    'Figure 3, only its curves (docs/paper.md#figures-3-6), so the paper '
    'column is n/a.'))

# The embedded digits (configs/digits.py: its teacher, student and
# schedule), 3 seeds, each ablation well under an hour on a 2-core CPU. The
# sweeps bracket the config's own ω, τ_S and α like the paper's; ω stays
# below ~0.1, where the lead measured the teacher's training collapse.
_DIGITS = digits.get_config()
_DIGITS_STUDENTS = tuple(_DIGITS.students.archs.split('+'))
_DIGITS_BASE = Run('digits/teacher', DIGITS, _DIGITS.teacher.arch)


def _around(base: float, candidates) -> tuple[float, ...]:
  return tuple(v for v in candidates if v != base)


ENTRIES.append(pipeline_entry(
    'digits_table1', 'Table 1 on the embedded digits', DIGITS,
    _DIGITS.teacher.arch, _DIGITS_STUDENTS, run_name=_DIGITS_BASE.name,
    paper={k: v for k, v in _PAPER_C10.items() if k in ('normal', 'nasty')
           or k.split('/')[-1] in _DIGITS_STUDENTS},
    table_note=_TABLE1_NOTE + ' The paper has no digits: its numbers stand '
    'beside the cells of the same role and student architecture.',
    note='configs/digits.py\'s schedule.'))
ENTRIES += ablation_entries(
    'digits', 'digits', _DIGITS_BASE, _DIGITS_STUDENTS,
    'configs/digits.py\'s schedule.',
    fig3=(_around(_DIGITS.nasty.omega, (0.01, 0.03, 0.06, 0.09)),
          _DIGITS.nasty.omega),
    fig4=(_around(_DIGITS.kd.temperature, (1, 2, 4, 8, 16)),
          _DIGITS.kd.temperature),
    fig5a=(_around(_DIGITS.kd.alpha, (0.1, 0.3, 0.5, 0.7, 0.9)),
           _DIGITS.kd.alpha),
    fig5b=((10, 30, 50, 70), 100))

# Table 6 and Figure 6 on digits: DAFL and DeepInversion against Table 1's
# digits teachers (configs/digits.py's data-free block, enabled here).
_DIGITS_DATAFREE = 'digits/datafree'
_digits_normal = Cell(_DIGITS_BASE.name, 'normal')
_digits_dafl_normal = Cell(_DIGITS_DATAFREE, 'dafl/normal')
ENTRIES.append(Entry(
    'digits_table6', 'Table 6 and Figure 6 on the embedded digits',
    (_DIGITS_BASE,
     Run(_DIGITS_DATAFREE, DIGITS, _DIGITS.teacher.arch, (
         ('teacher.checkpoint', StageRef(_DIGITS_BASE.name, 'normal')),
         ('nasty.checkpoint', StageRef(_DIGITS_BASE.name, 'nasty')),
         ('dafl.enabled', 'true'), ('deepinversion.enabled', 'true'),
         # The reference's 32-channel CNN as DAFL's student: the digits
         # 8-channel CNN learned ~57% from generated images
         # from either teacher (seed 0), too little to compare them.
         ('model.num_channels', '32')),
         'dafl,deepinversion')),
    (Table('Table 6 (digits): DAFL CNN student',
           ('Teacher', f'DAFL {_label(_DIGITS.dafl.student_arch)}'),
           ((f'{_label(_DIGITS.teacher.arch)} (normal)',
             (_digits_normal, _digits_dafl_normal)),
            (f'{_label(_DIGITS.teacher.arch)} (nasty)',
             (Cell(_DIGITS_BASE.name, 'nasty', None, _digits_normal),
              Cell(_DIGITS_DATAFREE, 'dafl/nasty', None,
                   _digits_dafl_normal)))),
           'The paper\'s Table 6 distils ResNet-34 teachers into a '
           'ResNet-18 DAFL student on CIFAR; no cell here has that '
           'student, so the paper column is n/a.'),),
    note='configs/digits.py\'s data-free block (see its docstring) with '
    'the 32-channel CNN as DAFL student; the teachers are '
    'digits_table1\'s. Figure 6: deepinversion/'
    'normal_vs_nasty.png in each seed\'s digits/datafree folder.'))

# --- Defense x attack benchmarks and audits (docs/defenses.md). ------------

_DEFENSES = ('normal', 'nasty', 'stingy', 'reverse', 'cmim')
_DEFENSE_LABELS = {'normal': 'normal (no defense)', 'nasty': 'nasty',
                   'stingy': 'Stingy', 'reverse': 'reverse ranking',
                   'cmim': 'CMIM'}


def defense_matrix(title: str, defenses: tuple[str, ...],
                   teacher_cells: dict[str, Cell],
                   attacks: tuple[tuple[str, str | dict[str, str], str,
                                        str], ...],
                   note: str = '', paper: dict[str, float] | None = None,
                   bar: str | None = None) -> Table:
  """Rows = defenses, columns = the teacher's own accuracy then attacks.

  Args:
    title: the table's heading.
    defenses: teacher-side methods, 'normal' first.
    teacher_cells: each defense's own accuracy cell.
    attacks: (column label, run, stage prefix, student arch) per attack;
      the cell is `<prefix>_<defense>/<arch>` of the run, or of
      `run[defense]` where defenses' students sit in different runs.
    note: printed under the heading.
    paper: the paper's numbers by cell key ('nasty', 'kd_nasty/net', ...).
    bar: the run of the LS students (`ls/<arch>`) every cell is compared
      with; by default the cell's own run.
  """
  paper = paper or {}
  normal = teacher_cells['normal']
  normal = Cell(normal.run, normal.key, paper.get(normal.key, normal.paper))
  rows = []
  for defense in defenses:
    own = teacher_cells[defense]
    own = normal if defense == 'normal' else Cell(
        own.run, own.key, paper.get(own.key, own.paper), normal)
    cells = [own]
    for _, run, prefix, arch in attacks:
      run = run if isinstance(run, str) else run[defense]
      key = f'{prefix}_{defense}/{arch}'
      cells.append(Cell(run, key, paper.get(key),
                        Cell(bar or run, f'ls/{arch}')))
    rows.append((_DEFENSE_LABELS.get(defense, defense), tuple(cells)))
  return Table(title, ('Teacher',) + tuple(a[0] for a in attacks),
               tuple(rows), note, verdict=True)


# Digits: the teachers of digits_table1, CMIM trained beside them; the
# digits CNN against every attack but the Skeptical student, which needs
# its multi-exit ResNet-18 (here 8 channels wide) and so its own students.
_BENCH = 'digits/bench'
_BENCH_R18 = 'digits/bench_resnet18'
_BENCH_TEACHERS = '+'.join(_DEFENSES)
_BENCH_REFS = (('teacher.checkpoint', StageRef(_DIGITS_BASE.name, 'normal')),
               ('nasty.checkpoint', StageRef(_DIGITS_BASE.name, 'nasty')),
               ('teachers', _BENCH_TEACHERS))
_BENCH_RUNS = (
    _DIGITS_BASE,
    Run(_BENCH, DIGITS, _DIGITS.teacher.arch, _BENCH_REFS + (
        ('students.methods', 'ce+ls+kd_t1_a0.5+kd_t1_a0.9+kd_t4_a0.5+'
         'kd_t4_a0.9+kd_t20_a0.5+kd_t20_a0.9+hard_label+topk2+topk5'),)),
    Run(_BENCH_R18, DIGITS, _DIGITS.teacher.arch, _BENCH_REFS + (
        ('cmim.checkpoint', StageRef(_BENCH, 'cmim')),
        ('students.archs', 'resnet18'), ('model.width', '8'),
        ('students.methods', 'ce+ls+skeptical')), 'students'))
_DIGITS_ATTACKS = tuple(
    (f'KD τ={t} α={a}', _BENCH, f'kd_t{t}_a{a}', 'net')
    for t in (1, 4, 20) for a in (0.5, 0.9)) + (
        ('hard-label', _BENCH, 'hard_label', 'net'),
        ('top-2', _BENCH, 'topk2', 'net'), ('top-5', _BENCH, 'topk5', 'net'),
        ('Skeptical (ResNet-18/8)', _BENCH_R18, 'skeptical', 'resnet18'))
_DIGITS_TEACHER_CELLS = {
    'normal': Cell(_DIGITS_BASE.name, 'normal'),
    'nasty': Cell(_DIGITS_BASE.name, 'nasty'),
    'stingy': Cell(_BENCH, 'stingy'), 'reverse': Cell(_BENCH, 'reverse'),
    'cmim': Cell(_BENCH, 'cmim')}
_BENCH_NOTE = (
    'configs/digits.py\'s schedule for every stage. Cells: the knockoff '
    'student\'s test accuracy (best epoch) and, in parentheses, its change '
    'against the LS student (ε = 0.1) of the same architecture: > 0 means '
    'the attack beats the bar, the teacher is distillable by it. Students: '
    f'the {_DIGITS.model.num_channels}-channel CNN; the Skeptical student a '
    'multi-exit ResNet-18 of '
    'base width 8 (against a ResNet-18/8 LS student). Stingy keeps the top '
    '2 logits (ratio 0.2), reverse reverses the non-argmax ranking, both '
    'over the normal teacher; CMIM λ = 1 over τ ∈ {1, 2, 4, 8}, in-batch '
    'centroids (reconstructions, docs/defenses.md).')
# Table 1's teachers and KD into the CNN at its τ_S = 4, α = 0.9.
_PAPER_KD = {'normal': _PAPER_C10['normal'], 'nasty': _PAPER_C10['nasty'],
             'kd_t4_a0.9_normal/net': _PAPER_C10['kd_normal/net'],
             'kd_t4_a0.9_nasty/net': _PAPER_C10['kd_nasty/net']}
_PAPER_KD_NOTE = (_TABLE1_NOTE + ' The paper has no digits: only the '
                  'teachers and KD at its τ_S = 4, α = 0.9 into the CNN '
                  'have a counterpart (no other attack or defense).')
ENTRIES.append(Entry(
    'benchmark_digits', 'Defenses x attacks on the embedded digits',
    _BENCH_RUNS,
    (defense_matrix('Defense x attack (digits)', _DEFENSES,
                    _DIGITS_TEACHER_CELLS, _DIGITS_ATTACKS, _PAPER_KD_NOTE,
                    _PAPER_KD),
     Table('The bars: students alone (digits)', ('CE', 'LS'), (
         (f'CNN ({_DIGITS.model.num_channels} channels)', (
             Cell(_BENCH, 'baseline/net', _PAPER_C10['baseline/net']),
             Cell(_BENCH, 'ls/net'))),
         ('ResNet-18 (width 8)', (
             Cell(_BENCH_R18, 'baseline/resnet18',
                  _PAPER_C10['baseline/resnet18']),
             Cell(_BENCH_R18, 'ls/resnet18')))),
           _TABLE1_NOTE + ' The paper has no digits: its CNN and ResNet-18 '
           '(full width) trained alone stand beside the CE students; it has '
           'no LS student.')),
    note=_BENCH_NOTE))
ENTRIES.append(Entry(
    'digits_audit', 'Audit of the digits normal and nasty teachers',
    _BENCH_RUNS,
    (defense_matrix('Audit (digits): every attack against the LS student',
                    ('normal', 'nasty'), _DIGITS_TEACHER_CELLS,
                    _DIGITS_ATTACKS, _PAPER_KD_NOTE, _PAPER_KD),),
    note=_BENCH_NOTE + ' The normal and nasty rows of benchmark_digits.'))

# CIFAR-10 on the CPU: cifar10_cpu's teachers, its LS and KD students
# (shared runs: its record or workdir gives them), and what fits beside
# them: KD from the served defenses and hard-label KD from every teacher.
# CMIM would need a third 20-epoch teacher: left out. The nasty teacher's
# hard-label students have their own run, as the served defenses need the
# normal teacher listed with them.
_CPU_BENCH = 'cifar10_cpu/bench'
_CPU_BENCH_NASTY = 'cifar10_cpu/bench_nasty'
_CPU_DEFENSES = ('normal', 'nasty', 'stingy', 'reverse')
_CPU_KD_RUNS = {'normal': _CPU_STUDENTS, 'nasty': _CPU_STUDENTS,
                'stingy': _CPU_BENCH, 'reverse': _CPU_BENCH}
_CPU_HARD_RUNS = {'normal': _CPU_BENCH, 'nasty': _CPU_BENCH_NASTY,
                  'stingy': _CPU_BENCH, 'reverse': _CPU_BENCH}
ENTRIES.append(Entry(
    'benchmark_cifar10_cpu',
    'Defenses x attacks on the real CIFAR-10, on a 2-core CPU (a subset)',
    _CPU_RUNS + (
        Run(_CPU_BENCH, C10, 'preresnet20', _CIFAR10_JPEG + _CPU_SHORT +
            _CPU_REFS + (('teachers', 'normal+stingy+reverse'),
                         ('students.methods', 'kd+hard_label')), 'students'),
        Run(_CPU_BENCH_NASTY, C10, 'preresnet20', _CIFAR10_JPEG +
            _CPU_SHORT + _CPU_REFS + (('teachers', 'nasty'),
                                      ('students.methods', 'hard_label')),
            'students')),
    (defense_matrix(
        'Defense x attack (CIFAR-10, ResNetC-20 teachers, CNN students)',
        _CPU_DEFENSES,
        {'normal': Cell(_CPU_TEACHERS, 'normal'),
         'nasty': Cell(_CPU_TEACHERS, 'nasty'),
         'stingy': Cell(_CPU_BENCH, 'stingy'),
         'reverse': Cell(_CPU_BENCH, 'reverse')},
        (('KD τ=4 α=0.9', _CPU_KD_RUNS, 'kd', 'net'),
         ('hard-label', _CPU_HARD_RUNS, 'hard_label', 'net')),
        _TABLE1_NOTE + ' Only the teachers and KD have a counterpart (no '
        'other attack or defense).', _PAPER_C10_CNN, bar=_CPU_STUDENTS),),
    note='cifar10_cpu\'s schedule, teachers and students (baseline, LS and '
    'KD from the normal and nasty teachers, the same runs); students seeds '
    'as given. A subset of the audit\'s attacks (KD at the paper\'s τ and '
    'α, and hard-label KD) and of the defenses (no CMIM teacher). Stingy '
    'keeps the top 2 logits (ratio 0.2), reverse reverses the non-argmax '
    'ranking, both over the normal teacher (reconstructions, '
    'docs/defenses.md).'))
