"""The DAFL image generator (huawei-noah `DAFL/DAFL-train.py`,
docs/data_free.md#generator).

z -> Linear -> (B, 128, s, s) -> BN -> x2 nearest -> conv-BN(eps 0.8)-LReLU
-> x2 nearest -> conv-BN(eps 0.8)-LReLU -> conv -> tanh -> affine-free BN,
with s = img_size // 4. Upstream never calls `generator.eval()`, so every BN
here always normalises with batch statistics; the running statistics are
still updated (apply with `mutable=['batch_stats']`) but never read.

Variable paths joined with '.' equal the torch module paths (`l1.0`,
`conv_blocks0.0`, `conv_blocks1.{0,1}`, `conv_blocks2.{0,1,3,5}`), and the
activations take up their `nn.Sequential` indices as upstream's do.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nasty_jax.models import layers

# Channel widths are hard-coded upstream, whatever the image size.
_WIDTH = 128


def _upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """`F.interpolate(x, scale_factor=2)` (mode 'nearest') on NHWC."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Generator(nn.Module):
  """DAFL generator: (B, latent_dim) latents -> (B, H, W, channels) images.

  The output is batch-normalised per channel by an affine-free BN after the
  tanh, so it is not bounded to [-1, 1]; it is fed to the teacher as is.

  Attributes:
    img_size: output height and width; a multiple of 4.
    latent_dim: size of the N(0, I) latent.
    channels: output channels.
    dtype: compute dtype.
    bn_axis_name: axis for synced BN statistics (pmap), or None. Upstream's
      DataParallel used per-GPU statistics instead
      (docs/data_free.md#departures-and-history).
  """
  img_size: int = 32
  latent_dim: int = 1000
  channels: int = 3
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    if self.img_size % 4:
      raise ValueError(
          f'img_size must be a multiple of 4 (two x2 upsamplings of '
          f'img_size // 4); got {self.img_size}.')
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(
          f'z must have shape (batch, latent_dim={self.latent_dim}); got '
          f'{z.shape}.')
    size = self.img_size // 4
    conv = functools.partial(layers.Conv, kernel_size=3, padding=1,
                             dtype=self.dtype)
    norm = functools.partial(layers.BatchNorm, use_running_average=False,
                             axis_name=self.bn_axis_name, dtype=self.dtype)
    # torch's BatchNorm2d(c, 0.8) sets eps, not momentum.
    norm_eps08 = functools.partial(norm, epsilon=0.8)
    leaky_relu = functools.partial(nn.leaky_relu, negative_slope=0.2)

    x = layers.Sequential(
        [functools.partial(layers.Dense, _WIDTH * size * size,
                           dtype=self.dtype)], name='l1')(z)
    # Upstream `view`s the linear output as NCHW (channel-major).
    x = x.reshape(z.shape[0], _WIDTH, size, size).transpose(0, 2, 3, 1)
    x = layers.Sequential([norm], name='conv_blocks0')(x)
    x = _upsample_nearest_2x(x)
    x = layers.Sequential(
        [functools.partial(conv, _WIDTH), norm_eps08, leaky_relu],
        name='conv_blocks1')(x)
    x = _upsample_nearest_2x(x)
    return layers.Sequential(
        [functools.partial(conv, _WIDTH // 2), norm_eps08, leaky_relu,
         functools.partial(conv, self.channels), jnp.tanh,
         functools.partial(norm, affine=False)],
        name='conv_blocks2')(x)
