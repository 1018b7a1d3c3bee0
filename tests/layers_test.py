"""Hand-written gradients of the shared layers against JAX's own autodiff.

`max_pool_2x2` and `batch_normalize` replace reverse-mode through
`reduce_window` and the two-pass variance with closed forms (CPU speed);
these tests pin them to what autodiff of the plain formulation gives.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from nasty_jax.models import layers


def _pool_reference(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')


@pytest.mark.parametrize('shape', [(3, 8, 8, 5), (2, 7, 9, 3)])
def test_max_pool_value_and_gradient_equal_reduce_window(shape):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  # Ties inside windows (a ReLU'd map has many): the first maximum in
  # row-major order takes the gradient, as select-and-scatter does.
  x[:, 0, 0] = x[:, 0, 1]
  x[:, 2:4, 2:4] = 0.0
  x = jnp.asarray(x)
  y_ref, vjp_ref = jax.vjp(_pool_reference, x)
  y, vjp = jax.vjp(layers.max_pool_2x2, x)
  np.testing.assert_array_equal(y, y_ref)
  g = jnp.asarray(rng.standard_normal(y.shape).astype(np.float32))
  np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])


def _bn_reference(x, scale, bias):
  mean, var, _ = layers._batch_moments(x, None)  # pylint: disable=protected-access
  y = layers._affine(x, mean, jax.lax.rsqrt(var + 1e-5), scale, bias)  # pylint: disable=protected-access
  return y, mean, var


@pytest.fixture(name='x64')
def _x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


@pytest.mark.parametrize('affine', [True, False])
@pytest.mark.parametrize('stat_cotangents', [False, True])
def test_batch_normalize_gradient_equals_autodiff(x64, affine,
                                                  stat_cotangents):
  del x64
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((6, 4, 3, 5)) * 3 + 2)
  scale = jnp.asarray(rng.standard_normal(5)) if affine else None
  bias = jnp.asarray(rng.standard_normal(5)) if affine else None
  new = functools.partial(layers.batch_normalize, epsilon=1e-5,
                          axis_name=None)
  out, vjp = jax.vjp(new, x, scale, bias)
  out_ref, vjp_ref = jax.vjp(_bn_reference, x, scale, bias)
  for a, b in zip(out, out_ref):
    np.testing.assert_array_equal(a, b)
  g = jnp.asarray(rng.standard_normal(x.shape))
  zeros = jnp.zeros(5)
  stats = ((jnp.asarray(rng.standard_normal(5)),
            jnp.asarray(rng.standard_normal(5))) if stat_cotangents
           else (zeros, zeros))
  got, want = vjp((g, *stats)), vjp_ref((g, *stats))
  for a, b in zip(got, want):
    if b is None:
      assert a is None
    else:
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_batch_normalize_synced_over_devices_equals_one_device(x64):
  del x64
  devices = jax.local_devices()[:4]
  assert len(devices) == 4, 'conftest gives 4 CPU devices'
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((8, 3, 3, 4)))
  scale, bias = jnp.asarray(rng.standard_normal(4)), jnp.zeros(4)
  g = jnp.asarray(rng.standard_normal(x.shape))

  def grads(x, g, axis_name):
    def loss(x, scale):
      y, _, _ = layers.batch_normalize(x, scale, bias, 1e-5, axis_name)
      return jnp.sum(y * g)
    g_x, g_scale = jax.grad(loss, (0, 1))(x, scale)
    if axis_name is not None:
      g_scale = jax.lax.psum(g_scale, axis_name)
    return g_x, g_scale

  one_x, one_scale = grads(x, g, None)
  mapped = jax.pmap(functools.partial(grads, axis_name='i'), axis_name='i',
                    devices=devices)
  four_x, four_scale = mapped(x.reshape(4, 2, 3, 3, 4), g.reshape(4, 2, 3,
                                                                 3, 4))
  np.testing.assert_allclose(four_x.reshape(x.shape), one_x, rtol=1e-10,
                             atol=1e-12)
  np.testing.assert_allclose(four_scale[0], one_scale, rtol=1e-10)


@pytest.mark.parametrize('stride,padding,groups', [(1, 1, 1), (2, 1, 1),
                                                   (2, 0, 1), (1, 1, 4)])
def test_conv2d_chunked_kernel_gradient_equals_autodiff(
    x64, stride, padding, groups, monkeypatch):
  del x64
  # Small chunks: the batch of 8 splits into 4 chunks of 2.
  monkeypatch.setattr(layers, 'WGRAD_CHUNK_BYTES', 2 * 9 * 9 * 8 * 8)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((8, 9, 9, 8)))
  kernel = jnp.asarray(rng.standard_normal((3, 3, 8 // groups, 8)))

  def plain(x, k):
    pad = ((padding, padding),) * 2
    return jax.lax.conv_general_dilated(
        x, k, (stride, stride), pad, dimension_numbers=('NHWC', 'HWIO',
                                                        'NHWC'),
        feature_group_count=groups)

  y, vjp = jax.vjp(
      lambda x, k: layers.conv2d(x, k, stride, padding, groups), x, kernel)
  y_ref, vjp_ref = jax.vjp(plain, x, kernel)
  np.testing.assert_array_equal(y, y_ref)
  assert layers.wgrad_chunks(x, y) == 4
  g = jnp.asarray(rng.standard_normal(y.shape))
  for a, b in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
