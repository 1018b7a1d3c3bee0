"""ShuffleNetV2 1x (reference `model/shufflenetv2.py`;
docs/reference.md#shufflenetv2).

Stem conv3x3-BN with no ReLU and no max-pool; stages of one down-sampling unit
plus basic units; every conv has a bias; torch default initialisation. In a
basic unit the *first* half of the channels is the identity shortcut, and the
merge is concat([shortcut, residual]) followed by a 2-group channel shuffle.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from nasty_jax.models import layers


def _residual_branch(x: jax.Array, out_features: int, strides: int,
                     conv: layers.ModuleDef, norm: layers.ModuleDef
                ) -> jax.Array:
  """`residual`: 1x1-BN-ReLU, dw3x3(s)-BN, 1x1(out/2)-BN-ReLU."""
  channels = x.shape[-1]
  branch = (
      functools.partial(conv, channels, 1), norm, nn.relu,
      functools.partial(conv, channels, 3, strides, 1, groups=channels),
      norm,
      functools.partial(conv, out_features // 2, 1), norm, nn.relu)
  return layers.Sequential(branch, name='residual')(x)


class ShuffleUnit(nn.Module):
  """Down-sampling unit (stride 2 or in != out) or basic split unit."""
  out_features: int
  strides: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    if self.strides != 1 or channels != self.out_features:
      # Both branches see the whole input. `residual` is created first so
      # the variables come out in the reference's registration order.
      residual = _residual_branch(x, self.out_features, self.strides,
                                  self.conv, self.norm)
      shortcut = layers.Sequential((
          functools.partial(self.conv, channels, 3, self.strides, 1,
                            groups=channels), self.norm,
          functools.partial(self.conv, self.out_features // 2, 1), self.norm,
          nn.relu), name='shortcut')(x)
    else:
      half = channels // 2
      shortcut = x[..., :half]
      residual = _residual_branch(x[..., half:], self.out_features, 1,
                                  self.conv, self.norm)
    y = jnp.concatenate([shortcut, residual], axis=-1)
    return layers.channel_shuffle(y, 2)


class ShuffleNetV2(layers.Classifier):
  """ShuffleNetV2; logits (B, num_classes) or (logits, pooled features).

  Attributes (besides layers.Classifier's):
    out_channels: stage2..stage4 widths and the `conv5` width.
    basic_units: basic units after the down-sampling unit in stage2..stage4.
    stem_width: channels of the stem conv.
  """
  out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024)
  basic_units: tuple[int, int, int] = (3, 7, 3)
  stem_width: int = 24

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False):
    conv = functools.partial(layers.Conv, dtype=self.dtype)
    norm = self.batch_norm(train)
    y = layers.Sequential(
        (functools.partial(conv, self.stem_width, 3, 1, 1), norm),
        name='pre')(x)
    for index, repeats in enumerate(self.basic_units):
      width = self.out_channels[index]
      units = [functools.partial(ShuffleUnit, width, 2 if j == 0 else 1,
                                 conv=conv, norm=norm)
               for j in range(repeats + 1)]
      y = layers.Sequential(units, name=f'stage{index + 2}')(y)
    y = layers.Sequential(
        (functools.partial(conv, self.out_channels[-1], 1), norm, nn.relu),
        name='conv5')(y)
    features = layers.global_avg_pool(y)
    logits = layers.Dense(self.num_classes, dtype=self.dtype,
                          name='fc')(features)
    return self.output(logits, features, return_features)


# Tests only: one basic unit per stage, narrow.
_TinyShuffleNetV2 = functools.partial(
    ShuffleNetV2, out_channels=(8, 16, 32, 64), basic_units=(1, 1, 1),
    stem_width=8)
