"""Shared pieces of the per-dataset configs.

A config file is loaded by path (`--config=configs/cifar10.py:ARG`) and its
`get_config(arg)` receives the text after the first colon. The argument is a
comma-separated list (the big_vision idea): a bare first value names the
teacher architecture; `key=value` items override config fields by dotted
path (`students.archs=net+preresnet20`, `nasty.omega=0.004`); `runlocal`
shrinks everything so the file runs on a CPU in seconds. Unknown items raise
and list what is valid. Later `--config.x.y=...` flags override again.

One config describes the paper's whole pipeline for one dataset and teacher
architecture (normal teacher -> nasty teacher -> students); `pipeline.py`
derives each stage's settings from it. Every registered method's config
group (`nasty`, `kd`, `dafl`, ...) comes with the registry's defaults
(`nasty_jax/methods.py`); the item `extensions=my_module` in the config
argument imports user methods first, so their groups exist for overrides.
"""

import ast
from typing import Any, Sequence

import ml_collections

from nasty_jax import methods
from nasty_jax import models


def sgd_optim(milestones: Sequence[int], gamma: float,
              num_epochs: int) -> ml_collections.ConfigDict:
  """SGD(0.1, momentum 0.9, wd 5e-4) with per-epoch step decay.

  docs/reference.md#optimisers-and-schedules.
  """
  return ml_collections.ConfigDict(dict(
      name='sgd', learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
      nesterov=False, milestones=tuple(milestones), gamma=gamma,
      num_epochs=num_epochs, schedule='step', warmup_epochs=0))


def adam_optim(num_epochs: int) -> ml_collections.ConfigDict:
  """Adam(1e-3) for net/mlp; their params.json schedule [999] never fires."""
  return ml_collections.ConfigDict(dict(
      name='adam', learning_rate=1e-3, momentum=0.0, weight_decay=0.0,
      nesterov=False, milestones=(), gamma=0.1, num_epochs=num_epochs,
      schedule='step', warmup_epochs=0))


def base_config(*, dataset: str, image_size: int, num_classes: int,
                teacher_arch: str, student_archs: Sequence[str],
                nasty_temperature: float, omega: float,
                student_temperature: float, sgd: ml_collections.ConfigDict,
                adam: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The fields every dataset config shares (see the module docstring)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Which stages to run: 'all', or a comma list of stage selectors
  # (pipeline.select): teachers, students, a method (kd), a stage group
  # (kd_nasty, dafl) or one stage (kd_nasty/net).
  c.stages = 'all'
  # Stage selectors (as `stages`) whose folders may be retrained when they
  # were made with other settings; the stages after them come along. The
  # old folders are kept as <stage>.stale-N.
  c.retrain = ''
  # User modules (or .py paths) that register methods, '+'-separated.
  c.extensions = ''

  c.dataset = ml_collections.ConfigDict(dict(
      name=dataset, data_dir=ml_collections.FieldReference(None, str),
      manual_dir=ml_collections.FieldReference(None, str),
      image_size=image_size, num_classes=num_classes, subset_percent=1.0,
      augment='default', mean=ml_collections.FieldReference(None, tuple),
      std=ml_collections.FieldReference(None, tuple),
      # 'device': the split lives on the accelerators as uint8 and is
      # augmented there; 'stream': TFDS + grain on the host (large data).
      input='device'))

  # The teacher-side methods (defenses) the pipeline trains, in order, on
  # teacher.arch; each one's students are trained and compared.
  c.teachers = 'normal+nasty'
  # What the students see of every teacher: 'logits' (all of it), 'probs',
  # 'topk:K' or 'label' (an API's output; nasty_jax/serving.py).
  c.api = 'logits'
  # The normal teacher. `checkpoint` set = use that trained network (a stage
  # folder or a converted PyTorch checkpoint) instead of training one.
  c.teacher = ml_collections.ConfigDict(dict(
      arch=teacher_arch, checkpoint=ml_collections.FieldReference(None, str)))
  # Students: every method of `methods` on every arch; a method that reads
  # a teacher trains once per teacher. '+'-separated in overrides.
  c.students = ml_collections.ConfigDict(dict(
      archs='+'.join(student_archs), methods='ce+ls+kd'))
  for group, defaults in methods.config_groups().items():
    if group not in c:
      c[group] = defaults
  # The nasty teacher (same arch as the teacher) trained against a frozen
  # adversary: by default the normal teacher above (train_nasty.py).
  c.nasty.temperature = nasty_temperature
  c.nasty.omega = omega
  c.kd.temperature = student_temperature

  # Optimiser per trained arch: 'auto' follows the reference (Adam for
  # net/mlp, SGD otherwise); 'sgd' or 'adam' forces one.
  c.optim = ml_collections.ConfigDict(dict(choice='auto', sgd=sgd, adam=adam))
  # Epoch override for every stage (-1: the optimiser's num_epochs), and a
  # hard cap on a stage's steps for smoke runs (-1: whole epochs).
  c.num_epochs = -1
  c.num_train_steps = -1

  c.model = ml_collections.ConfigDict(dict(
      # net's width (num_channels) and dropout; the ResNets' base width.
      bn_momentum=0.1, num_channels=32, dropout_rate=0.0, width=64,
      # 'float32' is the reference-exact path; 'bfloat16' computes in bf16
      # with float32 parameters, BN statistics, softmax/KL and loss.
      dtype='float32'))

  # The data-free attacks (dafl, deepinversion groups) are off unless a
  # config enables them (Table 6: `:resnet34`). DAFL's generator-loss
  # weights differ per dataset: CIFAR-10's README line (oh 0.05, ie 5,
  # a 0.01) and CIFAR-100's at HEAD (0.5, 20, 0.1) (docs/data_free.md).
  if dataset == 'cifar100':
    c.dafl.update(dict(oh=0.5, ie=20.0, a=0.1))

  c.batch_size = 128
  c.eval_batch_size = -1  # -1: batch_size.
  c.parallelism = 'pmap'  # 'pmap' (default) or 'jit' (same step bodies).
  c.num_devices = -1  # -1: every device JAX sees.
  c.log_every_steps = 50
  c.max_eval_batches = -1  # -1: the whole eval split.
  c.max_checkpoints_to_keep = 1
  # Trace steps 10-15 after each stage's start with jax.profiler into
  # <stage>/profile (TensorBoard's profile plugin or Perfetto reads it).
  c.profile = False
  return c


def _parse_value(text: str, current: Any) -> Any:
  """Parses `text` to the type of the field it overrides."""
  if isinstance(current, bool):
    if text.lower() in ('1', 'true', 'yes'):
      return True
    if text.lower() in ('0', 'false', 'no'):
      return False
    raise ValueError(f'Expected a boolean, got {text!r}.')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, tuple):
    return tuple(ast.literal_eval(text.replace('+', ',')) if text else ())
  if text.lower() == 'none':
    return None
  return text


