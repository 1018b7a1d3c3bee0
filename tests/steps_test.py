"""The train steps: pmap on 4 devices = 1 device = jit, and no retrace."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nasty_jax import methods
from nasty_jax import models
from nasty_jax import parallel
from nasty_jax import state as state_lib
from nasty_jax import steps

NUM_STEPS = 3
BATCH = 16
SGD = ml_collections.ConfigDict(dict(
    name='sgd', learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
    nesterov=False, milestones=(2,), gamma=0.1, num_epochs=2))
LOSS = ml_collections.ConfigDict(dict(temperature=4.0, omega=0.04,
                                      alpha=0.9))


def _init_key(seed):
  # 'rbg' as every stage: threefry-based init compiles slowly on XLA:CPU.
  return jax.random.key(seed, impl='rbg')


def _objective(mode):
  return methods.get(mode).objective(LOSS)


def _frozen(mode, frozen_model):
  """The step's frozen applies for `mode`'s roles (nasty: adversary)."""
  return {role: functools.partial(frozen_model.apply, train=False)
          for role in methods.get(mode).frozen}


def _batches():
  rng = np.random.RandomState(0)
  return [{'image': rng.standard_normal((BATCH, 32, 32, 3)).astype(np.float32),
           'label': rng.randint(0, 10, BATCH).astype(np.int32)}
          for _ in range(NUM_STEPS)]


def _frozen_vars():
  model = models.get_model('_tiny_preresnet', 10)
  return model, model.init(_init_key(7), jnp.zeros((1, 32, 32, 3)))


def _run(kind, num_devices, mode, arch='_tiny_resnet'):
  """NUM_STEPS steps; returns final state and per-step metric values."""
  par = parallel.Parallel(kind, num_devices)
  model = models.get_model(arch, 10, bn_axis_name=par.axis_name)
  tx = state_lib.create_optimizer(SGD, steps_per_epoch=1)
  variables = model.init(_init_key(0), jnp.zeros((1, 32, 32, 3)))
  state = par.replicate(state_lib.create_train_state(variables, tx))
  frozen, frozen_vars = {}, {}
  if mode != 'normal':
    frozen_model, variables = _frozen_vars()
    frozen = _frozen(mode, frozen_model)
    frozen_vars = {role: par.replicate(variables) for role in frozen}
  p_step = par.train_step(functools.partial(
      steps.train_step, model=model, tx=tx, objective=_objective(mode),
      learning_rate_fn=state_lib.learning_rate_schedule(SGD, 1),
      frozen=frozen, axis_name=par.axis_name))
  history = []
  for i, batch in enumerate(_batches()):
    state, m = p_step(state, frozen_vars, par.shard_batch(batch),
                      jax.random.fold_in(jax.random.key(1), i))
    history.append(jax.device_get(m.compute()))
  return jax.device_get(state), history


def _assert_close(a, b, tol=2e-5):
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    scale = max(1.0, float(np.max(np.abs(y)))) if y.size else 1.0
    np.testing.assert_allclose(x, y, atol=tol * scale, rtol=0)


@pytest.mark.parametrize('mode', ['normal', 'nasty', 'kd'])
def test_pmap_four_devices_equals_one_device_and_jit(mode):
  assert jax.device_count() == 4, 'conftest must give 4 CPU devices'
  one, m_one = _run('pmap', 1, mode)
  four, m_four = _run('pmap', 4, mode)
  jit4, m_jit = _run('jit', 4, mode)
  for other, m_other in ((four, m_four), (jit4, m_jit)):
    _assert_close(other.params, one.params)
    _assert_close(other.batch_stats, one.batch_stats)
    for a, b in zip(m_other, m_one):
      # Metrics are reductions over the whole batch (the gradient norm over
      # every parameter, here ~3.25), summed in a different order per layout;
      # BatchNorm's closed-form backward puts them ~1e-4 apart in float32.
      _assert_close(a, b, tol=3e-4)
  # The steps did train: parameters moved and lr dropped at the milestone.
  assert m_one[1]['learning_rate'] == pytest.approx(0.1)
  assert m_one[2]['learning_rate'] == pytest.approx(0.01)
  assert int(one.step) == NUM_STEPS


def test_net_dropout_bn1d_pmap_equals_jit():
  # BatchNorm1d and the Adam path, under both wrappers on 4 devices.
  four, _ = _run('pmap', 4, 'kd', arch='_tiny_cnn')
  jit4, _ = _run('jit', 4, 'kd', arch='_tiny_cnn')
  _assert_close(four.params, jit4.params)
  _assert_close(four.batch_stats, jit4.batch_stats)


def test_step_traces_once():
  traces = []
  par = parallel.Parallel('pmap', 4)
  model = models.get_model('_tiny_resnet', 10, bn_axis_name=par.axis_name)
  tx = state_lib.create_optimizer(SGD, steps_per_epoch=1)
  state = par.replicate(state_lib.create_train_state(
      model.init(_init_key(0), jnp.zeros((1, 32, 32, 3))), tx))

  def counted(*args, **kwargs):
    traces.append(1)
    return steps.train_step(*args, **kwargs)

  p_step = par.train_step(functools.partial(
      counted, model=model, tx=tx, objective=_objective('normal'),
      learning_rate_fn=state_lib.learning_rate_schedule(SGD, 1),
      axis_name=par.axis_name))
  for i, batch in enumerate(_batches()):
    state, _ = p_step(state, {}, par.shard_batch(batch),
                      jax.random.fold_in(jax.random.key(1), i))
  assert len(traces) == 1


def test_nonfinite_loss_names_first_step():
  par = parallel.Parallel('jit', 1)
  model = models.get_model('_tiny_resnet', 10)
  tx = state_lib.create_optimizer(SGD, steps_per_epoch=1)
  state = state_lib.create_train_state(
      model.init(_init_key(0), jnp.zeros((1, 32, 32, 3))), tx)

  def objective(out):
    # A negative label marks the batch whose loss turns NaN.
    poison = jnp.where(out.labels[0] < 0, jnp.nan, 1.0)
    return _objective('normal')(methods.Outputs(
        out.logits * poison, jnp.abs(out.labels), out.frozen, out.epoch))

  p_step = par.train_step(functools.partial(
      steps.train_step, model=model, tx=tx, objective=objective,
      learning_rate_fn=state_lib.learning_rate_schedule(SGD, 1)))
  batches = _batches()
  batches[1]['label'][0] = -1
  total = None
  for i, batch in enumerate(batches):
    state, m = p_step(state, {}, par.shard_batch(batch),
                      jax.random.key(i))
    total = m if total is None else total.merge(m)
  assert int(total.compute()['first_nonfinite_step']) == 1


def test_batch_size_must_divide_devices():
  par = parallel.Parallel('pmap', 4)
  with pytest.raises(ValueError, match='does not divide over 4 devices'):
    par.check_batch_size(10)
  with pytest.raises(ValueError, match='Unknown parallelism'):
    parallel.Parallel('shard_map')


def test_sgd_matches_torch_update_rule():
  # d = g + wd*w; buf = 0.9*buf + d (buf = d first); w -= lr*buf.
  tx = state_lib.create_optimizer(SGD, steps_per_epoch=1)
  w = {'w': jnp.array([1.0, -2.0])}
  opt_state = tx.init(w)
  g = {'w': jnp.array([0.5, 0.25])}
  buf = np.zeros(2)
  w_ref = np.array([1.0, -2.0])
  for step in range(3):
    lr = 0.1 if step < 2 else 0.01
    d = np.array([0.5, 0.25]) + 5e-4 * w_ref
    buf = d if step == 0 else 0.9 * buf + d
    w_ref = w_ref - lr * buf
    updates, opt_state = tx.update(g, opt_state, w)
    w = jax.tree_util.tree_map(lambda p, u: p + u, w, updates)
  np.testing.assert_allclose(np.asarray(w['w']), w_ref, rtol=1e-6)
