"""ResNeXt-29 8x64d (reference `model/resnext.py`, CifarResNeXt;
docs/reference.md#resnext-29).

Stage widths 64 -> 256/512/1024 with grouped 3x3 convs of inner width
cardinality*out/widen_factor (512/1024/2048, 8 groups). Convs are
kaiming_normal fan_out, the classifier kaiming_normal fan_in, every bias 0.
"""

import functools

import flax.linen as nn
import jax

from nasty_jax.models import layers


class ResNeXtBottleneck(nn.Module):
  """1x1 reduce, grouped 3x3(s), 1x1 expand (BN after each), + shortcut."""
  out_features: int
  strides: int
  inner_width: int
  cardinality: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(self.inner_width, 1, name='conv_reduce')(x)
    y = nn.relu(self.norm(name='bn_reduce')(y))
    y = self.conv(self.inner_width, 3, self.strides, 1,
                  groups=self.cardinality, name='conv_conv')(y)
    y = nn.relu(self.norm(name='bn')(y))
    y = self.conv(self.out_features, 1, name='conv_expand')(y)
    y = self.norm(name='bn_expand')(y)
    shortcut = x
    # The reference tests only the channel count, not the stride; both
    # change together in every stage.
    if x.shape[-1] != self.out_features:
      shortcut = layers.Sequential(
          (functools.partial(self.conv, self.out_features, 1, self.strides),
           self.norm),
          names=('shortcut_conv', 'shortcut_bn'), name='shortcut')(x)
    return nn.relu(shortcut + y)


class ResNeXt(layers.Classifier):
  """CifarResNeXt; logits (B, num_classes) or (logits, pooled features).

  Attributes (besides layers.Classifier's):
    cardinality: groups of the 3x3 convs.
    depth: 9n + 2 with n bottlenecks per stage.
    widen_factor: stage widths are base_width * widen_factor * (1, 2, 4).
    base_width: stem width; 64 in the reference.
  """
  cardinality: int = 8
  depth: int = 29
  widen_factor: int = 4
  base_width: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False):
    if (self.depth - 2) % 9 or self.depth < 11:
      raise ValueError(f'ResNeXt depth must be 9n+2 >= 11 (29 in the paper); '
                       f'got {self.depth}.')
    blocks_per_stage = (self.depth - 2) // 9
    conv = functools.partial(layers.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=layers.kaiming_normal_fan_out)
    norm = self.batch_norm(train)
    y = conv(self.base_width, 3, 1, 1, name='conv_1_3x3')(x)
    y = nn.relu(norm(name='bn_1')(y))
    for stage in range(1, 4):
      out_features = self.base_width * self.widen_factor * 2**(stage - 1)
      inner = self.cardinality * out_features // self.widen_factor
      blocks = [
          functools.partial(ResNeXtBottleneck, out_features,
                            1 if stage == 1 or j > 0 else 2, inner,
                            self.cardinality, conv=conv, norm=norm)
          for j in range(blocks_per_stage)]
      names = [f'stage_{stage}_bottleneck_{j}'
               for j in range(blocks_per_stage)]
      y = layers.Sequential(blocks, names=names, name=f'stage_{stage}')(y)
    features = layers.global_avg_pool(y)
    logits = layers.Dense(
        self.num_classes, dtype=self.dtype,
        kernel_init=layers.kaiming_normal_fan_in,
        bias_init=nn.initializers.zeros, name='classifier')(features)
    return self.output(logits, features, return_features)


ResNeXt29 = functools.partial(ResNeXt, cardinality=8, depth=29)
# Tests only: one bottleneck per stage, 2 groups, narrow.
_TinyResNeXt = functools.partial(ResNeXt, cardinality=2, depth=11,
                                 widen_factor=2, base_width=8)
