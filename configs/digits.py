"""The embedded default: UCI handwritten digits (ships with scikit-learn).

  python -m nasty_jax.main                  # this file, offline, CPU minutes
  python -m nasty_jax.main --config=configs/digits.py:preresnet20,seed=1

1,437 train / 360 test 8x8 digits, stored as 32x32 RGB (each pixel a 4x4
block) so every 32px architecture runs unchanged. Not a dataset of the paper:
a small, real one that shows the whole pipeline on a laptop. The schedule is
the reference's shape (SGD 0.1 with step decay, Adam 1e-3 for net/mlp)
shortened to fit a 2-core CPU; tau and omega follow CIFAR-10's code values.
"""

from configs import common


def get_config(arg=None):
  arch, overrides, runlocal = common.parse_arg(arg, 'preresnet20')
  config = common.base_config(
      dataset='digits', image_size=32, num_classes=10, teacher_arch=arch,
      student_archs=('net', 'mlp'), nasty_temperature=4.0, omega=0.04,
      student_temperature=4.0,
      sgd=common.sgd_optim((10, 15), 0.1, 20), adam=common.adam_optim(15))
  config.batch_size = 64
  config.log_every_steps = 20
  return common.finish(config, overrides, runlocal)
