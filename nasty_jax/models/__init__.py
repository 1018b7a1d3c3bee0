"""Model registry: the reference's architectures by their `model_name`.

Every model is a linen Module with fields `num_classes`, `dtype`,
`bn_momentum` (torch convention, 0.1) and `bn_axis_name`, called as
`model.apply(variables, x, train=False)` -> float32 logits (B, num_classes)
on NHWC input, or `model.apply(variables, x, train=True,
mutable=['batch_stats'], rngs={'dropout': key})` -> (logits, updates). With
`return_features=True` the output is (logits, the classifier's input).

Names starting with '_tiny' are narrow, shallow variants for tests only.
"""

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from nasty_jax.models import cnn
from nasty_jax.models import mobilenetv2
from nasty_jax.models import preresnet
from nasty_jax.models import resnet
from nasty_jax.models import resnext
from nasty_jax.models import shufflenetv2
from nasty_jax.models import skeptical

class Arch(NamedTuple):
  """What the rest of the code needs to know about an architecture.

  Attributes:
    constructor: the linen Module class (or partial).
    options: `config.model` fields it takes beyond the common ones (the
      reference's Net reads its width and dropout from params.json; the
      ResNets take a base width, 64 in the reference).
    optimizer: the reference's optimiser for it, 'sgd' or 'adam' (net and
      mlp train with Adam 1e-3, everything else with SGD).
    reference: one of the PyTorch reference's architectures (converted both
      ways, checked by the fixtures); False for the attacks' own models.
  """
  constructor: Callable[..., nn.Module]
  options: tuple[str, ...] = ()
  optimizer: str = 'sgd'
  reference: bool = True


_NET_OPTIONS = ('num_channels', 'dropout_rate')
_WIDTH = ('width',)
# pylint: disable=protected-access
ARCHS: dict[str, Arch] = {
    'resnet18': Arch(resnet.ResNet18, _WIDTH),
    'resnet34': Arch(resnet.ResNet34, _WIDTH),
    'resnet50': Arch(resnet.ResNet50, _WIDTH),
    'preresnet20': Arch(preresnet.PreResNet20),
    'preresnet32': Arch(preresnet.PreResNet32),
    'resnext29': Arch(resnext.ResNeXt29),
    'mobilenetv2': Arch(mobilenetv2.MobileNetV2),
    'shufflenetv2': Arch(shufflenetv2.ShuffleNetV2),
    'net': Arch(cnn.Net, _NET_OPTIONS, 'adam'),
    'mlp': Arch(cnn.MLP, (), 'adam'),
    # The Skeptical student's multi-exit ResNet-18 (4 heads, final first).
    'resnet18_self': Arch(skeptical.ResNet18Self, _WIDTH, reference=False),
    # Narrow, shallow variants for tests only.
    '_tiny_resnet': Arch(resnet._TinyResNet),
    '_tiny_preresnet': Arch(preresnet._TinyPreResNet),
    '_tiny_resnext': Arch(resnext._TinyResNeXt),
    '_tiny_mobilenetv2': Arch(mobilenetv2._TinyMobileNetV2),
    '_tiny_shufflenetv2': Arch(shufflenetv2._TinyShuffleNetV2),
    '_tiny_cnn': Arch(cnn._TinyCNN, _NET_OPTIONS, 'adam'),
    '_tiny_mlp': Arch(cnn._TinyMLP, (), 'adam'),
    '_tiny_resnet18_self': Arch(skeptical._TinyResNet18Self,
                                reference=False),
}
# pylint: enable=protected-access

TINY_MODEL_NAMES = tuple(n for n in ARCHS if n.startswith('_tiny'))
# Every architecture a config may name, and the reference's among them.
ARCH_NAMES = tuple(n for n in ARCHS if n not in TINY_MODEL_NAMES)
MODEL_NAMES = tuple(n for n in ARCH_NAMES if ARCHS[n].reference)

_COMMON_KWARGS = ('dtype', 'bn_momentum', 'bn_axis_name')


def get_arch(name: str) -> Arch:
  """The architecture `name`; raises listing the valid names."""
  if name not in ARCHS:
    raise ValueError(f'Unknown architecture {name!r}; valid names: '
                     f'{", ".join(ARCH_NAMES)}.')
  return ARCHS[name]


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds architecture `name` with `num_classes` outputs.

  Args:
    name: one of MODEL_NAMES (or a test-only '_tiny_*' name).
    num_classes: classifier outputs (10, 100 or 200 in the paper).
    **kwargs: `dtype`, `bn_momentum`, `bn_axis_name`, and the arch's own
      `options` (`net`: `num_channels`, `dropout_rate`).

  Returns:
    An unbound linen Module.

  Raises:
    ValueError: unknown name, bad num_classes or an argument the
      architecture does not take.
  """
  arch = get_arch(name)
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or (
      num_classes < 1):
    raise ValueError(f'num_classes must be a positive int; got '
                     f'{num_classes!r}.')
  allowed = _COMMON_KWARGS + arch.options
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f'{name} does not take {", ".join(unknown)}; it takes '
                     f'{", ".join(allowed)}.')
  return arch.constructor(num_classes=num_classes, **kwargs)


def feature_dim(name: str, **kwargs: Any) -> int:
  """Size of the feature vector entering `name`'s classifier."""
  model = get_model(name, 1, **kwargs)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  _, features = jax.eval_shape(
      lambda x: model.init_with_output(
          jax.random.key(0), x, return_features=True)[0], x)
  return features.shape[-1]
