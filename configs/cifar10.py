"""CIFAR-10: Table 1 (and Table 6's ResNet-34 teacher) of the paper.

  python -m nasty_jax.main --config=configs/cifar10.py:resnet18 --workdir=DIR

Mirrors the reference's experiments/CIFAR10/*/params.json: teachers and
SGD students 160 epochs (lr 0.1, x0.1 before epochs 80 and 120), net with
Adam(1e-3) for 100 epochs, batch 128, nasty tau_A = 4 and omega = 0.04 (the
code's value; the paper's text says 0.004,
docs/reference.md#where-the-paper-and-the-code-differ), students tau_S = 4,
alpha = 0.9. `:resnet34` is the data-free setting of Table 6 (omega 0.04,
tau_A 4, a ResNet-18 student).
"""

from configs import common

# Table 1's students: CNN, ResNetC-20, ResNetC-32 and the teacher itself.
_STUDENTS = {'resnet34': ('resnet18',)}
_DEFAULT_STUDENTS = ('net', 'preresnet20', 'preresnet32', 'resnet18')


def get_config(arg=None):
  arch, overrides, runlocal = common.parse_arg(arg, 'resnet18')
  config = common.base_config(
      dataset='cifar10', image_size=32, num_classes=10, teacher_arch=arch,
      student_archs=_STUDENTS.get(arch, _DEFAULT_STUDENTS),
      nasty_temperature=4.0, omega=0.04, student_temperature=4.0,
      sgd=common.sgd_optim((80, 120), 0.1, 160), adam=common.adam_optim(100))
  if arch == 'resnet34':
    # Table 6 and Figure 6: DAFL and DeepInversion against both teachers.
    config.dafl.enabled = True
    config.deepinversion.enabled = True
  return common.finish(config, overrides, runlocal)
