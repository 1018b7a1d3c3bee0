"""The benchmark's cases: what is timed, presets and targets."""

import dataclasses
import itertools
from typing import Any, Sequence

from nasty_jax import methods
from nasty_jax import models
from nasty_jax import parallel as parallel_lib

DTYPES = ('float32', 'bfloat16')
INPUTS = ('device', 'stream')
SYNTHETIC = 'synthetic'
PRESETS = ('cpu', 'reference', 'h100')
MODES = ('normal', 'nasty', 'kd')

# img/s of the reference's own PyTorch code on one H100 (the speed issue):
# synthetic data on the GPU, (arch, mode, dtype, batch, image size).
REFERENCE_IMAGES_PER_S = {
    ('resnet18', 'normal', 'float32', 128, 32): 13_576.0,
    ('resnet18', 'nasty', 'float32', 128, 32): 8_594.0,
    ('resnext29', 'normal', 'float32', 128, 64): 624.0,
    ('resnext29', 'normal', 'bfloat16', 128, 64): 1_263.0,
}


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmarked configuration of the train step.

  Attributes:
    arch: trained architecture (`models.ARCHS`).
    mode: a registered objective method ('normal', 'nasty' against a
      frozen adversary, 'kd' against a frozen teacher, ...).
    batch_size: global batch size.
    dtype: compute dtype, 'float32' or 'bfloat16'.
    parallelism: 'jit' or 'pmap' (`parallel.PARALLELISMS`).
    image_size: input height = width.
    frozen_arch: the architecture of the method's frozen networks; None =
      `arch` (the paper's nasty setting). Unused by methods without any.
    epoch_inputs: input paths to time a full epoch through.
  """
  arch: str
  mode: str
  batch_size: int
  dtype: str = 'float32'
  parallelism: str = 'jit'
  image_size: int = 32
  frozen_arch: str | None = None
  epoch_inputs: tuple[str, ...] = ()

  def __post_init__(self):
    names = tuple(models.ARCHS)
    modes = tuple(n for n in methods.names()
                  if methods.get(n).objective is not None)
    for what, value, valid in (
        ('arch', self.arch, names), ('frozen_arch', self.frozen_arch,
                                     names + (None,)),
        ('mode', self.mode, modes), ('dtype', self.dtype, DTYPES),
        ('parallelism', self.parallelism, parallel_lib.PARALLELISMS)):
      if value not in valid:
        raise ValueError(f'Unknown {what} {value!r}; valid: '
                         f'{", ".join(str(v) for v in valid)}.')
    for inp in self.epoch_inputs:
      if inp not in INPUTS:
        raise ValueError(f'Unknown epoch input {inp!r}; valid: '
                         f'{", ".join(INPUTS)}.')
    if self.batch_size < 2:
      raise ValueError(f'batch_size must be >= 2 (train-mode BatchNorm); '
                       f'got {self.batch_size}.')

  @property
  def frozen(self) -> str | None:
    """The frozen networks' architecture, or None without any."""
    if not methods.get(self.mode).frozen:
      return None
    return self.frozen_arch or self.arch

  def describe(self) -> dict[str, Any]:
    """The case's fields as they appear in every result row."""
    return {'arch': self.arch, 'mode': self.mode, 'frozen_arch': self.frozen,
            'batch_size': self.batch_size, 'dtype': self.dtype,
            'parallelism': self.parallelism, 'image_size': self.image_size}


@dataclasses.dataclass
class Options:
  """What to measure and how long (see the module docstring).

  Attributes:
    cases: the configurations, in order.
    num_classes: classifier outputs.
    num_devices: devices to use; -1 = all JAX sees.
    steps: timed steps per window.
    repeats: timing windows (median and spread are reported).
    warmup: untimed steps after the compiling first call.
    epoch_steps: steps of the timed epoch; -1 = a whole epoch.
    dataset: 'synthetic' or a prepared TFDS dataset name.
    data_dir: TFDS data dir of a real dataset.
    manual_dir: image_folder / tiny_imagenet source folder.
    num_train: synthetic training examples (CIFAR's 50,000 by default).
    log_every_steps: host sync period inside a timed epoch (train.py's
      logging); 0 = none.
    breakdown: also time forward / forward+backward (jit, normal mode).
    targets: evaluate the GPU targets (H100_TARGETS).
    json_path: where to write the results; None = nowhere.
    reference_json: a `torch_reference_bench.py` JSON to compare with.
    seed: seed of parameters, data and augmentation.
  """
  cases: Sequence[Case]
  num_classes: int = 10
  num_devices: int = -1
  steps: int = 20
  repeats: int = 3
  warmup: int = 2
  epoch_steps: int = -1
  dataset: str = SYNTHETIC
  data_dir: str | None = None
  manual_dir: str | None = None
  num_train: int = 50_000
  log_every_steps: int = 50
  breakdown: bool = False
  targets: bool = False
  json_path: str | None = None
  reference_json: str | None = None
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Target:
  """A speed target of the issue, checked against result rows.

  Attributes:
    name: what it says.
    table: 'steps' or 'epochs'.
    where: field values a row must have.
    field: the row value compared.
    minimum: the value to reach.
    every: True = every matching row must reach it; False = the best one.
  """
  name: str
  table: str
  where: tuple[tuple[str, Any], ...]
  field: str
  minimum: float
  every: bool = False

  def check(self, results: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in results[self.table]
            if all(r.get(k) == v for k, v in self.where)]
    values = [r[self.field] for r in rows if r.get(self.field) is not None]
    value = (min(values) if self.every else max(values)) if values else None
    return {'target': self.name, 'value': value, 'minimum': self.minimum,
            'met': None if value is None else value >= self.minimum,
            'rows': len(values)}


def _ref(arch, mode, dtype, batch, size):
  return REFERENCE_IMAGES_PER_S[(arch, mode, dtype, batch, size)]


H100_TARGETS = (
    Target('ResNet-18 nasty step, bf16 (img/s)', 'steps',
           (('arch', 'resnet18'), ('mode', 'nasty'), ('dtype', 'bfloat16'),
            ('image_size', 32)), 'images_per_s', 85_000.0),
    Target('ResNet-18 normal step, bf16 (img/s)', 'steps',
           (('arch', 'resnet18'), ('mode', 'normal'), ('dtype', 'bfloat16'),
            ('image_size', 32)), 'images_per_s', 110_000.0),
    Target('ResNet-18 nasty step, fp32 b128 >= 3x reference (img/s)',
           'steps', (('arch', 'resnet18'), ('mode', 'nasty'),
                     ('dtype', 'float32'), ('batch_size', 128),
                     ('image_size', 32)), 'images_per_s',
           3 * _ref('resnet18', 'nasty', 'float32', 128, 32)),
    Target('Full epoch (device input) >= 90% of step-only, every row',
           'epochs', (('input', 'device'),), 'vs_step', 0.9, every=True),
    Target('ResNeXt-29 64x64 step >= 4x reference fp32 (img/s)', 'steps',
           (('arch', 'resnext29'), ('dtype', 'float32'),
            ('image_size', 64)), 'images_per_s',
           4 * _ref('resnext29', 'normal', 'float32', 128, 64)),
)


def grid(archs: Sequence[str], modes: Sequence[str],
          batch_sizes: Sequence[int], dtypes: Sequence[str],
          parallelisms: Sequence[str], *, image_size: int = 32,
          kd_teacher: str | None = None,
          epoch_inputs: Sequence[str] = (),
          epoch_modes: Sequence[str] = ('normal',)) -> list[Case]:
  """Every combination, epochs for the first parallelism and epoch_modes."""
  cases = []
  for arch, batch, dtype, par, mode in itertools.product(
      archs, batch_sizes, dtypes, parallelisms, modes):
    timed = (tuple(epoch_inputs) if mode in epoch_modes
             and par == parallelisms[0] else ())
    cases.append(Case(arch, mode, batch, dtype, par, image_size,
                      frozen_arch=kd_teacher if mode == 'kd' else None,
                      epoch_inputs=timed))
  return cases


def preset(name: str) -> tuple[list[Case], dict[str, Any]]:
  """A named benchmark: its cases and its Options overrides.

  * 'cpu': the CPU ratio table: resnet18 b64 and preresnet20 b128, fp32 and
    bf16, normal / nasty / kd (teacher resnet18, the paper's CIFAR-10
    teacher), jit and pmap, fp32 device vs stream epochs (6 steps) on
    digits, and where a normal step's time goes.
  * 'reference': the rows of `experiments/torch_reference_bench.py`
    (preresnet20, the 32-channel CNN and resnet18, normal and nasty, fp32,
    b128, jit), for `--reference_json`'s side-by-side table.
  * 'h100': the GPU targets on one GPU (see H100_TARGETS).

  Args:
    name: one of PRESETS.

  Returns:
    (cases, Options field overrides).
  """
  if name == 'cpu':
    cases = []
    for arch, batch in (('resnet18', 64), ('preresnet20', 128)):
      cases += [dataclasses.replace(c, epoch_inputs=INPUTS)
                if c.mode == 'normal' and c.dtype == 'float32' else c
                for c in grid([arch], MODES, [batch], DTYPES, ['jit'],
                               kd_teacher='resnet18')]
      cases.append(Case(arch, 'normal', batch, 'float32', 'pmap'))
    return cases, dict(steps=2, repeats=2, warmup=1, dataset='digits',
                       epoch_steps=6, breakdown=True)
  if name == 'reference':
    cases = grid(['preresnet20', 'net', 'resnet18'], ['normal', 'nasty'],
                  [128], ['float32'], ['jit'])
    return cases, dict(steps=10, repeats=3, warmup=2, dataset=SYNTHETIC)
  if name == 'h100':
    big = ('device',)
    cases = [
        Case('resnet18', 'normal', 128, 'float32'),
        Case('resnet18', 'nasty', 128, 'float32'),
        Case('resnet18', 'normal', 1024, 'bfloat16', epoch_inputs=big),
        Case('resnet18', 'nasty', 1024, 'bfloat16', epoch_inputs=big),
        Case('resnet18', 'kd', 1024, 'bfloat16'),
        Case('resnet18', 'nasty', 1024, 'bfloat16', 'pmap'),
        Case('resnext29', 'normal', 128, 'float32', image_size=64),
        Case('resnext29', 'normal', 128, 'bfloat16', image_size=64),
    ]
    return cases, dict(steps=30, repeats=3, warmup=3, dataset=SYNTHETIC,
                       num_train=50_000, targets=True)
  raise ValueError(f'Unknown preset {name!r}; valid: {", ".join(PRESETS)}.')
