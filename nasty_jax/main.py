"""Runs the paper's pipeline for one config.

  python -m nasty_jax.main                      # digits, offline, CPU minutes
  python -m nasty_jax.main --config=configs/cifar10.py:resnet18 --workdir=DIR
  python -m nasty_jax.main --config=configs/tinyimagenet.py:resnext29 \\
      --config.stages=normal,nasty --workdir=gs://bucket/run --multihost
"""


from nasty_jax import runtime  # Before jax starts: it sets XLA_FLAGS.

runtime.set_cpu_flags()

import logging as py_logging
import os

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from nasty_jax import pipeline
from nasty_jax import results as results_lib
from nasty_jax import engine

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

config_flags.DEFINE_config_file(
    'config', os.path.join(_REPO, 'configs', 'digits.py'),
    'configs/<dataset>.py[:ARCH[,key=value...][,runlocal]]; default: the '
    'embedded digits pipeline.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where stages, checkpoints and results go; default '
    'runs/<dataset>_<teacher arch>_seed<seed>.')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Call jax.distributed.initialize() first (Cloud TPU '
    'pod slices, multi-node GPU).')


class _QuietLibraries(py_logging.Filter):
  """Drops INFO chatter of orbax/grain/tfds from the console log."""

  def filter(self, record):
    noisy = any(part in record.pathname
                for part in ('/orbax/', '/grain/', '/tensorflow_datasets/'))
    return record.levelno >= py_logging.WARNING or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  runtime.configure()
  if _MULTIHOST.value:
    jax.distributed.initialize()
  config = flags.FLAGS.config
  workdir = _WORKDIR.value or os.path.join(
      'runs', f'{config.dataset.name}_{config.teacher.arch}_seed{config.seed}')
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(),
               jax.process_count(), jax.devices())
  engine.install_preemption_handler()
  results = pipeline.run(config, workdir)
  if 'teachers' in results:
    logging.info('Results in %s/results.md:\n%s', workdir,
                 results_lib.markdown(results))


if __name__ == '__main__':
  app.run(main)
