"""Tests of nasty_jax.data.augment: geometry vs torchvision/Pillow, draws."""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from nasty_jax.data import augment


def _apply_np_one(image, policy, dy=0, dx=0, flip=False, angle=0.0):
  params = augment.Params(np.array([[dy, dx]]), np.array([flip]),
                          np.array([angle], np.float64))
  return augment.apply(np, image[None], np.zeros(1, int), policy, params)[0]


def _apply_jax_one(image, policy, dy=0, dx=0, flip=False, angle=0.0):
  params = augment.Params(jnp.array([[dy, dx]], jnp.int32),
                          jnp.array([flip]), jnp.array([angle], jnp.float32))
  out = augment.apply(jnp, jnp.asarray(image)[None], jnp.zeros(1, jnp.int32),
                      policy, params)
  return np.asarray(out[0])


def _reference_crop_flip(image, dy, dx, flip):
  """torchvision RandomCrop(32, padding=4) + hflip, written out."""
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  h, w = image.shape[:2]
  out = padded[dy:dy + h, dx:dx + w]
  return out[:, ::-1] if flip else out


def test_crop_flip_every_offset_matches_definition():
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  policy = augment.get_policy('crop_flip')
  for dy in range(9):
    for dx in range(9):
      for flip in (False, True):
        want = _reference_crop_flip(image, dy, dx, flip)
        got = _apply_np_one(image, policy, dy, dx, flip)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(
            _apply_jax_one(image, policy, dy, dx, flip), want)


@pytest.mark.parametrize('size', [(64, 64), (32, 32), (17, 24)])
def test_rotation_equals_pillow_exactly(size):
  """torchvision 0.5 RandomRotation = PIL rotate(angle, NEAREST, fill 0)."""
  rng = np.random.default_rng(1)
  policy = augment.get_policy('rotate_flip')
  for _ in range(60):
    image = rng.integers(0, 256, size + (3,), np.uint8)
    angle = rng.uniform(-20, 20)
    want = np.asarray(Image.fromarray(image).rotate(
        angle, resample=Image.Resampling.NEAREST, fillcolor=(0, 0, 0)))
    got = _apply_np_one(image, policy, angle=angle)
    np.testing.assert_array_equal(got, want)


def test_rotation_then_flip_order():
  image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8)
  rotated = Image.fromarray(image).rotate(13.0,
                                         resample=Image.Resampling.NEAREST)
  want = np.asarray(rotated.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
  got = _apply_np_one(image, augment.get_policy('rotate_flip'), flip=True,
                      angle=13.0)
  np.testing.assert_array_equal(got, want)


def test_device_rotation_matches_numpy():
  """float32 coefficients on device: at most rare single-pixel differences."""
  rng = np.random.default_rng(3)
  policy = augment.get_policy('rotate_flip')
  mismatched = total = 0
  for _ in range(100):
    image = rng.integers(0, 256, (64, 64, 3), np.uint8)
    angle = float(np.float32(rng.uniform(-20, 20)))
    want = _apply_np_one(image, policy, angle=angle)
    got = _apply_jax_one(image, policy, angle=angle)
    mismatched += int((got != want).any(-1).sum())
    total += 64 * 64
  assert mismatched <= 1e-4 * total


def _histogram_ok(values, edges, tolerance):
  freq = np.histogram(values, edges)[0] / len(values)
  return np.abs(freq - 1 / (len(edges) - 1)).max() <= tolerance


@pytest.mark.parametrize('backend', ['numpy', 'jax'])
def test_draw_distributions(backend):
  """Offsets uniform on 0..8, flip rate 1/2, angle uniform on [-20, 20].

  40,000 draws: the frequency std is <= 0.0025, the tolerance 0.01 is four
  or more standard deviations (and the seeds are fixed).
  """
  n = 40_000
  crop = augment.get_policy('crop_flip')
  rotate = augment.get_policy('rotate_flip')
  if backend == 'numpy':
    rng = np.random.default_rng(4)
    p = augment.sample_params_np(rng, crop, (n,))
    q = augment.sample_params_np(rng, rotate, (n,))
  else:
    k1, k2 = jax.random.split(jax.random.key(4))
    p = jax.tree.map(np.asarray, augment.sample_params_jax(k1, crop, (n,)))
    q = jax.tree.map(np.asarray, augment.sample_params_jax(k2, rotate, (n,)))
  offsets = np.asarray(p.offset)
  assert offsets.min() == 0 and offsets.max() == 8
  for axis in range(2):
    assert _histogram_ok(offsets[:, axis], np.arange(10) - 0.5, 0.01)
  assert abs(np.mean(p.flip) - 0.5) <= 0.01
  assert abs(np.mean(q.flip) - 0.5) <= 0.01
  angles = np.asarray(q.angle)
  assert angles.min() >= -20 and angles.max() <= 20
  assert _histogram_ok(angles, np.linspace(-20, 20, 9), 0.01)
  assert not np.asarray(q.offset).any() and not np.asarray(p.angle).any()


def test_no_flip_policy_never_flips():
  p = augment.sample_params_np(np.random.default_rng(5),
                               augment.get_policy('crop'), (1000,))
  assert not p.flip.any()
  q = augment.sample_params_jax(jax.random.key(5), augment.get_policy('crop'),
                                (1000,))
  assert not np.asarray(q.flip).any()


def test_normalize_matches_definition():
  image = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  norm = augment.CIFAR10_NORM
  want = (image / 255 - np.array(norm.mean)) / np.array(norm.std)
  np.testing.assert_allclose(
      augment.normalize(np, image, norm, np.float32), want, atol=1e-6)
  out = augment.normalize(jnp, jnp.asarray(image), norm, jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=2e-2)


def test_unknown_policy_lists_valid_ones():
  with pytest.raises(ValueError, match='crop_flip.*rotate_flip'):
    augment.get_policy('mixup')
