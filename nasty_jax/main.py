"""Runs the paper's pipeline for one config.

  python -m nasty_jax.main                      # digits, offline, CPU minutes
  python -m nasty_jax.main --config=configs/cifar10.py:resnet18 --workdir=DIR
  python -m nasty_jax.main --config=configs/tinyimagenet.py:resnext29 \\
      --config.stages=normal,nasty --workdir=gs://bucket/run --multihost
"""


from nasty_jax import runtime  # Before jax starts: it sets XLA_FLAGS.

runtime.set_cpu_flags()
runtime.quiet_tensorflow()

import os

import jax
from absl import app
from absl import flags
from absl import logging

from nasty_jax import cli
from nasty_jax import pipeline
from nasty_jax import results as results_lib
from nasty_jax import engine

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

cli.define_config_flag(
    'config', os.path.join(_REPO, 'configs', 'digits.py'),
    'configs/<dataset>.py[:ARCH[,key=value...][,runlocal]]; default: the '
    'embedded digits pipeline.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where stages, checkpoints and results go; default '
    'runs/<dataset>_<teacher arch>_seed<seed>.')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Call jax.distributed.initialize() first (Cloud TPU '
    'pod slices, multi-node GPU).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator', None, 'With --multihost where the cluster is not '
    'detected: host:port of process 0 (with --num_processes, --process_id).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'With --coordinator.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'With --coordinator.')


def _run(config, workdir: str) -> dict:
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(),
               jax.process_count(), jax.devices())
  results = pipeline.run(config, workdir)
  if 'teachers' in results and jax.process_index() == 0:
    logging.info('Results in %s/results.md:\n%s', workdir,
                 results_lib.markdown(results))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_console()
  runtime.configure()
  if _MULTIHOST.value:
    runtime.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                   _PROCESS_ID.value)
  config = cli.config_or_exit()
  workdir = _WORKDIR.value or os.path.join(
      'runs', f'{config.dataset.name}_{config.teacher.arch}_seed{config.seed}')
  engine.install_preemption_handler()
  cli.run_command(lambda: _run(config, workdir), workdir)


__doc__ += cli.help_text()

if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
