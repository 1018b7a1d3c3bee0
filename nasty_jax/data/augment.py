"""Training augmentations and normalisation, shared by both input paths.

The reference (`data_loader.py`, torchvision 0.5) augments in uint8 image
space, fills uncovered pixels with 0 *before* normalising, then normalises
with per-dataset constants (docs/reference.md#data). Here every geometric
augmentation is an
*inverse index map*: for each output pixel, `source_coords` says which source
pixel it shows, or that it shows fill (0). The map is written once against an
array namespace `xp` (numpy or jax.numpy), so the streaming path (numpy, one
record at a time) and the on-device path (jax, one batch at a time) run the
same code; only the random draws come from different generators, with the
same distributions:

  crop offsets  (dy, dx) uniform on 0..2*pad   torchvision RandomCrop(padding)
  flip          Bernoulli(0.5)                 RandomHorizontalFlip(0.5)
  angle         uniform on [-deg, +deg]        RandomRotation(deg)

Composition order is the reference's: rotate or crop first, then flip.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Normalization(NamedTuple):
  """Per-channel mean and std of images scaled to [0, 1] (RGB order)."""
  mean: tuple[float, float, float]
  std: tuple[float, float, float]


# docs/reference.md#data: the reference uses these CIFAR-10 constants for
# CIFAR-100 too.
CIFAR10_NORM = Normalization((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
TINY_IMAGENET_NORM = Normalization((0.4802, 0.4481, 0.3975),
                                   (0.2302, 0.2265, 0.2262))
# Mean and population std over every pixel of the digits *train* split
# (1437 images, uint8 / 255, the same for all three grey channels), rounded
# to 4 decimals: 0.30526 and 0.37616. tests/data_test.py recomputes them from
# the prepared dataset.
DIGITS_NORM = Normalization((0.3053,) * 3, (0.3762,) * 3)


@dataclasses.dataclass(frozen=True)
class Policy:
  """A training augmentation policy.

  Attributes:
    name: registry name.
    pad: RandomCrop zero padding per side; 0 = no crop.
    flip: random horizontal flip with p = 0.5.
    degrees: RandomRotation range [-degrees, degrees]; 0 = no rotation.
  """
  name: str
  pad: int = 0
  flip: bool = False
  degrees: float = 0.0


# The reference's transforms: docs/reference.md#data.
POLICIES = {
    p.name: p for p in (
        Policy('crop_flip', pad=4, flip=True),  # CIFAR.
        Policy('crop', pad=4),  # Digits are not mirror symmetric.
        Policy('rotate_flip', flip=True, degrees=20.0),  # Tiny-ImageNet.
        Policy('flip', flip=True),
        Policy('none'),
    )
}


def get_policy(name: str) -> Policy:
  """Returns the policy called `name`; raises listing the valid names."""
  if name not in POLICIES:
    raise ValueError(f'Unknown augmentation policy {name!r}; valid policies: '
                     f'{", ".join(sorted(POLICIES))}.')
  return POLICIES[name]


class Params(NamedTuple):
  """Random draws for a batch of images (leading dims = batch dims)."""
  offset: Any  # (..., 2) int32: crop (dy, dx) in 0..2*pad.
  flip: Any  # (...,) bool.
  angle: Any  # (...,) float, degrees, counter-clockwise.


def sample_params_np(rng: np.random.Generator, policy: Policy,
                     batch_shape: tuple[int, ...] = ()) -> Params:
  """Draws augmentation parameters with numpy (stream path)."""
  offset = (rng.integers(0, 2 * policy.pad + 1, size=batch_shape + (2,))
            if policy.pad else np.zeros(batch_shape + (2,), np.int64))
  flip = (rng.random(batch_shape) < 0.5 if policy.flip
          else np.zeros(batch_shape, bool))
  angle = (rng.uniform(-policy.degrees, policy.degrees, size=batch_shape)
           if policy.degrees else np.zeros(batch_shape))
  return Params(offset, flip, angle)


def sample_params_jax(key: jax.Array, policy: Policy,
                      batch_shape: tuple[int, ...]) -> Params:
  """Draws augmentation parameters with jax.random (device path)."""
  k_crop, k_flip, k_angle = jax.random.split(key, 3)
  offset = jax.random.randint(k_crop, batch_shape + (2,), 0,
                              2 * policy.pad + 1)
  flip = (jax.random.bernoulli(k_flip, 0.5, batch_shape) if policy.flip
          else jnp.zeros(batch_shape, bool))
  angle = jax.random.uniform(k_angle, batch_shape, minval=-policy.degrees,
                             maxval=policy.degrees)
  return Params(offset, flip, angle)


def _rotate_coords(xp, rows, cols, angle, height, width):
  """Inverse map of Pillow's `Image.rotate(angle, NEAREST)` (no expand).

  torchvision 0.5 RandomRotation calls exactly this: a counter-clockwise
  rotation about (W/2, H/2) in pixel-edge coordinates, sampled at output
  pixel centres. Pillow builds the inverse affine matrix in float64 (cos and
  sin rounded to 15 decimals), then runs its nearest-neighbour loop in 16.16
  fixed point (libImaging/Geometry.c): each coefficient is
  `floor(v * 65536 + 0.5)`, the source pixel is `(coefficient sum) >> 16`.
  Using the same fixed point here matters: a plain float floor disagrees with
  Pillow on about one pixel per image. The numpy path (float64 coefficients)
  equals Pillow exactly (tested); the device path computes the coefficients
  in float32 and can differ from it on rare pixels.

  Returns:
    (rows, cols) int source pixel indices, not yet range-checked.
  """
  theta = -xp.deg2rad(angle)
  cos, sin = xp.cos(theta), xp.sin(theta)
  if xp is np:  # Pillow's rounding; meaningless (and lossy) in float32.
    cos, sin = np.round(cos, 15), np.round(sin, 15)
  int_dtype = np.int64 if xp is np else jnp.int32
  cx, cy = width / 2, height / 2
  # Pillow's matrix (a0, a1, a2, a3, a4, a5) = (cos, sin, c, -sin, cos, f),
  # with the +0.5 pixel-centre terms folded into the offsets as it does.
  c = cos * -cx + sin * -cy + 0.0 + cx
  f = -sin * -cx + cos * -cy + 0.0 + cy

  def fix(v):
    return xp.floor(v * 65536.0 + 0.5).astype(int_dtype)[..., None, None]

  a0, a1, a3, a4 = fix(cos), fix(sin), fix(-sin), fix(cos)
  a2 = fix(c + cos * 0.5 + sin * 0.5)
  a5 = fix(f + -sin * 0.5 + cos * 0.5)
  rows, cols = rows.astype(int_dtype), cols.astype(int_dtype)
  return ((a5 + cols * a3 + rows * a4) >> 16,
          (a2 + cols * a0 + rows * a1) >> 16)


def source_coords(xp, policy: Policy, params: Params, height: int,
                  width: int):
  """Where each output pixel comes from, for a batch of augmented images.

  Args:
    xp: `numpy` or `jax.numpy`.
    policy: which augmentations are active.
    params: draws with batch shape `S` (from `sample_params_*`).
    height: image height (output = input size).
    width: image width.

  Returns:
    (rows, cols, valid): int32 arrays of shape `S + (height, width)`; rows
    and cols are clipped into the image, `valid` is False where the output
    pixel is fill (zero padding of the crop, corners of the rotation).
  """
  nb = len(params.flip.shape)
  rows = xp.reshape(xp.arange(height), (1,) * nb + (height, 1))
  cols = xp.reshape(xp.arange(width), (1,) * nb + (1, width))
  shape = params.flip.shape + (height, width)
  rows = xp.broadcast_to(rows, shape)
  cols = xp.broadcast_to(cols, shape)
  valid = xp.ones(shape, bool)
  # Backwards from the output: undo the flip, then the crop, then rotation.
  if policy.flip:
    cols = xp.where(params.flip[..., None, None], width - 1 - cols, cols)
  if policy.pad:
    rows = rows + params.offset[..., 0, None, None] - policy.pad
    cols = cols + params.offset[..., 1, None, None] - policy.pad
    valid = valid & (rows >= 0) & (rows < height) & (cols >= 0) & (
        cols < width)
  if policy.degrees:
    rows, cols = _rotate_coords(xp, rows, cols, params.angle, height, width)
    valid = valid & (rows >= 0) & (rows < height) & (cols >= 0) & (
        cols < width)
  rows = xp.clip(rows, 0, height - 1).astype(xp.int32)
  cols = xp.clip(cols, 0, width - 1).astype(xp.int32)
  return rows, cols, valid


def apply(xp, images, index, policy: Policy, params: Params):
  """Gathers `images[index]` and augments them, in one gather.

  Args:
    xp: `numpy` (stream path) or `jax.numpy` (device path).
    images: (N, H, W, C) uint8.
    index: (B,) int rows of `images` to take.
    policy: augmentation policy.
    params: draws with batch shape (B,).

  Returns:
    (B, H, W, C) uint8.
  """
  if policy == POLICIES['none']:
    return images[index]
  height, width = images.shape[1:3]
  rows, cols, valid = source_coords(xp, policy, params, height, width)
  batch = xp.broadcast_to(index[:, None, None], rows.shape)
  out = images[batch, rows, cols]
  return xp.where(valid[..., None], out, xp.zeros((), out.dtype))


def stack_params(draws: list[Params]) -> Params:
  """One Params of batch shape (B,) from B single draws."""
  return Params(*(np.stack(leaf) for leaf in zip(*draws)))


def normalize(xp, images, norm: Normalization, dtype):
  """(uint8 / 255 - mean) / std, computed in float32, returned as `dtype`."""
  mean = xp.asarray(norm.mean, xp.float32).reshape(
      (1,) * (images.ndim - 1) + (3,))
  std = xp.asarray(norm.std, xp.float32).reshape(
      (1,) * (images.ndim - 1) + (3,))
  x = images.astype(xp.float32) / xp.float32(255)
  return ((x - mean) / std).astype(dtype)
