"""In-memory input path: the whole dataset lives on the accelerators.

For data that fits in device memory (digits, CIFAR, Tiny-ImageNet: 1.2 GB of
uint8 at most), the split is copied to every device once, *replicated*, so a
batch is one local gather on each device: no host work, no host-to-device
copy and no cross-device traffic per step. Per epoch, one jitted call draws
the permutation from `fold_in(key(seed), epoch)`; per step, one jitted call
(compiled once: `step` is a traced argument) slices the permutation, gathers
and augments the batch (`augment.apply`) and normalises it, returning
arrays laid out with `sharding`. Everything is a pure function of (seed,
epoch, step), so a resumed run sees the same batches.

This module needs only jax and numpy (no TFDS), so it also runs where only
arrays are at hand.
"""

import functools
from typing import Iterator

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from nasty_jax.data import augment

Batch = dict[str, jax.Array]


def batch_counts(num_train: int, num_eval: int, batch_size: int,
                 eval_batch_size: int, divisor: int) -> tuple[int, int]:
  """(train steps per epoch, eval batches), after checking the sizes.

  Args:
    num_train: training examples used per epoch.
    num_eval: evaluation examples.
    batch_size: global training batch size.
    eval_batch_size: global evaluation batch size.
    divisor: both batch sizes must divide by it (device or process count).

  Returns:
    `num_train // batch_size` (the remainder is dropped: static shapes) and
    `ceil(num_eval / eval_batch_size)` (the last batch padded).
  """
  for what, size in (('batch size', batch_size),
                     ('eval batch size', eval_batch_size)):
    if size <= 0 or size % divisor:
      raise ValueError(f'The {what} {size} must be a positive multiple of '
                       f'{divisor} (the number of devices or processes).')
  if num_train < batch_size:
    raise ValueError(f'The batch size {batch_size} exceeds the {num_train} '
                     'training examples in use: lower batch_size.')
  return num_train // batch_size, -(-num_eval // eval_batch_size)


def _epoch_keys(seed_key, epoch, *, num_train):
  """The epoch's permutation and its augmentation key."""
  perm_key, aug_key = jax.random.split(jax.random.fold_in(seed_key, epoch))
  return jax.random.permutation(perm_key, num_train), aug_key


def _train_batch(images, labels, perm, aug_key, step, *, batch_size, policy,
                 norm, dtype):
  index = lax.dynamic_slice_in_dim(perm, step * batch_size, batch_size)
  params = augment.sample_params_jax(jax.random.fold_in(aug_key, step),
                                     policy, (batch_size,))
  x = augment.apply(jnp, images, index, policy, params)
  return {'image': augment.normalize(jnp, x, norm, dtype),
          'label': labels[index]}


def _eval_batch(images, labels, k, *, batch_size, num_eval, norm, dtype):
  position = k * batch_size + jnp.arange(batch_size)
  mask = position < num_eval
  index = jnp.where(mask, position, 0)
  return {'image': augment.normalize(jnp, images[index], norm, dtype),
          'label': labels[index], 'mask': mask.astype(jnp.float32)}


class DevicePipeline:
  """Batches gathered and augmented on device from a resident dataset.

  Attributes:
    num_classes: label count.
    image_shape: (H, W, 3).
    num_train: training examples used per epoch (after any subset).
    num_eval: evaluation examples (the whole split).
    global_batch_size: training batch size.
    eval_batch_size: evaluation batch size.
    steps_per_epoch: `num_train // global_batch_size`.
    eval_steps: number of evaluation batches.
  """

  def __init__(self, train: tuple[np.ndarray, np.ndarray],
               evaluation: tuple[np.ndarray, np.ndarray], *, num_classes: int,
               global_batch_size: int, eval_batch_size: int, seed: int,
               policy: augment.Policy, norm: augment.Normalization,
               sharding: jax.sharding.NamedSharding | None = None,
               image_dtype=jnp.float32):
    """Copies the data to the devices and compiles the batch functions.

    Args:
      train: (images (N, H, W, 3) uint8, labels (N,)) to train on.
      evaluation: (images, labels) of the evaluation split.
      num_classes: label count.
      global_batch_size: training batch size (all devices together).
      eval_batch_size: evaluation batch size.
      seed: base seed of shuffling and augmentation.
      policy: training augmentation.
      norm: normalisation constants.
      sharding: layout of the batches, e.g. NamedSharding(mesh, P('batch'))
        on a 1-D mesh; the data is replicated over its mesh. None = the
        default device.
      image_dtype: dtype of the normalised images.
    """
    self.num_classes = num_classes
    self.image_shape = tuple(train[0].shape[1:])
    self.num_train, self.num_eval = len(train[1]), len(evaluation[1])
    self.global_batch_size = global_batch_size
    self.eval_batch_size = eval_batch_size
    devices = 1 if sharding is None else len(sharding.device_set)
    self.steps_per_epoch, self.eval_steps = batch_counts(
        self.num_train, self.num_eval, global_batch_size, eval_batch_size,
        devices)
    replicated = (None if sharding is None else
                  jax.sharding.NamedSharding(sharding.mesh,
                                             jax.sharding.PartitionSpec()))
    put = functools.partial(_put, sharding=replicated)
    self._train = (put(train[0]), put(np.asarray(train[1], np.int32)))
    self._eval = (put(evaluation[0]),
                  put(np.asarray(evaluation[1], np.int32)))
    self._seed_key = jax.random.key(seed)
    self._epoch_fn = jax.jit(
        functools.partial(_epoch_keys, num_train=self.num_train),
        out_shardings=replicated)
    self._train_fn = jax.jit(
        functools.partial(_train_batch, batch_size=global_batch_size,
                          policy=policy, norm=norm, dtype=image_dtype),
        out_shardings=sharding)
    self._eval_fn = jax.jit(
        functools.partial(_eval_batch, batch_size=eval_batch_size,
                          num_eval=self.num_eval, norm=norm,
                          dtype=image_dtype),
        out_shardings=sharding)

  def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    """Yields epoch `epoch`'s batches from step `start_step` on.

    Args:
      epoch: 0-based epoch; with the seed it fixes order and augmentation.
      start_step: first step within the epoch (to resume mid-epoch).

    Yields:
      {'image': (B, H, W, 3) image_dtype normalised, 'label': (B,) int32}.
    """
    perm, aug_key = self._epoch_fn(self._seed_key, epoch)
    for step in range(start_step, self.steps_per_epoch):
      yield self._train_fn(*self._train, perm, aug_key, step)

  def eval_batches(self) -> Iterator[Batch]:
    """Yields the whole eval split once, in order, the last batch padded.

    Yields:
      {'image', 'label', 'mask'}: mask is float32 1 for real examples and 0
      for padding.
    """
    for k in range(self.eval_steps):
      yield self._eval_fn(*self._eval, k)


def _put(x: np.ndarray, sharding) -> jax.Array:
  """Copies a host array to the devices (works across processes too)."""
  if sharding is None:
    return jax.device_put(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