def _leaf_paths(config: ml_collections.ConfigDict, prefix: str = ''):
  for key, value in config.items():
    path = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaf_paths(value, path + '.')
    else:
      yield path


def parse_arg(arg: str | None, default_arch: str
              ) -> tuple[str, list[tuple[str, str]], bool]:
  """Splits a `get_config` argument (see the module docstring).

  Returns:
    (teacher arch, [(dotted key, value text)], runlocal).

  Raises:
    ValueError: a malformed item.
  """
  items = [item.strip() for item in (arg or '').split(',') if item.strip()]
  arch, overrides, runlocal = default_arch, [], False
  for i, item in enumerate(items):
    if item == 'runlocal':
      runlocal = True
    elif '=' in item:
      key, value = (x.strip() for x in item.split('=', 1))
      if key == 'arch':
        arch = value
      else:
        if key == 'extensions':
          # Now, so that their config groups exist for the overrides.
          methods.load_extensions(value)
        overrides.append((key, value))
    elif i == 0:
      arch = item
    else:
      raise ValueError(
          f'Config argument item {item!r} is neither `runlocal` nor '
          '`key=value`; only the first item may be a bare architecture name.')
  return arch, overrides, runlocal


def finish(config: ml_collections.ConfigDict,
           overrides: list[tuple[str, str]], runlocal: bool
           ) -> ml_collections.ConfigDict:
  """Applies `key=value` overrides and `runlocal`, validates and locks.

  Raises:
    ValueError: an unknown key or architecture, or a malformed value; the
      message lists what is valid.
  """
  valid = sorted(_leaf_paths(config))
  for key, value in overrides:
    if key not in valid:
      raise ValueError(
          f'Unknown config key {key!r} in the config argument. Valid keys: '
          f'arch, runlocal, {", ".join(valid)}.')
    current = config
    *parents, leaf = key.split('.')
    for parent in parents:
      current = current[parent]
    try:
      setattr(current, leaf, _parse_value(value, current[leaf]))
    except ValueError as e:
      raise ValueError(f'Bad value for {key!r} in the config argument: '
                       f'{e}') from None
  check_archs(config)
  if runlocal:
    runlocal_defaults(config)
  config.lock()
  return config


def check_archs(config: ml_collections.ConfigDict) -> None:
  """Raises if the teacher or a student names no known architecture."""
  names = [config.teacher.arch] + methods.parse_list(config.students.archs)
  for name in names:
    if name not in models.ARCHS:
      raise ValueError(f'Unknown architecture {name!r}. Valid: '
                       f'{", ".join(models.ARCH_NAMES)}.')


def runlocal_defaults(config: ml_collections.ConfigDict) -> None:
  """Tiny settings shared by every dataset's `runlocal`: a few steps."""
  config.batch_size = 8
  config.num_epochs = 1
  config.num_train_steps = 2
  config.max_eval_batches = 2
  config.log_every_steps = 1
  # The data-free attacks, where a config enables them: a step or two each.
  config.dafl.update(dict(num_epochs=1, iters_per_epoch=2, batch_size=8,
                          latent_dim=16))
  config.deepinversion.update(dict(batch_size=20, iterations=2,
                                   kd_batches=1))
