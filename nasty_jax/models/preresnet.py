"""Pre-activation ResNet-20/32, the paper's "ResNetC"
(docs/reference.md#preresnet).

Reference `model/preresnet.py`: a bare 3x3 stem (no BN/ReLU), BN-ReLU-conv
blocks with no ReLU after the addition, a conv-only 1x1 `downsample` applied
to the raw block input, a final BN-ReLU and a fixed `AvgPool2d(8)`, which
makes it 32x32-only. Convs are N(0, sqrt(2/(kh*kw*out))); `fc` keeps torch's
default init.
"""

import functools

import flax.linen as nn
import jax

from nasty_jax.models import layers


class PreActBlock(nn.Module):
  """BN-ReLU-conv3x3(s), BN-ReLU-conv3x3, + (downsampled) raw input."""
  planes: int
  strides: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(self.norm(name='bn1')(x))
    y = self.conv(self.planes, 3, self.strides, 1, name='conv1')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.planes, 3, 1, 1, name='conv2')(y)
    residual = x
    if self.strides != 1 or x.shape[-1] != self.planes:
      # `downsample.0`: a 1x1 conv with no BN, on the raw input.
      residual = layers.Sequential(
          (functools.partial(self.conv, self.planes, 1, self.strides),),
          name='downsample')(x)
    return y + residual


class PreResNet(layers.Classifier):
  """PreResNet-D; logits (B, num_classes) or (logits, pooled features).

  Attributes (besides layers.Classifier's):
    depth: 6n + 2 with n blocks per stage; < 44 (the reference switches to an
      unspecified bottleneck block from 44 on).
    width: channels of layer1 (doubled per stage); 16 in the reference.
  """
  depth: int = 20
  width: int = 16

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False):
    if (self.depth - 2) % 6 or not 8 <= self.depth < 44:
      raise ValueError(
          f'PreResNet depth must be 6n+2 between 8 and 38 (20 and 32 are the '
          f'paper\'s); got {self.depth}. Depth >= 44 uses a bottleneck block '
          'the reference specification does not cover.')
    blocks_per_stage = (self.depth - 2) // 6
    conv = functools.partial(layers.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=layers.kaiming_normal_fan_out)
    norm = self.batch_norm(train)
    y = conv(self.width, 3, 1, 1, name='conv1')(x)
    for stage in range(3):
      blocks = [
          functools.partial(PreActBlock, self.width * 2**stage,
                            1 if stage == 0 or j > 0 else 2,
                            conv=conv, norm=norm)
          for j in range(blocks_per_stage)]
      y = layers.Sequential(blocks, name=f'layer{stage + 1}')(y)
    y = nn.relu(norm(name='bn')(y))
    # AvgPool2d(8) equals a global mean only on an 8x8 map.
    layers.check_spatial('preresnet', x, y, (8, 8), '32x32 input')
    features = layers.global_avg_pool(y)
    logits = layers.Dense(self.num_classes, dtype=self.dtype,
                          name='fc')(features)
    return self.output(logits, features, return_features)


PreResNet20 = functools.partial(PreResNet, depth=20)
PreResNet32 = functools.partial(PreResNet, depth=32)
# Tests only: one block per stage, narrow.
_TinyPreResNet = functools.partial(PreResNet, depth=8, width=4)
