"""`python -m nasty_jax.bench`: the command line (see the package docstring)."""

from nasty_jax import runtime  # Before jax starts: it sets XLA_FLAGS.

runtime.set_cpu_flags()
runtime.quiet_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
from typing import Sequence

import jax
from absl import app
from absl import flags
from absl import logging

from nasty_jax.bench import cases
from nasty_jax.bench import measure
from nasty_jax.bench import report
# pylint: enable=g-import-not-at-top,wrong-import-position

_PRESET = flags.DEFINE_enum(
    'preset', None, cases.PRESETS,
    'A named benchmark; the other flags given override its settings.')
_ARCHS = flags.DEFINE_list('archs', ['resnet18'], 'Architectures.')
_MODES = flags.DEFINE_list('modes', list(cases.MODES),
                           'Registered objective methods (normal, nasty, kd, '
                           '...).')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['64'], 'Global sizes.')
_DTYPES = flags.DEFINE_list('dtypes', list(cases.DTYPES),
                            'float32, bfloat16.')
_PARALLELISM = flags.DEFINE_list('parallelism', ['jit'], 'jit, pmap.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Input height = width.')
_KD_TEACHER = flags.DEFINE_string(
    'kd_teacher', None, 'The frozen networks\' architecture of kd cases '
    '(default: the trained one).')
_EPOCH_INPUTS = flags.DEFINE_list(
    'epoch_inputs', [], 'device, stream: also time a full epoch through '
    'these input paths.')
_EPOCH_MODES = flags.DEFINE_list(
    'epoch_modes', ['normal'], 'Methods whose cases get the epoch timing.')
# Options fields: None = the preset's value or Options' default.
_OVERRIDES = {
    'num_classes': flags.DEFINE_integer('num_classes', None, 'Classes.'),
    'num_devices': flags.DEFINE_integer('num_devices', None, 'Devices used.'),
    'steps': flags.DEFINE_integer('steps', None, 'Timed steps per window.'),
    'repeats': flags.DEFINE_integer('repeats', None, 'Timing windows.'),
    'warmup': flags.DEFINE_integer('warmup', None, 'Untimed steps first.'),
    'epoch_steps': flags.DEFINE_integer(
        'epoch_steps', None, 'Cap of a timed epoch (-1: the whole epoch).'),
    'dataset': flags.DEFINE_string(
        'dataset', None, 'synthetic, or a prepared TFDS dataset (digits, '
        'cifar10, image_folder, ...).'),
    'data_dir': flags.DEFINE_string('data_dir', None, 'TFDS data dir.'),
    'manual_dir': flags.DEFINE_string('manual_dir', None,
                                      'image_folder / tiny_imagenet source.'),
    'num_train': flags.DEFINE_integer('num_train', None,
                                      'Synthetic examples per epoch.'),
    'log_every_steps': flags.DEFINE_integer(
        'log_every_steps', None, 'Host sync period inside a timed epoch.'),
    'breakdown': flags.DEFINE_bool('breakdown', None,
                                   'Also time parts of a jit step.'),
    'targets': flags.DEFINE_bool('targets', None, 'Check the GPU targets.'),
    'json_path': flags.DEFINE_string('json', None, 'Write the results here.'),
    'reference_json': flags.DEFINE_string(
        'reference_json', None, 'A torch_reference_bench.py JSON: print '
        'the side-by-side table.'),
}
_MATMUL_PRECISION = flags.DEFINE_string(
    'matmul_precision', None,
    "jax_default_matmul_precision, e.g. 'highest', 'tensorfloat32'.")


def options() -> cases.Options:
  """Options from the flags."""
  if _MATMUL_PRECISION.value:
    jax.config.update('jax_default_matmul_precision', _MATMUL_PRECISION.value)
  if _PRESET.value:
    grid, overrides = cases.preset(_PRESET.value)
  else:
    grid = cases.grid(
        _ARCHS.value, _MODES.value, [int(b) for b in _BATCH_SIZES.value],
        _DTYPES.value, _PARALLELISM.value, image_size=_IMAGE_SIZE.value,
        kd_teacher=_KD_TEACHER.value, epoch_inputs=_EPOCH_INPUTS.value,
        epoch_modes=_EPOCH_MODES.value)
    overrides = {'dataset': 'digits'} if 'stream' in _EPOCH_INPUTS.value \
        else {}
  given = {k: f.value for k, f in _OVERRIDES.items() if f.value is not None}
  return cases.Options(cases=grid, **{**overrides, **given})


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  results = measure.run(options())
  print(report.report(results), flush=True)  # The command's output.


if __name__ == '__main__':
  app.run(main)
