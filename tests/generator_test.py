"""The DAFL generator against the upstream `Generator` class (datafree.npz).

The fixture ran upstream's module (img_size 8, latent_dim 6, channels 3) in
torch float64, train mode, with weights rebuilt from a seeded recipe
(docs/data_free.md#dafl-fixtures). Its images are NCHW; ours are NHWC.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nasty_jax.data_free import generator
from tests import reference_weights

FIXTURE = reference_weights.load_fixture('datafree')
SMALL = functools.partial(generator.Generator, img_size=8, latent_dim=6,
                          channels=3)


def _torch_params() -> dict[str, np.ndarray]:
  """The fixture's generator weights by torch name, in torch layout."""
  params = {}
  for name, shape, seed, scale, offset in zip(
      FIXTURE['gen_param_names'], FIXTURE['gen_param_shapes_torch'],
      FIXTURE['gen_param_seeds'], FIXTURE['gen_param_scales'],
      FIXTURE['gen_param_offsets']):
    shape = tuple(int(d) for d in str(shape).split('x'))
    z = np.random.RandomState(int(seed)).standard_normal(shape)
    params[str(name)] = offset + z * scale
  return params


def _to_flax(torch_params: dict[str, np.ndarray], dtype) -> dict:
  """torch layout -> flax: Linear (out,in) -> (in,out), OIHW -> HWIO."""
  flat = {}
  for name, value in torch_params.items():
    *path, leaf = name.split('.')
    if leaf == 'weight' and value.ndim == 4:
      leaf, value = 'kernel', value.transpose(2, 3, 1, 0)
    elif leaf == 'weight' and value.ndim == 2:
      leaf, value = 'kernel', value.T
    elif leaf == 'weight':
      leaf = 'scale'
    flat[(*path, leaf)] = jnp.asarray(value, dtype)
  return flax.traverse_util.unflatten_dict(flat)


def _variables(model, dtype):
  """Fixture params and fresh BN statistics (mean 0, var 1), as torch's."""
  z = jax.ShapeDtypeStruct((4, model.latent_dim), dtype)
  shapes = jax.eval_shape(model.init, jax.random.key(0), z)  # no compile
  params = _to_flax(_torch_params(), dtype)
  # Same tree (names and shapes) as upstream's named_parameters().
  assert (jax.tree.map(jnp.shape, shapes['params'])
          == jax.tree.map(jnp.shape, params))
  batch_stats = flax.traverse_util.path_aware_map(
      lambda path, s: (jnp.zeros if path[-1] == 'mean' else jnp.ones)(
          s.shape, s.dtype), shapes['batch_stats'])
  return {'params': params, 'batch_stats': batch_stats}


@pytest.mark.parametrize('dtype, rtol, atol', [
    (jnp.float32, 1e-5, 1e-5), (jnp.float64, 1e-10, 1e-10)])
def test_matches_upstream_forward_and_input_gradient(dtype, rtol, atol):
  with jax.enable_x64(dtype == jnp.float64):
    model = SMALL(dtype=dtype)
    variables = _variables(model, dtype)
    z = jnp.asarray(FIXTURE['gen_z'], dtype)
    proj = jnp.asarray(FIXTURE['gen_proj_R'].transpose(0, 2, 3, 1), dtype)

    def projected(z):
      images, _ = model.apply(variables, z, mutable=['batch_stats'])
      return jnp.sum(images * proj), images

    (_, images), grad_z = jax.jit(
        jax.value_and_grad(projected, has_aux=True))(z)
    assert images.dtype == dtype and images.shape == (4, 8, 8, 3)
    np.testing.assert_allclose(images.transpose(0, 3, 1, 2),
                               FIXTURE['gen_out'], rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad_z, FIXTURE['gen_grad_z_of_sum_out_times_R'],
                               rtol=rtol, atol=atol)


