"""Parity of nasty_jax.losses with the reference's torch float64 values.

tests/fixtures/losses.npz holds, per logit set, every KD and nasty loss and
its gradient on a grid of temperatures x alphas / omegas (fixtures README).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nasty_jax import losses
from tests import reference_weights

FIXTURE = reference_weights.load_fixture('losses')
SETS = range(int(FIXTURE['num_sets']))
TEMPERATURES = [float(t) for t in FIXTURE['temperatures']]
ALPHAS = [float(a) for a in FIXTURE['alphas']]
OMEGAS = [float(w) for w in FIXTURE['omegas']]

# (loss rtol, grad atol) per dtype: fixtures README suggestions.
TOLERANCES = {jnp.float32: (1e-5, 1e-6), jnp.float64: (1e-10, 1e-10)}


def _arrays(k: int, dtype):
  get = lambda name: FIXTURE[f'set{k}_{name}']
  logits = [jnp.asarray(get(f'{who}_logits'), dtype)
            for who in ('student', 'teacher', 'adversarial')]
  return (*logits, jnp.asarray(get('labels'), jnp.int32))


@jax.jit
def _kd(student, teacher, labels, temperature, alpha):
  (loss, aux), grad = jax.value_and_grad(losses.kd_loss, has_aux=True)(
      student, teacher, labels, temperature, alpha)
  return loss, aux, grad


@jax.jit
def _nasty(teacher, adversarial, labels, temperature, omega):
  (loss, aux), grad = jax.value_and_grad(losses.nasty_loss, has_aux=True)(
      teacher, adversarial, labels, temperature, omega)
  return loss, aux, grad


def _check_set(k: int, dtype) -> None:
  rtol, atol = TOLERANCES[dtype]
  student, teacher, adversarial, labels = _arrays(k, dtype)
  get = lambda name: FIXTURE[f'set{k}_{name}']
  np.testing.assert_allclose(losses.cross_entropy(student, labels),
                             get('ce_student'), rtol=rtol)
  np.testing.assert_allclose(losses.cross_entropy(teacher, labels),
                             get('ce_teacher'), rtol=rtol)
  for i, temperature in enumerate(TEMPERATURES):
    np.testing.assert_allclose(
        losses.kd_kl(student, teacher, temperature), get('kd_T2_kl')[i],
        rtol=rtol)
    for j, alpha in enumerate(ALPHAS):
      loss, aux, grad = _kd(student, teacher, labels, temperature, alpha)
      assert loss.dtype == dtype and grad.dtype == dtype
      np.testing.assert_allclose(loss, get('kd_loss')[i, j], rtol=rtol)
      np.testing.assert_allclose(aux['kl'], get('kd_T2_kl')[i], rtol=rtol)
      np.testing.assert_allclose(aux['ce'], get('ce_student'), rtol=rtol)
      np.testing.assert_allclose(grad, get('kd_grad_student')[i, j],
                                 rtol=0, atol=atol)
    for j, omega in enumerate(OMEGAS):
      loss, aux, grad = _nasty(teacher, adversarial, labels, temperature,
                               omega)
      np.testing.assert_allclose(loss, get('nasty_loss_no_const')[i, j],
                                 rtol=rtol)
      np.testing.assert_allclose(loss + 100.0, get('nasty_loss')[i, j],
                                 rtol=rtol)
      np.testing.assert_allclose(aux['kl'], get('nasty_adv_term')[i],
                                 rtol=rtol)
      np.testing.assert_allclose(aux['ce'], get('ce_teacher'), rtol=rtol)
      np.testing.assert_allclose(grad, get('nasty_grad_teacher')[i, j],
                                 rtol=0, atol=atol)


@pytest.mark.parametrize('k', SETS)
def test_float32_matches_reference(k):
  _check_set(k, jnp.float32)


@pytest.mark.parametrize('k', SETS)
def test_float64_matches_reference(k):
  with jax.enable_x64(True):
    _check_set(k, jnp.float64)


def test_bfloat16_inputs_are_computed_in_float32():
  student, teacher, _, labels = _arrays(0, jnp.bfloat16)
  loss, _ = losses.kd_loss(student, teacher, labels, 4.0, 0.9)
  assert loss.dtype == jnp.float32


def test_nasty_target_stop_gradient_is_detected():
  """A stop-gradient on softmax(n/T) leaves only the CE gradient."""

  def detached_target(teacher, adversarial, labels, temperature, omega):
    kl = losses.kd_kl(adversarial, jax.lax.stop_gradient(teacher),
                      temperature)
    return losses.cross_entropy(teacher, labels) - omega * kl

  for k in SETS:
    _, teacher, adversarial, labels = _arrays(k, jnp.float32)
    expected = FIXTURE[f'set{k}_nasty_grad_teacher'][1, 3]  # T=4, omega=0.04
    wrong = jax.grad(detached_target)(teacher, adversarial, labels, 4.0, 0.04)
    assert np.max(np.abs(wrong - expected)) > 1e-5
    right = _nasty(teacher, adversarial, labels, 4.0, 0.04)[2]
    np.testing.assert_allclose(right, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('temperature', [1.0, 4.0, 20.0])
def test_huge_logits_stay_finite(temperature):
  """Logits of magnitude 1e3 underflow the softmax; nothing may be NaN."""
  student, teacher, adversarial, labels = _arrays(3, jnp.float32)
  scale = lambda x: 1e3 * x / jnp.max(jnp.abs(x))
  student, teacher, adversarial = map(scale, (student, teacher, adversarial))
  if temperature < 20:  # At T=20 the spread of 2e3/T no longer underflows.
    assert jnp.min(jax.nn.softmax(teacher / temperature)) == 0.0
  for loss, _, grad in (
      _kd(student, teacher, labels, temperature, 0.9),
      _nasty(teacher, adversarial, labels, temperature, 0.04)):
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_kd_kl_of_identical_logits_is_zero():
  _, teacher, _, _ = _arrays(1, jnp.float32)
  np.testing.assert_allclose(losses.kd_kl(teacher, teacher, 4.0), 0.0,
                             atol=1e-6)


def test_weighted_cross_entropy_ignores_padding():
  student, _, _, labels = _arrays(0, jnp.float32)
  mask = jnp.array([1, 1, 1, 0, 1, 0, 0, 1], jnp.float32)
  keep = np.flatnonzero(mask)
  np.testing.assert_allclose(
      losses.cross_entropy(student, labels, weights=mask),
      losses.cross_entropy(student[keep], labels[keep]), rtol=1e-6)
  assert losses.cross_entropy(student, labels, jnp.zeros(8)) == 0.0


@pytest.mark.parametrize('call, message', [
    (lambda s, l: losses.cross_entropy(s[0], l), 'batch, num_classes'),
    (lambda s, l: losses.cross_entropy(s, l[:3]), 'labels must have shape'),
    (lambda s, l: losses.cross_entropy(s, s[:, 0]), 'integer'),
    (lambda s, l: losses.cross_entropy(s, l, jnp.ones(3)), 'weights'),
    (lambda s, l: losses.kd_kl(s, s[:, :5], 4.0), 'same'),
    (lambda s, l: losses.kd_kl(s, s, 0.0), 'temperature'),
])
def test_bad_input_raises(call, message):
  student, _, _, labels = _arrays(0, jnp.float32)
  with pytest.raises(ValueError, match=message):
    call(student, labels)
