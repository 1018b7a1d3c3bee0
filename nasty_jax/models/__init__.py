"""Model registry: the reference's architectures by their `model_name`.

Every model is a linen Module with fields `num_classes`, `dtype`,
`bn_momentum` (torch convention, 0.1) and `bn_axis_name`, called as
`model.apply(variables, x, train=False)` -> float32 logits (B, num_classes)
on NHWC input, or `model.apply(variables, x, train=True,
mutable=['batch_stats'], rngs={'dropout': key})` -> (logits, updates). With
`return_features=True` the output is (logits, the classifier's input).

Names starting with '_tiny' are narrow, shallow variants for tests only.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from nasty_jax.models import cnn
from nasty_jax.models import mobilenetv2
from nasty_jax.models import preresnet
from nasty_jax.models import resnet
from nasty_jax.models import resnext
from nasty_jax.models import shufflenetv2

_CONSTRUCTORS: dict[str, Callable[..., nn.Module]] = {
    'resnet18': resnet.ResNet18,
    'resnet34': resnet.ResNet34,
    'resnet50': resnet.ResNet50,
    'preresnet20': preresnet.PreResNet20,
    'preresnet32': preresnet.PreResNet32,
    'resnext29': resnext.ResNeXt29,
    'mobilenetv2': mobilenetv2.MobileNetV2,
    'shufflenetv2': shufflenetv2.ShuffleNetV2,
    'net': cnn.Net,
    'mlp': cnn.MLP,
    # pylint: disable=protected-access
    '_tiny_resnet': resnet._TinyResNet,
    '_tiny_preresnet': preresnet._TinyPreResNet,
    '_tiny_resnext': resnext._TinyResNeXt,
    '_tiny_mobilenetv2': mobilenetv2._TinyMobileNetV2,
    '_tiny_shufflenetv2': shufflenetv2._TinyShuffleNetV2,
    '_tiny_cnn': cnn._TinyCNN,
    '_tiny_mlp': cnn._TinyMLP,
    # pylint: enable=protected-access
}

MODEL_NAMES = ('resnet18', 'resnet34', 'resnet50', 'preresnet20',
               'preresnet32', 'resnext29', 'mobilenetv2', 'shufflenetv2',
               'net', 'mlp')
TINY_MODEL_NAMES = tuple(n for n in _CONSTRUCTORS if n.startswith('_tiny'))

_COMMON_KWARGS = ('dtype', 'bn_momentum', 'bn_axis_name')
# The reference's Net reads these from params.json.
_EXTRA_KWARGS = {name: ('num_channels', 'dropout_rate')
                 for name in ('net', '_tiny_cnn')}


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds architecture `name` with `num_classes` outputs.

  Args:
    name: one of MODEL_NAMES (or a test-only '_tiny_*' name).
    num_classes: classifier outputs (10, 100 or 200 in the paper).
    **kwargs: `dtype`, `bn_momentum`, `bn_axis_name`; `net` also takes
      `num_channels` and `dropout_rate`.

  Returns:
    An unbound linen Module.

  Raises:
    ValueError: unknown name, bad num_classes or an argument the
      architecture does not take.
  """
  if name not in _CONSTRUCTORS:
    raise ValueError(f'Unknown architecture {name!r}; valid names: '
                     f'{", ".join(MODEL_NAMES)}.')
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or (
      num_classes < 1):
    raise ValueError(f'num_classes must be a positive int; got '
                     f'{num_classes!r}.')
  allowed = _COMMON_KWARGS + _EXTRA_KWARGS.get(name, ())
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f'{name} does not take {", ".join(unknown)}; it takes '
                     f'{", ".join(allowed)}.')
  return _CONSTRUCTORS[name](num_classes=num_classes, **kwargs)


def feature_dim(name: str, **kwargs: Any) -> int:
  """Size of the feature vector entering `name`'s classifier."""
  model = get_model(name, 1, **kwargs)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  _, features = jax.eval_shape(
      lambda x: model.init_with_output(
          jax.random.key(0), x, return_features=True)[0], x)
  return features.shape[-1]
