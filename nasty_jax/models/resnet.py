"""CIFAR-style ResNet-18/34/50 (reference `model/resnet.py`;
docs/reference.md#resnet).

3x3 stride-1 stem with no max-pool, four stages of widths 64..512, projection
shortcuts (1x1 conv + BN) where the shape changes, global average pool and a
`linear` classifier. torch default initialisation everywhere.
"""

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax

from nasty_jax.models import layers


def _projection(x: jax.Array, out_features: int, strides: int,
                conv: layers.ModuleDef, norm: layers.ModuleDef
                ) -> jax.Array:
  """The block shortcut: identity, or `shortcut.0` conv + `shortcut.1` BN."""
  if strides == 1 and x.shape[-1] == out_features:
    return x
  return layers.Sequential(
      (functools.partial(conv, out_features, 1, strides),
       norm), name='shortcut')(x)


class BasicBlock(nn.Module):
  """conv3x3(s)-BN-ReLU-conv3x3-BN, + shortcut, ReLU (expansion 1)."""
  planes: int
  strides: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(self.planes, 3, self.strides, 1, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.planes, 3, 1, 1, name='conv2')(y)
    y = self.norm(name='bn2')(y)
    shortcut = _projection(x, self.planes, self.strides, self.conv, self.norm)
    return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
  """1x1-BN-ReLU, 3x3(s)-BN-ReLU, 1x1(4p)-BN, + shortcut, ReLU."""
  planes: int
  strides: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_features = self.planes * self.expansion
    y = self.conv(self.planes, 1, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    # The reference strides the 3x3 conv, not the first 1x1.
    y = self.conv(self.planes, 3, self.strides, 1, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(out_features, 1, name='conv3')(y)
    y = self.norm(name='bn3')(y)
    shortcut = _projection(x, out_features, self.strides, self.conv,
                           self.norm)
    return nn.relu(y + shortcut)


class ResNet(layers.Classifier):
  """CIFAR ResNet; logits (B, num_classes) or (logits, pooled features).

  Attributes (besides layers.Classifier's):
    stage_sizes: blocks in layer1..layer4.
    block: BasicBlock or Bottleneck.
    width: planes of layer1 (doubled per stage); 64 in the reference.
  """
  stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
  block: Any = BasicBlock
  width: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False):
    conv = functools.partial(layers.Conv, use_bias=False, dtype=self.dtype)
    norm = self.batch_norm(train)
    x = conv(self.width, 3, 1, 1, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    for stage, num_blocks in enumerate(self.stage_sizes):
      planes = self.width * 2**stage
      blocks = [
          functools.partial(self.block, planes,
                            1 if stage == 0 or j > 0 else 2,
                            conv=conv, norm=norm)
          for j in range(num_blocks)]
      x = layers.Sequential(blocks, name=f'layer{stage + 1}')(x)
    features = layers.global_avg_pool(x)
    logits = layers.Dense(self.num_classes, dtype=self.dtype,
                          name='linear')(features)
    return self.output(logits, features, return_features)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                             block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block=Bottleneck)
# Tests only: every code path (projection and identity shortcuts) in a
# fraction of the compute.
_TinyResNet = functools.partial(ResNet, stage_sizes=(2, 1, 1, 1),
                                block=BasicBlock, width=8)
