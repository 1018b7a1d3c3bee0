"""The method registry: every training objective, registered once.

A *method* is what one stage of the pipeline optimises. Its role says which
side of the distillation it is on:

* `TEACHER`: a teacher-side method, i.e. a defense (or the plain `normal`
  teacher): it yields a teacher that students then learn from.
* `STUDENT`: a student-side method, i.e. a KD attack (or the plain student
  trained alone): it yields a student, from a teacher or without one.

Everything else reads this registry: the steps take a method's objective,
the pipeline plans stages from the methods a config names, results and
reports label them, the benchmark times them. A method brings:

* an objective (`objective(fields) -> fn(Outputs) -> (loss, terms)`), a
  pure function over the trained network's logits, the frozen networks'
  logits and the labels (losses.py holds the losses themselves), or a
  stage of its own (`program`, DAFL; `runner`, DeepInversion);
* its config group `config.<group>` and the group's defaults (every config
  gets them; dataset configs may change them);
* the frozen networks it reads, by role: 'teacher' (the network under
  attack) or any other name (bound, for a teacher-side method, to the
  normal teacher unless `<group>.<role>_checkpoint` is set: nasty's
  'adversary');
* how stages and tables name it.

New methods come from user code (`load_extensions`): a module that calls
`register(...)` at import, named in `config.extensions`. docs/methods.md
walks through one.
"""

import dataclasses
import importlib
import importlib.util
import os
import re
import sys
import types
from typing import Any, Callable, Mapping

import jax
import ml_collections

from nasty_jax import losses

TEACHER = 'teacher'
STUDENT = 'student'
ROLES = (TEACHER, STUDENT)


@dataclasses.dataclass(frozen=True)
class Outputs:
  """What an objective sees at one train step.

  Attributes:
    logits: the trained network's logits (B, C), float32 (a tuple of such
      arrays for a multi-head network, final head first).
    labels: (B,) integer labels.
    frozen: logits of each frozen network by role ('teacher', 'adversary'),
      after any serving transform; the objective stop-gradients nothing
      itself, frozen logits carry no gradient anyway.
    epoch: the 0-based epoch of this step (a traced int32).
  """
  logits: Any
  labels: jax.Array
  frozen: Mapping[str, jax.Array]
  epoch: jax.Array


