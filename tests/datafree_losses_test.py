"""Parity of nasty_jax.data_free.losses with the upstream DAFL/DI statements.

tests/fixtures/datafree.npz was made by running the upstream statements in
torch float64 (docs/data_free.md#dafl-fixtures). Its images are NCHW; ours are
NHWC.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nasty_jax.data_free import losses
from tests import reference_weights

FIXTURE = reference_weights.load_fixture('datafree')
NUM_BN = 3

# (rtol, atol) per dtype; fixture values are O(1).
TOLERANCES = {jnp.float32: (1e-5, 1e-6), jnp.float64: (1e-10, 1e-12)}
DTYPES = [jnp.float32, jnp.float64]


@pytest.fixture(params=DTYPES, ids=['float32', 'float64'])
def dtype(request):
  """Runs a test in float32, then again under jax_enable_x64 in float64."""
  with jax.enable_x64(request.param == jnp.float64):
    yield request.param


def _get(name: str, dtype, nchw: bool = False) -> jax.Array:
  value = FIXTURE[name]
  if nchw:
    value = value.transpose(0, 2, 3, 1)
  return jnp.asarray(value, dtype)


def _close(actual, name: str, dtype, nchw: bool = False) -> None:
  rtol, atol = TOLERANCES[dtype]
  actual = np.asarray(actual)
  if nchw:
    actual = actual.transpose(0, 3, 1, 2)
  np.testing.assert_allclose(actual, FIXTURE[name], rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------
# DAFL.


@pytest.mark.parametrize('prefix', ['dafl_c10', 'dafl_c100'])
def test_dafl_losses_and_gradients(prefix, dtype):
  get = lambda name: _get(f'{prefix}_{name}', dtype)
  close = lambda actual, name: _close(actual, f'{prefix}_{name}', dtype)
  logits, features = get('teacher_logits'), get('teacher_features')
  student = get('student_logits')
  oh, ie, a = (float(c) for c in FIXTURE[f'{prefix}_coeffs_oh_ie_a'])

  np.testing.assert_array_equal(jnp.argmax(logits, -1),
                                FIXTURE[f'{prefix}_pseudo_labels'])
  loss_oh, grad_oh = jax.value_and_grad(losses.one_hot_loss)(logits)
  close(loss_oh, 'loss_oh')
  close(grad_oh, 'grad_oh_wrt_teacher_logits')
  loss_act, grad_act = jax.value_and_grad(losses.activation_loss)(features)
  close(loss_act, 'loss_act')
  close(grad_act, 'grad_act_wrt_features')
  loss_ie, grad_ie = jax.value_and_grad(losses.information_entropy_loss)(
      logits)
  close(loss_ie, 'loss_ie')
  close(grad_ie, 'grad_ie_wrt_teacher_logits')
  # The natural-log variant upstream ran in 2019-11 is a different number.
  natural = FIXTURE[f'{prefix}_loss_ie_natural_log_variant']
  assert abs(float(loss_ie) - natural) > 0.5
  np.testing.assert_allclose(loss_ie * np.log(10.0), natural, rtol=1e-5)

  (loss_g, aux), (grad_g_logits, grad_g_features) = jax.value_and_grad(
      losses.dafl_generator_loss, argnums=(0, 1), has_aux=True)(
          logits, features, oh, ie, a)
  close(loss_g, 'loss_gen_total')
  close(aux['one_hot'], 'loss_oh')
  close(aux['information_entropy'], 'loss_ie')
  close(aux['activation'], 'loss_act')
  close(grad_g_logits, 'grad_gen_total_wrt_teacher_logits')
  close(grad_g_features, 'grad_gen_total_wrt_features')

  def total_with_kd(teacher_logits, student_logits):
    loss, _ = losses.dafl_generator_loss(teacher_logits, features, oh, ie, a)
    return loss + losses.dafl_kd_loss(student_logits, teacher_logits)

  total, (grad_t, grad_s) = jax.value_and_grad(total_with_kd, (0, 1))(
      logits, student)
  close(total, 'loss_total_with_kd')
  # The KD term sees detached teacher logits: it adds nothing to grad_t.
  close(grad_t, 'grad_gen_total_wrt_teacher_logits')
  close(grad_s, 'grad_kd_wrt_student_logits')
  close(losses.dafl_kd_loss(student, logits), 'loss_kd')


def test_information_entropy_survives_underflow():
  logits = 1e3 * jnp.eye(4, 10)  # every class but 4 has pbar == 0
  value, grad = jax.value_and_grad(losses.information_entropy_loss)(logits)
  np.testing.assert_allclose(value, -np.log10(4.0), rtol=1e-6)
  assert np.all(np.isfinite(grad))


# ----------------------------------------------------------------------------
# DeepInversion BN feature loss.


def _bn_loss(xs, running_means, running_vars, multiplier):
  """Batch statistics of NCHW inputs, two-pass biased, as the hook takes."""
  axes = (0, 2, 3)
  means = [jnp.mean(x, axis=axes, keepdims=True) for x in xs]
  variances = [jnp.mean(jnp.square(x - m), axis=axes)
               for x, m in zip(xs, means)]
  means = [m.reshape(-1) for m in means]
  return losses.bn_feature_loss(means, variances, running_means,
                                running_vars, first_bn_multiplier=multiplier)


@pytest.mark.parametrize('multiplier, suffix', [
    (1.0, 'sum'), (10.0, 'first_bn_x10')])
def test_bn_feature_loss(multiplier, suffix, dtype):
  xs = [_get(f'di_bn_x{l}', dtype) for l in range(NUM_BN)]
  rms = [_get(f'di_bn_running_mean{l}', dtype) for l in range(NUM_BN)]
  rvs = [_get(f'di_bn_running_var{l}', dtype) for l in range(NUM_BN)]
  loss, grads = jax.value_and_grad(_bn_loss)(xs, rms, rvs, multiplier)
  _close(loss, f'di_bn_loss_{suffix}', dtype)
  for l in range(NUM_BN):
    _close(grads[l], f'di_bn_grad_{suffix}_wrt_x{l}', dtype)
  if suffix == 'sum':
    per_layer = [_bn_loss(xs[l:l + 1], rms[l:l + 1], rvs[l:l + 1], 1.0)
                 for l in range(NUM_BN)]
    _close(jnp.stack(per_layer), 'di_bn_r_feature_per_layer', dtype)


def test_bn_feature_loss_is_nan_free_at_a_perfect_match():
  mean, var = jnp.arange(3.0), jnp.ones(3)
  grads = jax.grad(losses.bn_feature_loss, argnums=(0, 1))(
      [mean], [var], [mean], [var])
  for grad in grads:
    np.testing.assert_array_equal(grad[0], np.zeros(3))


@pytest.mark.parametrize('args, message', [
    (([], [], [], []), 'same, non-zero number'),
    (([jnp.zeros(3)], [jnp.zeros(3)], [jnp.zeros(3)], []), 'lengths'),
    (([jnp.zeros(3)], [jnp.zeros(4)], [jnp.zeros(3)], [jnp.zeros(3)]),
     'BN layer 0'),
])
def test_bn_feature_loss_rejects_mismatched_layers(args, message):
  with pytest.raises(ValueError, match=message):
    losses.bn_feature_loss(*args)


# ----------------------------------------------------------------------------
# DeepInversion image priors and jitter.


@pytest.mark.parametrize('fn, value, grad', [
    (losses.tv_l2, 'di_tv_l2', 'di_grad_tv_l2_wrt_img'),
    (losses.tv_l1, 'di_tv_l1', 'di_grad_tv_l1_wrt_img'),
    (losses.l2_whole_batch, 'di_l2_cifar', 'di_grad_l2_cifar_wrt_img'),
    (losses.l2_per_image_mean, 'di_l2_imagenet',
     'di_grad_l2_imagenet_wrt_img'),
])
def test_image_priors(fn, value, grad, dtype):
  loss, grad_img = jax.value_and_grad(fn)(_get('di_img', dtype, nchw=True))
  _close(loss, value, dtype)
  _close(grad_img, grad, dtype, nchw=True)


def test_jitter_matches_upstream_roll(dtype):
  off_h, off_w = (int(o) for o in FIXTURE['di_jitter_offsets'])
  img = _get('di_img', dtype, nchw=True)

  traces = []

  @jax.jit
  def rolled_tv(x, shifts):
    traces.append(shifts)  # runs once per trace, not per call
    rolled = losses.jitter(x, shifts[0], shifts[1])
    return rolled, jax.value_and_grad(
        lambda y: losses.tv_l2(losses.jitter(y, shifts[0], shifts[1])))(x)

  rolled, (loss, grad) = rolled_tv(img, jnp.array([off_h, off_w]))
  _close(rolled, 'di_img_rolled', dtype, nchw=True)
  _close(loss, 'di_tv_l2_rolled', dtype)
  _close(grad, 'di_grad_tv_l2_rolled_wrt_img', dtype, nchw=True)
  rolled, _ = rolled_tv(img, jnp.array([-2, 2]))
  np.testing.assert_array_equal(rolled, np.roll(img, (-2, 2), axis=(1, 2)))
  assert len(traces) == 1  # traced shifts: one compile serves every offset


@pytest.mark.parametrize('fn, image', [
    (losses.tv_l2, jnp.ones((2, 4, 4, 3))),  # all differences are 0
    (losses.l2_whole_batch, jnp.zeros((2, 4, 4, 3))),
    (losses.l2_per_image_mean, jnp.zeros((2, 4, 4, 3))),
])
def test_norms_have_zero_gradient_at_zero(fn, image):
  np.testing.assert_array_equal(jax.grad(fn)(image), np.zeros(image.shape))


def test_priors_reject_non_images():
  with pytest.raises(ValueError, match='batch, height, width, channels'):
    losses.tv_l2(jnp.zeros((3, 6, 6)))


# ----------------------------------------------------------------------------
# Adaptive DeepInversion competition term.


@pytest.mark.parametrize('prefix', ['di_adi', 'di_adi_close', 'di_adi_sharp'])
def test_adi_competition_loss(prefix, dtype):
  student = _get(f'{prefix}_student_logits', dtype)
  teacher = _get(f'{prefix}_teacher_logits', dtype)
  loss, (grad_s, grad_t) = jax.value_and_grad(
      losses.adi_competition_loss, argnums=(0, 1))(student, teacher)
  _close(loss, f'{prefix}_loss', dtype)
  _close(grad_s, f'{prefix}_grad_wrt_student_logits', dtype)
  _close(grad_t, f'{prefix}_grad_wrt_teacher_logits', dtype)
  if prefix == 'di_adi':
    _close(losses.adi_js_divergence(student, teacher), 'di_adi_js_raw', dtype)


def test_adi_sharp_case_exercises_the_clamps():
  """The sharp fixture only checks the zero clamp gradient if clamps bite."""
  student = _get('di_adi_sharp_student_logits', jnp.float32)
  probs = jax.nn.softmax(student / 3.0)
  clamped = np.mean((probs < losses.ADI_PROB_MIN)
                    | (probs > losses.ADI_PROB_MAX))
  assert clamped > 0.3
