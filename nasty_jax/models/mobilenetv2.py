"""MobileNetV2, CIFAR variant (reference `model/mobilenetv2.py`;
docs/reference.md#mobilenetv2).

Quirks kept from the reference: the stem is a 1x1 conv with padding 1 (34x34
output on 32x32 input, a bias-only border), only three stride-2 stages (the
160-channel stage has stride 1), every conv has a bias, ReLU6 activations, and
the classifier `conv2` is a 1x1 conv on the pooled 1x1 map. torch default
initialisation everywhere.
"""

import functools

import flax.linen as nn
import jax

from nasty_jax.models import layers


# (blocks, out channels, first stride, expansion t) of stage1..stage7.
REFERENCE_STAGES = ((1, 16, 1, 1), (2, 24, 2, 6), (3, 32, 2, 6),
                    (4, 64, 2, 6), (3, 96, 1, 6), (3, 160, 1, 6),
                    (1, 320, 1, 6))


class LinearBottleNeck(nn.Module):
  """Expand 1x1, depthwise 3x3(s), linear project 1x1; add iff s=1, in=out."""
  out_features: int
  strides: int
  expansion: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = x.shape[-1] * self.expansion
    y = layers.Sequential((
        functools.partial(self.conv, hidden, 1),
        self.norm, layers.relu6,
        functools.partial(self.conv, hidden, 3, self.strides, 1,
                          groups=hidden),
        self.norm, layers.relu6,
        functools.partial(self.conv, self.out_features, 1),
        self.norm), name='residual')(x)
    if self.strides == 1 and x.shape[-1] == self.out_features:
      y = y + x
    return y


class MobileNetV2(layers.Classifier):
  """CIFAR MobileNetV2; logits (B, num_classes) or (logits, pooled features).

  Attributes (besides layers.Classifier's):
    stages: (blocks, out, first stride, t) per stage; a one-block stage is a
      bare block (`stage1.residual.*`), as in the reference.
    stem_width: channels of the 1x1 stem.
    head_width: channels of `conv1` (the pooled feature size).
  """
  stages: tuple[tuple[int, int, int, int], ...] = REFERENCE_STAGES
  stem_width: int = 32
  head_width: int = 1280

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False):
    conv = functools.partial(layers.Conv, dtype=self.dtype)
    norm = self.batch_norm(train)
    y = layers.Sequential(
        (functools.partial(conv, self.stem_width, 1, 1, 1), norm,
         layers.relu6), name='pre')(x)
    for index, (num_blocks, out_features, strides, t) in enumerate(
        self.stages):
      blocks = [
          functools.partial(LinearBottleNeck, out_features,
                            strides if j == 0 else 1, t, conv=conv,
                            norm=norm)
          for j in range(num_blocks)]
      name = f'stage{index + 1}'
      if num_blocks == 1:
        y = blocks[0](name=name)(y)
      else:
        y = layers.Sequential(blocks, name=name)(y)
    y = layers.Sequential(
        (functools.partial(conv, self.head_width, 1), norm, layers.relu6),
        name='conv1')(y)
    pooled = layers.global_avg_pool(y, keepdims=True)
    logits = conv(self.num_classes, 1, name='conv2')(pooled)
    batch = x.shape[0]
    return self.output(
        logits.reshape(batch, -1), pooled.reshape(batch, -1),
        return_features)


# Tests only: both block kinds, a stride-2 depthwise conv, narrow.
_TinyMobileNetV2 = functools.partial(
    MobileNetV2, stages=((1, 8, 1, 1), (2, 16, 2, 2), (1, 24, 1, 2)),
    stem_width=8, head_width=32)
