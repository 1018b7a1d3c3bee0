"""The Skeptical student's multi-exit ResNet-18 (Kundu et al., NeurIPS 2021).

The CIFAR ResNet-18 of `resnet.py` (its backbone always runs on ungated
features) with three auxiliary classifiers (docs/attacks.md#skeptical):
after layer i (i = 1, 2, 3) an attention mask, sigmoid of a stride-2
SepConv, BN, ReLU and a bilinear x2 upsample, gates the layer's output, and
a chain of stride-2 SepConvs brings it to 8 * width channels at the last
map's size, then a global average pool and its own classifier. The output
is every head's logits, final head first: (final, after layer 3, after
layer 2, after layer 1), as the authors' `resnet_self.py` orders them.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from nasty_jax.models import layers
from nasty_jax.models import resnet


class SepConv(nn.Module):
  """Depthwise 3x3 (stride s) - 1x1 - BN - ReLU - depthwise 3x3 - 1x1 - BN -
  ReLU; no biases."""
  features: int
  strides: int
  conv: layers.ModuleDef
  norm: layers.ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    y = self.conv(channels, 3, self.strides, 1, groups=channels,
                  name='depthwise1')(x)
    y = self.conv(channels, 1, name='pointwise1')(y)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(channels, 3, 1, 1, groups=channels, name='depthwise2')(y)
    y = self.conv(self.features, 1, name='pointwise2')(y)
    return nn.relu(self.norm(name='bn2')(y))


class Attention(nn.Module):
  """A mask in [0.5, 1): sigmoid(upsample2x(ReLU(BN(SepConv_s2(x)))))."""
  conv: layers.ModuleDef
  norm: layers.ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = SepConv(x.shape[-1], 2, self.conv, self.norm, name='sepconv')(x)
    y = nn.relu(self.norm(name='bn')(y))
    b, h, w, c = y.shape
    # torch's bilinear x2 with align_corners=False: half-pixel centres, the
    # border clamped, which jax.image.resize's triangle kernel also gives.
    y = jax.image.resize(y.astype(jnp.float32), (b, 2 * h, 2 * w, c),
                         'bilinear').astype(y.dtype)
    return jax.nn.sigmoid(y)


class ResNet18Self(layers.Classifier):
  """Multi-exit ResNet-18: a tuple of 4 logits, or (logits, final features).

  Attributes (besides layers.Classifier's):
    width: planes of layer1 (doubled per stage); 64 as the authors'.
  """
  width: int = 64
  stage_sizes: tuple[int, ...] = (2, 2, 2, 2)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False):
    conv = functools.partial(layers.Conv, use_bias=False, dtype=self.dtype)
    norm = self.batch_norm(train)
    dense = functools.partial(layers.Dense, self.num_classes,
                              dtype=self.dtype)
    y = conv(self.width, 3, 1, 1, name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    last = len(self.stage_sizes)
    aux = []
    for stage, num_blocks in enumerate(self.stage_sizes):
      planes = self.width * 2**stage
      blocks = [functools.partial(resnet.BasicBlock, planes,
                                  1 if stage == 0 or j > 0 else 2,
                                  conv=conv, norm=norm)
                for j in range(num_blocks)]
      y = layers.Sequential(blocks, name=f'layer{stage + 1}')(y)
      if stage + 1 < last:
        mask = Attention(conv, norm, name=f'attention{stage + 1}')(y)
        gated = mask * y
        for k in range(stage + 1, last):
          gated = SepConv(self.width * 2**k, 2, conv, norm,
                          name=f'aux{stage + 1}_sepconv{k - stage}')(gated)
        aux.append(dense(name=f'aux{stage + 1}_linear')(
            layers.global_avg_pool(gated)))
    features = layers.global_avg_pool(y)
    final = dense(name='linear')(features)
    if return_features:
      return self.output(final, features, True)
    return tuple(self.output(z, None, False) for z in
                 (final, *reversed(aux)))


# Tests only: the same wiring, narrow.
_TinyResNet18Self = functools.partial(ResNet18Self, width=8)
