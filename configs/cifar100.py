"""CIFAR-100: Table 2 (and Table 6's ResNet-34 teacher) of the paper.

  python -m nasty_jax.main --config=configs/cifar100.py:resnext29 --workdir=DIR

Mirrors experiments/CIFAR100/*/params.json: 200 epochs, SGD lr 0.1 x0.2
before epochs 60, 120 and 160, batch 128, nasty tau_A = 20 and omega = 0.005,
students tau_S = 20, alpha = 0.9; CIFAR-10's normalisation constants, as the
reference. Students per teacher are the reference's runs plus the paper's
"Teacher Self". `:resnet34` is Table 6's data-free setting (omega 0.04,
tau_A 4, a ResNet-18 student).
"""

from configs import common

_STUDENTS = {
    'resnet18': ('shufflenetv2', 'mobilenetv2', 'resnet18'),
    'resnet50': ('shufflenetv2', 'mobilenetv2', 'resnet18', 'resnet50'),
    'resnext29': ('shufflenetv2', 'mobilenetv2', 'resnet18', 'resnext29'),
    'resnet34': ('resnet18',),
}


def get_config(arg=None):
  arch, overrides, runlocal = common.parse_arg(arg, 'resnet18')
  table6 = arch == 'resnet34'
  config = common.base_config(
      dataset='cifar100', image_size=32, num_classes=100, teacher_arch=arch,
      student_archs=_STUDENTS.get(arch, ('shufflenetv2', 'mobilenetv2')),
      nasty_temperature=4.0 if table6 else 20.0,
      omega=0.04 if table6 else 0.005, student_temperature=20.0,
      sgd=common.sgd_optim((60, 120, 160), 0.2, 200),
      adam=common.adam_optim(100))
  if table6:
    # Table 6 and Figure 6: DAFL and DeepInversion against both teachers.
    config.dafl.enabled = True
    config.deepinversion.enabled = True
  return common.finish(config, overrides, runlocal)
