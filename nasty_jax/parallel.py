"""Runs the pure step bodies data-parallel: `jax.pmap` or `jax.jit`.

* 'pmap' (the default): the step maps over a named axis 'batch'; the train
  state and frozen networks are passed unreplicated (`in_axes=None`) and come
  back as replicated global arrays (`out_axes=None`), which orbax saves as is.
* 'jit': the same bodies with `axis_name=None` over one global batch sharded
  along a 1-D mesh axis 'batch'; XLA inserts the reductions.

Both see the same global batch, and BatchNorm statistics are global in both,
so a run's numbers do not depend on the device count (tests check it).
"""

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'batch'
PARALLELISMS = ('pmap', 'jit')


class Parallel:
  """Device set, shardings and step wrappers for one parallelism mode."""

  def __init__(self, kind: str = 'pmap', num_devices: int = -1):
    if kind not in PARALLELISMS:
      raise ValueError(f'Unknown parallelism {kind!r}; valid: '
                       f'{", ".join(PARALLELISMS)}.')
    devices = jax.devices()
    if num_devices > 0:
      if jax.process_count() > 1:
        raise ValueError('num_devices must be -1 on a multi-host run.')
      if num_devices > len(devices):
        raise ValueError(f'num_devices={num_devices} but JAX sees only '
                         f'{len(devices)} device(s).')
      devices = devices[:num_devices]
    self.kind = kind
    self.devices = devices
    self.mesh = Mesh(np.asarray(devices), (AXIS,))
    self.batch_sharding = NamedSharding(self.mesh, P(AXIS))
    self.replicated = NamedSharding(self.mesh, P())
    # Under pmap the step bodies name the axis; under jit they must not.
    self.axis_name = AXIS if kind == 'pmap' else None
    self._local_devices = [d for d in devices
                           if d.process_index == jax.process_index()]
    # (B, ...) -> (devices, B/devices, ...) on device: each device keeps the
    # rows it already holds, so the in-memory path never visits the host.
    self._split = jax.jit(_split_leading, static_argnums=(1,),
                          out_shardings=self.batch_sharding)

  @property
  def device_count(self) -> int:
    return len(self.devices)

  def check_batch_size(self, batch_size: int, what: str = 'batch_size'
                       ) -> None:
    """Raises unless `batch_size` splits evenly over devices and hosts."""
    if batch_size % self.device_count:
      fit = self.device_count * max(1, batch_size // self.device_count)
      raise ValueError(
          f'{what}={batch_size} does not divide over {self.device_count} '
          f'devices; use a multiple of {self.device_count} (e.g. '
          f'--config.{what}={fit}).')

  def replicate(self, tree: Any) -> Any:
    """Places a pytree (frozen nets, init state) on every device."""
    return jax.device_put(tree, self.replicated)

  def train_step(self, fn: Callable) -> Callable:
    """Wraps `fn(state, frozen_vars, batch, rng) -> (state, metrics)`."""
    if self.kind == 'pmap':
      return jax.pmap(fn, axis_name=AXIS, in_axes=(None, None, 0, None),
                      out_axes=(None, None), donate_argnums=(0,),
                      devices=self.devices)
    return jax.jit(fn, donate_argnums=(0,),
                   out_shardings=(self.replicated, self.replicated))

  def eval_step(self, fn: Callable) -> Callable:
    """Wraps `fn(variables, batch) -> metrics`."""
    if self.kind == 'pmap':
      return jax.pmap(fn, axis_name=AXIS, in_axes=(None, 0), out_axes=None,
                      devices=self.devices)
    return jax.jit(fn, out_shardings=self.replicated)

  def shard_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
    """Lays out one global batch for the wrapped steps.

    Host (numpy) batches are this process's slice of the global batch; device
    batches (the in-memory input path) are already global arrays.

    Args:
      batch: arrays with a leading batch axis.

    Returns:
      pmap: arrays of shape (devices, B/devices, ...); jit: global arrays
      sharded along the batch axis.
    """
    return jax.tree_util.tree_map(self._shard, batch)

  def _shard(self, x):
    if self.kind == 'pmap':
      if isinstance(x, jax.Array):
        return self._split(x, self.device_count)
      return np.reshape(x, (len(self._local_devices), -1) + x.shape[1:])
    if isinstance(x, jax.Array):
      return jax.device_put(x, self.batch_sharding)
    return jax.make_array_from_process_local_data(self.batch_sharding, x)


def _split_leading(x: jax.Array, n: int) -> jax.Array:
  return x.reshape((n, x.shape[0] // n) + x.shape[1:])