def test_batch_norm_layout_and_running_stats():
  model = SMALL()
  variables = _variables(model, jnp.float32)
  bn_names = [str(n) for n in FIXTURE['gen_bn_names']]
  stats = flax.traverse_util.flatten_dict(variables['batch_stats'], sep='.')
  assert sorted({k.rsplit('.', 1)[0] for k in stats}) == sorted(bn_names)
  # Only the last BN has no affine parameters (docs/data_free.md#generator).
  params = flax.traverse_util.flatten_dict(variables['params'], sep='.')
  for name, affine in zip(bn_names, FIXTURE['gen_bn_affine']):
    assert (f'{name}.scale' in params) == bool(affine)

  z = jnp.asarray(FIXTURE['gen_z'], jnp.float32)
  images, updates = model.apply(variables, z,
                                mutable=['batch_stats', 'bn_stats'])
  # Train-mode output BN: each channel has batch mean 0, biased var ~1.
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(images.var(axis=(0, 1, 2)), 1.0, atol=1e-3)
  # torch momentum 0.1 from mean 0 / var 1, unbiased var for running_var.
  new_stats = flax.traverse_util.flatten_dict(updates['batch_stats'],
                                              sep='.')
  inputs = flax.traverse_util.flatten_dict(updates['bn_stats'], sep='.')
  for name in bn_names:
    (batch_mean, batch_var), = inputs[f'{name}.input_stats']
    spatial = {'conv_blocks0.0': 2, 'conv_blocks1.1': 4}.get(name, 8)
    n = z.shape[0] * spatial**2
    np.testing.assert_allclose(new_stats[f'{name}.mean'], 0.1 * batch_mean,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new_stats[f'{name}.var'],
                               0.9 + 0.1 * batch_var * n / (n - 1),
                               rtol=1e-6)


def test_running_statistics_are_never_read():
  """Upstream never calls generator.eval(): every BN uses batch stats."""
  model = SMALL()
  variables = _variables(model, jnp.float32)
  shifted = dict(variables, batch_stats=jax.tree.map(
      lambda v: v + 3.0, variables['batch_stats']))
  z = jnp.asarray(FIXTURE['gen_z'], jnp.float32)
  apply = jax.jit(lambda v: model.apply(v, z, mutable=['batch_stats'])[0])
  np.testing.assert_array_equal(apply(variables), apply(shifted))


def test_full_size_parameter_count():
  model = generator.Generator()
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((2, 1000), jnp.float32))
  count = sum(np.prod(s.shape) for s in jax.tree.leaves(shapes['params']))
  # Linear 1000->8192 (+bias), three convs with bias, three affine BNs.
  expected = (1000 * 8192 + 8192 + 2 * 128 + 128 * 128 * 9 + 128 + 2 * 128
              + 128 * 64 * 9 + 64 + 2 * 64 + 64 * 3 * 9 + 3)
  assert count == expected == 8_423_939
  out = jax.eval_shape(
      lambda v, z: model.apply(v, z, mutable=['batch_stats'])[0], shapes,
      jax.ShapeDtypeStruct((2, 1000), jnp.float32))
  assert out.shape == (2, 32, 32, 3)


def test_synced_batch_norm_matches_one_device():
  """Under pmap with bn_axis_name, 4 shards give the global-batch result."""
  devices = jax.local_devices()[:4]
  if len(devices) < 4:
    pytest.skip('needs 4 devices (conftest forces 4 CPU devices)')
  z = jax.random.normal(jax.random.key(1), (8, 6))
  variables = _variables(SMALL(), jnp.float32)
  expected, expected_updates = SMALL().apply(variables, z,
                                             mutable=['batch_stats'])
  synced = jax.pmap(
      lambda v, z: SMALL(bn_axis_name='batch').apply(
          v, z, mutable=['batch_stats']),
      axis_name='batch', in_axes=(None, 0), devices=devices)
  images, updates = synced(variables, z.reshape(4, 2, 6))
  np.testing.assert_allclose(images.reshape(expected.shape), expected,
                             rtol=1e-5, atol=1e-5)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6),
      updates, expected_updates)


@pytest.mark.parametrize('kwargs, shape, message', [
    ({'img_size': 10}, (2, 6), 'multiple of 4'),
    ({}, (2, 7), 'latent_dim=6'),
])
def test_bad_input_raises(kwargs, shape, message):
  with pytest.raises(ValueError, match=message):
    SMALL(**kwargs).init(jax.random.key(0), jnp.zeros(shape))
