"""The attacks' losses against hand-computed numpy values and gradients."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nasty_jax import losses
from nasty_jax import methods


@pytest.fixture(name='x64', autouse=True)
def _x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


def _softmax(z, t=1.0):
  z = np.asarray(z, np.float64) / t
  finite = np.where(np.isfinite(z), z, -np.inf)
  e = np.exp(finite - finite.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _log_softmax(z, t=1.0):
  z = np.asarray(z, np.float64) / t
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _onehot(y, c):
  return np.eye(c)[y]


RNG = np.random.default_rng(0)
STUDENT = RNG.standard_normal((5, 6)) * 2
TEACHER = RNG.standard_normal((5, 6)) * 3
LABELS = np.array([0, 3, 5, 1, 2])


def _kd_numpy(s, t, y, tau, alpha):
  """alpha tau^2 KL(p_t || q) + (1 - alpha) CE, and its gradient in s."""
  b, c = s.shape
  p = _softmax(t, tau)
  log_q = _log_softmax(s, tau)
  kl = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - log_q), 0)
  ce = -(_onehot(y, c) * _log_softmax(s)).sum(-1)
  value = alpha * tau**2 * kl.sum(-1).mean() + (1 - alpha) * ce.mean()
  grad = (alpha * tau * (np.exp(log_q) - p)
          + (1 - alpha) * (_softmax(s) - _onehot(y, c))) / b
  return value, grad


def _objective(name, **fields):
  method = methods.get(name)
  f = ml_collections.ConfigDict({**method.defaults, **fields})
  return method.objective(f)


def _value_and_grad(name, student, teacher, labels, **fields):
  objective = _objective(name, **fields)

  def loss(s):
    out = methods.Outputs(s, jnp.asarray(labels),
                          {'teacher': jnp.asarray(teacher)},
                          jnp.asarray(0))
    return objective(out)[0]

  value, grad = jax.value_and_grad(loss)(jnp.asarray(student))
  return float(value), np.asarray(grad)


@pytest.mark.parametrize('spread', ['uniform', 'others'])
def test_label_smoothing_value_and_gradient(spread):
  eps, c = 0.1, STUDENT.shape[1]
  y = _onehot(LABELS, c)
  target = ((1 - eps) * y + eps / c if spread == 'uniform' else
            (1 - eps) * y + eps / (c - 1) * (1 - y))
  want = -(target * _log_softmax(STUDENT)).sum(-1).mean()
  want_grad = (_softmax(STUDENT) - target) / len(LABELS)
  value, grad = _value_and_grad('ls', STUDENT, TEACHER, LABELS,
                                spread=spread)
  np.testing.assert_allclose(value, want, rtol=1e-12)
  np.testing.assert_allclose(grad, want_grad, atol=1e-12)
  assert np.isclose(target.sum(-1), 1).all()


@pytest.mark.parametrize('tau', [1.0, 20.0])
@pytest.mark.parametrize('k', [1, 2, 5])
def test_top_k_kd_with_minus_infinity_targets(tau, k):
  kept = np.argsort(-TEACHER, axis=-1)[:, :k]
  sparse = np.full_like(TEACHER, -np.inf)
  np.put_along_axis(sparse, kept, np.take_along_axis(TEACHER, kept, -1), -1)
  want, want_grad = _kd_numpy(STUDENT, sparse, LABELS, tau, 0.9)
  value, grad = _value_and_grad('topk_api', STUDENT, TEACHER, LABELS, k=k,
                                temperature=tau)
  np.testing.assert_allclose(value, want, rtol=1e-10)
  np.testing.assert_allclose(grad, want_grad, atol=1e-10)


def test_top_1_kd_is_hard_label_kd_exactly():
  for tau in (1.0, 4.0, 20.0):
    top1 = _value_and_grad('topk_api', STUDENT, TEACHER, LABELS, k=1,
                           temperature=tau)
    hard = _value_and_grad('hard_label', STUDENT, TEACHER, LABELS,
                           temperature=tau)
    assert top1[0] == hard[0]
    np.testing.assert_array_equal(top1[1], hard[1])
    # KL to a one-hot target is the cross-entropy with the argmax label.
    argmax = TEACHER.argmax(-1)
    ce_t = -(_onehot(argmax, 6) * _log_softmax(STUDENT, tau)).sum(-1).mean()
    ce = -(_onehot(LABELS, 6) * _log_softmax(STUDENT)).sum(-1).mean()
    np.testing.assert_allclose(hard[0], 0.9 * tau**2 * ce_t + 0.1 * ce,
                               rtol=1e-10)


def test_large_logits_stay_finite():
  big_s, big_t = STUDENT * 500, TEACHER * 500  # ~1e3.
  for name, fields in (('kd', {}), ('topk_api', {'k': 2}),
                       ('hard_label', {}), ('ls', {})):
    for tau in (1.0, 20.0):
      value, grad = _value_and_grad(name, big_s, big_t, LABELS,
                                    **({'temperature': tau}
                                       if name != 'ls' else {}), **fields)
      assert np.isfinite(value) and np.isfinite(grad).all(), (name, tau)
  value, grad = _value_and_grad('kd', big_s.astype(np.float32),
                                big_t.astype(np.float32), LABELS)
  assert np.isfinite(value) and np.isfinite(grad).all()


def test_top_k_logits_ties_and_identity():
  z = jnp.asarray([[3.0, 1.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
  out = np.asarray(losses.top_k_logits(z, 2))
  # Ties at the k-th value keep the lowest class indices: exactly k kept.
  np.testing.assert_array_equal(np.isfinite(out),
                                [[True, False, True, False],
                                 [True, True, False, False]])
  np.testing.assert_array_equal(out[0, [0, 2]], [3.0, 3.0])
  np.testing.assert_array_equal(losses.top_k_logits(z, 4), z)
  np.testing.assert_array_equal(losses.top_k_logits(z, 9), z)
  with pytest.raises(ValueError, match='k must be >= 1'):
    losses.top_k_logits(z, 0)


def _kl_numpy(target_logits, logits, tau):
  p = _softmax(target_logits, tau)
  return (p * (_log_softmax(target_logits, tau)
               - _log_softmax(logits, tau))).sum(-1).mean()


@pytest.mark.parametrize('loc', [1, 2])
@pytest.mark.parametrize('distil', [True, False])
def test_skeptical_loss_value_and_gradients(loc, distil):
  heads = [RNG.standard_normal((5, 6)) * 2 for _ in range(4)]
  tau, alpha, b, c = 4.0, 0.9, 5, 6
  y = _onehot(LABELS, c)

  def ce(z):
    return -(y * _log_softmax(z)).sum(-1).mean()

  full = (alpha * tau**2 * _kl_numpy(TEACHER, heads[loc], tau)
          + (1 - alpha) * ce(heads[loc])
          + 0.3 * _kl_numpy(heads[0], heads[1], tau) + 0.7 * ce(heads[1])
          + ce(heads[0]))
  want = full if distil else ce(heads[0])
  # Gradients, head by head.
  g = [np.zeros((b, c)) for _ in range(4)]
  g[0] += (_softmax(heads[0]) - y) / b
  if distil:
    p_t, q_loc = _softmax(TEACHER, tau), _softmax(heads[loc], tau)
    g[loc] += (alpha * tau * (q_loc - p_t)
               + (1 - alpha) * (_softmax(heads[loc]) - y)) / b
    p0, p1 = _softmax(heads[0], tau), _softmax(heads[1], tau)
    g[1] += (0.3 / tau * (p1 - p0) + 0.7 * (_softmax(heads[1]) - y)) / b
    # The self-distillation target is not detached: it moves head 0 too.
    r = np.log(p0) - np.log(p1)
    g[0] += 0.3 / tau * p0 * (r - (p0 * r).sum(-1, keepdims=True)) / b
  objective = _objective('skeptical', loc=loc, kd_delay=0 if distil else 5)

  def loss(hs):
    out = methods.Outputs(tuple(hs), jnp.asarray(LABELS),
                          {'teacher': jnp.asarray(TEACHER)}, jnp.asarray(1))
    return objective(out)[0]

  value, grads = jax.value_and_grad(loss)([jnp.asarray(h) for h in heads])
  np.testing.assert_allclose(float(value), want, rtol=1e-10)
  for got, expected in zip(grads, g):
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-10)


def test_attack_set_and_variants():
  names = methods.attack_set(10)
  assert names == ['kd_t1_a0.5', 'kd_t1_a0.9', 'kd_t4_a0.5', 'kd_t4_a0.9',
                   'kd_t20_a0.5', 'kd_t20_a0.9', 'hard_label', 'topk2',
                   'topk5', 'skeptical']
  variant = methods.get('kd_t20_a0.5')
  config = ml_collections.ConfigDict({'kd': {'temperature': 4.0,
                                             'alpha': 0.9}})
  # A variant reads the base's group, its own fields win.
  assert methods.fields(config, variant).to_dict() == {'temperature': 20.0,
                                                       'alpha': 0.5}
  assert variant.stage_name('nasty', 'net') == 'kd_t20_a0.5_nasty/net'
  assert methods.attack_set(100)[-3:] == ['topk2', 'topk5', 'skeptical']
  assert methods.attack_set(200)[-3:] == ['topk4', 'topk10', 'skeptical']
