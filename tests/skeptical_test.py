"""The Skeptical student's multi-exit ResNet-18: heads, shapes, parameters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nasty_jax import metrics
from nasty_jax import models
from nasty_jax import steps
from nasty_jax.models import skeptical


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _sepconv(cin, cout):
  # Two depthwise 3x3 (9 cin each), 1x1 cin->cin, BN(cin), 1x1 cin->cout,
  # BN(cout); no biases.
  return 18 * cin + cin * cin + 2 * cin + cin * cout + 2 * cout


def _expected_params(num_classes, width=64):
  """The authors' resnet_self.py: ResNet-18 + 3 attention modules + ACs."""
  c = [width * 2**i for i in range(4)]
  resnet18 = {10: 11_173_962}[num_classes] if width == 64 else None
  attention = sum(_sepconv(ci, ci) + 2 * ci for ci in c[:3])
  chains = (_sepconv(c[0], c[1]) + _sepconv(c[1], c[2]) + _sepconv(c[2], c[3])
            + _sepconv(c[1], c[2]) + _sepconv(c[2], c[3])
            + _sepconv(c[2], c[3]))
  heads = 3 * (c[3] * num_classes + num_classes)
  return resnet18, attention + chains + heads


def test_parameter_count_and_head_order():
  model = models.get_model('resnet18_self', 10)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
  backbone, extra = _expected_params(10)
  assert _count(variables['params']) == backbone + extra == 12_098_664
  # The backbone is ResNet-18's, key for key.
  plain = jax.eval_shape(
      functools.partial(models.get_model('resnet18', 10).init, train=False),
      jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
  for name in plain['params']:
    assert _count(plain['params'][name]) == _count(
        variables['params'][name]), name


def test_heads_final_first_and_ensemble_accuracy():
  model = models.get_model('_tiny_resnet18_self', 5)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 32, 32, 3)),
                  jnp.float32)
  variables = model.init(jax.random.key(1), x)
  heads = model.apply(variables, x)
  assert isinstance(heads, tuple) and len(heads) == 4
  assert all(h.shape == (6, 5) and h.dtype == jnp.float32 for h in heads)
  # Head 0 is the final classifier ('linear' on the pooled layer4 map).
  logits, features = model.apply(variables, x, return_features=True)
  np.testing.assert_array_equal(logits, heads[0])
  assert features.shape == (6, 64)
  labels = jnp.argmax(heads[2], -1)
  m = steps.eval_step(variables, {'image': x, 'label': labels,
                                  'mask': jnp.ones(6)}, model=model)
  assert isinstance(m, metrics.MultiHeadEvalMetrics)
  values = m.compute()
  ensemble = jnp.argmax(jnp.mean(jnp.stack(heads), 0), -1) == labels
  np.testing.assert_allclose(values['ensemble_accuracy'],
                             np.mean(np.asarray(ensemble)))
  np.testing.assert_allclose(values['accuracy'], np.mean(
      np.asarray(jnp.argmax(heads[0], -1) == labels)))
  # Train mode: the same four heads, BN statistics updated.
  train_heads, updates = model.apply(variables, x, train=True,
                                     mutable=['batch_stats'])
  assert len(train_heads) == 4 and 'batch_stats' in updates


def test_attention_mask_and_upsample():
  # The mask is a sigmoid of a ReLU: in [0.5, 1).
  module = skeptical.Attention(
      functools.partial(models.layers.Conv, use_bias=False),
      functools.partial(models.layers.BatchNorm, use_running_average=True))
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 8, 8, 4)),
                  jnp.float32)
  variables = module.init(jax.random.key(0), x)
  mask = np.asarray(module.apply(variables, x))
  assert mask.shape == x.shape and mask.min() >= 0.5 and mask.max() < 1.0
  # torch's bilinear x2, align_corners=False, on a 2x2 map: source
  # coordinate (i + 0.5) / 2 - 0.5, clamped at the borders.
  z = np.array([[1.0, 2.0], [3.0, 4.0]])
  up = np.asarray(jax.image.resize(jnp.asarray(z), (4, 4), 'bilinear'))
  src = np.clip((np.arange(4) + 0.5) / 2 - 0.5, 0, 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, 1)
  w = src - lo
  rows = z[lo] * (1 - w)[:, None] + z[hi] * w[:, None]
  want = rows[:, lo] * (1 - w)[None] + rows[:, hi] * w[None]
  np.testing.assert_allclose(up, want, rtol=1e-6)
