"""Tiny-ImageNet (64x64, 200 classes): Table 3 of the paper.

  python -m nasty_jax.main --config=configs/tinyimagenet.py:resnext29 \\
      --config.dataset.manual_dir=/path/to/tiny-imagenet-200 --workdir=DIR

Mirrors experiments/TinyImageNet/*/params.json: 200 epochs, SGD lr 0.1 x0.2
before epochs 60, 120 and 160, batch 128, nasty tau_A = 20 and omega = 0.01,
students tau_S = 20, alpha = 0.9; the reference's CIFAR-style stems at 64x64
(no stride-2 stem, global pooling). The official val split is the test set.
"""

from configs import common

_STUDENTS = {
    'resnet18': ('shufflenetv2', 'mobilenetv2', 'resnet18'),
    'resnet50': ('shufflenetv2', 'mobilenetv2', 'resnet18', 'resnet50'),
    'resnext29': ('shufflenetv2', 'mobilenetv2', 'resnet18', 'resnext29'),
}


def get_config(arg=None):
  arch, overrides, runlocal = common.parse_arg(arg, 'resnet18')
  config = common.base_config(
      dataset='tiny_imagenet', image_size=64, num_classes=200,
      teacher_arch=arch,
      student_archs=_STUDENTS.get(arch, ('shufflenetv2', 'mobilenetv2')),
      nasty_temperature=20.0, omega=0.01, student_temperature=20.0,
      sgd=common.sgd_optim((60, 120, 160), 0.2, 200),
      adam=common.adam_optim(100))
  return common.finish(config, overrides, runlocal)