# Outputs -> (scalar loss, {name: scalar} logged as train/<name>).
Objective = Callable[[Outputs], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Method:
  """One registered method (see the module docstring).

  Attributes:
    name: the registry key, used in `config.teachers` / `students.methods`.
    role: TEACHER or STUDENT.
    objective: `fields -> Objective`, fields being the method's config
      group; None for a method with a stage of its own.
    defaults: the config group's fields and their defaults.
    group: the config group's name (default: `name`).
    frozen: the frozen networks the objective reads, by role.
    stage: the prefix of its stages' names (default: `name`); a student
      that reads a teacher names its stages `<stage>_<teacher>/<arch>`, one
      that does not `<stage>/<arch>`, a teacher `<stage>`.
    label: how tables and reports name it.
    description: one line for `--help` and docs.
    program: builds a custom stage program for the engine instead of the
      supervised one (`programs.Program`; DAFL), or 'module:function' to
      import it only when a stage runs.
    runner: runs a whole custom stage (`(config, spec, stage_dir) ->
      result`; DeepInversion, whose image synthesis is a loop of its own),
      or 'module:function'.
    per_teacher_stage: a custom stage named `<stage>/<teacher>`, its arch
      from `<group>.student_arch` and switched on by `<group>.enabled`
      (the data-free attacks), rather than one per student arch.
    student_archs: for a method with a network of its own, the student
      architecture it trains in place of each one it applies to (the
      Skeptical student's multi-exit twin); None = the student itself.
    fixed: fields that override the config group (a `variant`'s).
    transform: a teacher-side defense that retrains nothing: `(fields,
      num_classes) -> (logits -> logits)`, a serving transform of the
      normal teacher's outputs (`serving.py`), or 'module:function'.
  """
  name: str
  role: str
  objective: Callable[[ml_collections.ConfigDict], Objective] | None = None
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  group: str | None = None
  frozen: tuple[str, ...] = ()
  stage: str | None = None
  label: str = ''
  description: str = ''
  program: Callable[..., Any] | str | None = None
  runner: Callable[..., Any] | str | None = None
  per_teacher_stage: bool = False
  student_archs: Mapping[str, str] | None = None
  fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  transform: Callable[..., Any] | str | None = None

  def __post_init__(self):
    if self.role not in ROLES:
      raise ValueError(f'Method {self.name!r}: role must be one of {ROLES}; '
                       f'got {self.role!r}.')
    kinds = [k for k in (self.objective, self.program, self.runner,
                         self.transform) if k is not None]
    if len(kinds) != 1:
      raise ValueError(f'Method {self.name!r} needs exactly one of '
                       'objective, program, runner and transform.')
    if self.transform is not None and self.role != TEACHER:
      raise ValueError(f'Method {self.name!r}: a serving transform is a '
                       'teacher-side defense.')

  @property
  def program_fn(self) -> Callable[..., Any] | None:
    return _resolve(self.program)

  @property
  def runner_fn(self) -> Callable[..., Any] | None:
    return _resolve(self.runner)

  @property
  def transform_fn(self) -> Callable[..., Any] | None:
    return _resolve(self.transform)

  @property
  def config_group(self) -> str:
    return self.group or self.name

  @property
  def stage_prefix(self) -> str:
    return self.stage or self.name

  @property
  def reads_teacher(self) -> bool:
    """A student-side method distilling from the teacher under attack."""
    return self.role == STUDENT and (TEACHER in self.frozen
                                     or self.per_teacher_stage)

  def trained_arch(self, student: str) -> str:
    """The architecture this method trains for student architecture
    `student`.

    Raises:
      ValueError: the method has no network for that student.
    """
    if self.student_archs is None:
      return student
    if student not in self.student_archs:
      raise ValueError(
          f'Method {self.name!r} trains a network of its own, defined for '
          f'students {", ".join(sorted(self.student_archs))}; not for '
          f'{student!r}.')
    return self.student_archs[student]

  def stage_name(self, teacher: str | None = None, arch: str | None = None
                 ) -> str:
    """The name of this method's stage for `teacher` and student `arch`."""
    if self.role == TEACHER:
      return self.stage_prefix
    if self.per_teacher_stage:
      return f'{self.stage_prefix}/{teacher}'
    if self.reads_teacher:
      return f'{self.stage_prefix}_{teacher}/{arch}'
    return f'{self.stage_prefix}/{arch}'


def _resolve(ref):
  """A callable, or 'module:function' imported now (heavy stage code)."""
  if not isinstance(ref, str):
    return ref
  module, _, function = ref.partition(':')
  return getattr(importlib.import_module(module), function)


_REGISTRY: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
  """Adds `method` to the registry and returns it.

  Raises:
    ValueError: a method of that name exists (unless `replace`), or its
      stage prefix is another method's.
  """
  if method.name in _REGISTRY and not replace:
    raise ValueError(f'A method named {method.name!r} is already registered; '
                     'pick another name (or pass replace=True).')
  for other in _REGISTRY.values():
    if (other.name != method.name and other.role == method.role
        and other.stage_prefix == method.stage_prefix):
      raise ValueError(f'Method {method.name!r} would name its stages like '
                       f'{other.name!r} ({method.stage_prefix!r}); set '
                       '`stage=` to another prefix.')
  _REGISTRY[method.name] = method
  return method


_VARIANTS = (
    # kd_t<T>_a<alpha>: KD at that temperature and weight.
    (re.compile(r'kd_t(\d+(?:\.\d+)?)_a(\d+(?:\.\d+)?)'),
     lambda m: ('kd', f'KD τ={m[1]} α={m[2]}',
                dict(temperature=float(m[1]), alpha=float(m[2])))),
    # topk<K>: top-k KD keeping K logits.
    (re.compile(r'topk(\d+)'),
     lambda m: ('topk_api', f'top-{m[1]} KD', dict(k=int(m[1])))),
)


def get(name: str) -> Method:
  """The method `name` (a sweep variant like kd_t4_a0.9 or topk5 is made on
  first use); raises naming the valid ones."""
  if name not in _REGISTRY:
    for pattern, make in _VARIANTS:
      match = pattern.fullmatch(name)
      if match:
        base, label, fields_ = make(match)
        return variant(base, name, label, **fields_)
    raise ValueError(f'Unknown method {name!r}. Registered: '
                     f'{", ".join(sorted(_REGISTRY))}. A method of your own '
                     'is registered from a module named in '
                     '--config.extensions (docs/methods.md).')
  return _REGISTRY[name]


def names(role: str | None = None) -> tuple[str, ...]:
  """Registered method names (of one role), in registration order."""
  return tuple(n for n, m in _REGISTRY.items()
               if role is None or m.role == role)


def by_stage_prefix(prefix: str) -> Method | None:
  """The student method whose stages start with `prefix`, if any."""
  for method in _REGISTRY.values():
    if method.role == STUDENT and method.stage_prefix == prefix:
      return method
  return None


def variant(base: str, name: str, label: str, **fields: Any) -> Method:
  """A registered copy of method `base` with some fields fixed.

  For sweeps in one run (the audit's KD temperatures, top-k sizes): the
  copy has its own name, stage prefix and label, reads the base's config
  group, and `fields` override it. Registering the same variant again
  returns it.
  """
  method = get(base)
  if name in _REGISTRY:
    return _REGISTRY[name]
  return register(dataclasses.replace(
      method, name=name, stage=name, label=label,
      group=method.config_group, fixed={**method.fixed, **fields}))


def parse_list(text: str) -> list[str]:
  """'a+b,c' -> ['a', 'b', 'c'] ('+' fits inside a config argument)."""
  return [x.strip() for x in text.replace('+', ',').split(',') if x.strip()]


@dataclasses.dataclass(frozen=True)
class Unset:
  """A default of None that config overrides may set to a `kind` value."""
  kind: type = str


def _group(defaults: Mapping[str, Any]) -> ml_collections.ConfigDict:
  # A fresh FieldReference per config: a shared one would link configs.
  return ml_collections.ConfigDict({
      k: ml_collections.FieldReference(None, v.kind) if isinstance(v, Unset)
      else v for k, v in defaults.items()})


def fields(config: ml_collections.ConfigDict, method: Method
           ) -> ml_collections.ConfigDict:
  """The method's settings: its defaults, overridden by config.<group>."""
  out = _group(method.defaults)
  group = method.config_group
  if group in config:
    for key, value in config[group].items():
      out[key] = value
  for key, value in method.fixed.items():
    out[key] = value
  return out


def config_groups() -> dict[str, ml_collections.ConfigDict]:
  """Every registered method's config group with its defaults."""
  out = {}
  for method in _REGISTRY.values():
    if method.defaults:
      out.setdefault(method.config_group, _group(method.defaults))
  return out


def load_extensions(spec: str | None) -> list[types.ModuleType]:
  """Imports the user modules named in `spec` (their import registers).

  Args:
    spec: '+'/','-separated module names (importable from the working
      directory or sys.path) or paths of .py files; '' or None: none.

  Returns:
    The modules, in order. Importing one twice is a no-op.

  Raises:
    ValueError: a module that cannot be found or fails to import.
  """
  modules = []
  for item in parse_list(spec or ''):
    try:
      if item.endswith('.py') or os.sep in item:
        path = os.path.abspath(item)
        name = '_nasty_jax_extension_' + os.path.splitext(
            os.path.basename(path))[0]
        if name in sys.modules:
          modules.append(sys.modules[name])
          continue
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or not os.path.exists(path):
          raise FileNotFoundError(f'no file {path}')
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        loader_spec.loader.exec_module(module)
      else:
        if os.getcwd() not in sys.path:
          sys.path.insert(0, os.getcwd())
        module = importlib.import_module(item)
    except Exception as e:  # pylint: disable=broad-except
      sys.modules.pop('_nasty_jax_extension_' + os.path.splitext(
          os.path.basename(item))[0], None)
      raise ValueError(f'Cannot load extension {item!r} (config.extensions): '
                       f'{type(e).__name__}: {e}') from e
    modules.append(module)
  return modules


# --- The built-in methods. ---------------------------------------------------


def _ce_objective(fields_: ml_collections.ConfigDict) -> Objective:
  del fields_

  def objective(out: Outputs):
    ce = losses.cross_entropy(out.logits, out.labels)
    return ce, {'ce': ce, 'kl': jax.numpy.zeros_like(ce)}

  return objective


def _nasty_objective(f: ml_collections.ConfigDict) -> Objective:
  temperature, omega = float(f.temperature), float(f.omega)

  def objective(out: Outputs):
    return losses.nasty_loss(out.logits, out.frozen['adversary'], out.labels,
                             temperature=temperature, omega=omega)

  return objective


def _kd_objective(f: ml_collections.ConfigDict) -> Objective:
  temperature, alpha = float(f.temperature), float(f.alpha)

  def objective(out: Outputs):
    return losses.kd_loss(out.logits, out.frozen[TEACHER], out.labels,
                          temperature=temperature, alpha=alpha)

  return objective


register(Method(
    'normal', TEACHER, _ce_objective, group='teacher',
    label='normal', description='the plain teacher: cross-entropy '
    '(the reference train_scratch.py)'))
register(Method(
    'nasty', TEACHER, _nasty_objective,
    defaults=dict(temperature=4.0, omega=0.04, adversary_arch=Unset(),
                  adversary_checkpoint=Unset(), checkpoint=Unset()),
    frozen=('adversary',), label='nasty',
    description='self-undermining KD: CE - omega * tau^2 * KL(nasty || '
    'adversary), the adversary a frozen normal network (train_nasty.py)'))
register(Method(
    'ce', STUDENT, _ce_objective, stage='baseline', label='student alone',
    description='the student trained alone with cross-entropy (the '
    'baseline every KD student is compared with)'))
register(Method(
    'kd', STUDENT, _kd_objective,
    defaults=dict(temperature=4.0, alpha=0.9), frozen=(TEACHER,),
    label='KD', description='Hinton KD: alpha * tau^2 * KL(teacher || '
    'student) + (1 - alpha) * CE (train_kd.py)'))

# --- Defenses: teacher-side methods beyond nasty (docs/defenses.md). --------


def _cmim_objective(f: ml_collections.ConfigDict) -> Objective:
  temperatures = tuple(float(t) for t in f.temperatures)
  lam, stop = float(f.lam), bool(f.stop_centroid)

  def objective(out: Outputs):
    return losses.cmim_loss(out.logits, out.labels, temperatures, lam, stop)

  return objective


register(Method(
    'stingy', TEACHER, transform='nasty_jax.serving:stingy',
    defaults=dict(sparse_ratio=Unset(float)), label='stingy',
    description='Stingy teacher: the normal teacher served with its top-k '
    'logits only (k = int(sparse_ratio * C); 0.2 for 10 classes, else 0.1)'))
register(Method(
    'reverse', TEACHER, transform='nasty_jax.serving:reverse',
    label='reverse', description='the normal teacher served with its argmax '
    'kept and the other classes\' ranking reversed'))
register(Method(
    'cmim', TEACHER, _cmim_objective,
    defaults=dict(lam=1.0, temperatures=(1.0, 2.0, 4.0, 8.0),
                  stop_centroid=True, checkpoint=Unset()),
    label='CMIM', description='a teacher trained with CE + lam * the mean '
    'over temperatures of the in-batch CMI of its outputs per label '
    '(a reconstruction of Ye et al. 2025)'))


# --- Attacks: student-side methods beyond plain KD (docs/attacks.md). ------


def _ls_objective(f: ml_collections.ConfigDict) -> Objective:
  epsilon, spread = float(f.epsilon), str(f.spread)

  def objective(out: Outputs):
    loss = losses.label_smoothing_cross_entropy(out.logits, out.labels,
                                                epsilon, spread)
    return loss, {'ce': losses.cross_entropy(out.logits, out.labels)}

  return objective


def _top_k_objective(f: ml_collections.ConfigDict) -> Objective:
  k, temperature, alpha = int(f.k), float(f.temperature), float(f.alpha)

  def objective(out: Outputs):
    target = losses.top_k_logits(out.frozen[TEACHER], k)
    return losses.kd_loss(out.logits, target, out.labels,
                          temperature=temperature, alpha=alpha)

  return objective


def _skeptical_objective(f: ml_collections.ConfigDict) -> Objective:
  loc, kd_delay = int(f.loc), int(f.kd_delay)
  temperature, alpha = float(f.temperature), float(f.alpha)

  def objective(out: Outputs):
    if not isinstance(out.logits, (tuple, list)) or not (
        0 <= loc < len(out.logits)):
      raise ValueError(f'skeptical.loc={loc} needs a multi-head student '
                       'with that head (heads are numbered final = 0).')
    return losses.skeptical_loss(
        tuple(out.logits), out.frozen[TEACHER], out.labels, loc=loc,
        temperature=temperature, alpha=alpha, distil=out.epoch > kd_delay)

  return objective


register(Method(
    'ls', STUDENT, _ls_objective,
    defaults=dict(epsilon=0.1, spread='uniform'), label='LS student',
    description='the student alone with label smoothing: the bar a KD '
    'attack must beat for the teacher to count as distillable'))
register(Method(
    'hard_label', STUDENT, _top_k_objective,
    defaults=dict(k=1, temperature=4.0, alpha=0.9), frozen=(TEACHER,),
    label='hard-label KD', description='KD on the teacher\'s argmax only, '
    'what a label-only API leaks (top-k KD with k = 1)'))
register(Method(
    'topk_api', STUDENT, _top_k_objective,
    defaults=dict(k=2, temperature=4.0, alpha=0.9), frozen=(TEACHER,),
    label='top-k KD', description='KD on the teacher\'s top-k logits, the '
    'rest -inf before the temperature (a top-k API, renormalised)'))
register(Method(
    'skeptical', STUDENT, _skeptical_objective,
    defaults=dict(loc=1, temperature=4.0, alpha=0.9, kd_delay=-1),
    frozen=(TEACHER,), label='Skeptical student',
    student_archs={'resnet18': 'resnet18_self',
                   '_tiny_resnet': '_tiny_resnet18_self'},
    description='a multi-exit student taking the teacher into an '
    'auxiliary head and self-distilling its final head (Kundu et al. 2021)'))


def attack_set(num_classes: int) -> list[str]:
  """The audit's default attacks, variants registered (docs/attacks.md).

  KD at tau in {1, 4, 20} x alpha in {0.5, 0.9}, hard-label KD (= top-k
  KD at k = 1, tested), top-k KD at k in {2, 5} (for 10 classes; 2% and 5%
  of the classes, at least 2 and 5, otherwise), and the Skeptical student.
  """
  names = [get(f'kd_t{t}_a{a}').name for t in (1, 4, 20) for a in (0.5, 0.9)]
  names.append('hard_label')
  for k in (2, 5):
    k = k if num_classes <= 10 else max(k, k * num_classes // 100)
    names.append(get(f'topk{k}').name)
  names.append('skeptical')
  return names


def expand(names: list[str], num_classes: int) -> list[str]:
  """Method names with 'attacks' replaced by `attack_set` (in order, once)."""
  out = []
  for name in names:
    for expanded in (attack_set(num_classes) if name == 'attacks'
                     else [name]):
      if expanded not in out:
        out.append(expanded)
  return out


# The data-free attacks of the paper's section 4.4 (docs/data_free.md): one
# stage per teacher, off unless `<group>.enabled`. Defaults: the CIFAR-10
# settings of the original scripts (configs/cifar100.py changes DAFL's
# loss weights).
register(Method(
    'dafl', STUDENT, program='nasty_jax.data_free.dafl:program',
    defaults=dict(
        enabled=False, student_arch='resnet18', num_epochs=2000,
        iters_per_epoch=120, batch_size=1024, latent_dim=1000,
        lr_generator=0.02, lr_student=0.1, momentum=0.9, weight_decay=5e-4,
        milestones=(800, 1600), gamma=0.1, oh=0.05, ie=5.0, a=0.01),
    per_teacher_stage=True, label='DAFL',
    description='data-free KD: a generator trained against the teacher '
    'and a student learning from its images (DAFL, Table 6)'))
register(Method(
    'deepinversion', STUDENT,
    runner='nasty_jax.data_free.deepinversion:run_deepinversion',
    defaults=dict(
        enabled=False, batch_size=256, iterations=2000, lr=0.05,
        r_feature=10.0, first_bn_multiplier=1.0, tv_l2=2.5e-5, l2=0.0,
        jitter=2, cig_scale=0.0, adi_temperature=3.0,
        # Optional KD of a student from synthesised batches (0 = the
        # figure's batch only).
        kd_batches=0, student_arch='resnet18', kd_epochs=0,
        kd_temperature=3.0),
    per_teacher_stage=True, label='DeepInversion',
    description='images inverted from the teacher\'s BatchNorm statistics '
    '(Figure 6), optionally a KD student trained on them'))
