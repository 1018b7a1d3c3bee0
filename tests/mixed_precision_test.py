"""model.dtype='bfloat16': bf16 compute, float32 state, loss near float32's.

The float32 path's numbers are checked against the PyTorch fixtures
elsewhere (models_test, convert_test); here only that bf16 really computes
in bf16, keeps everything that is stored or reduced in float32, and trains
to about the same loss.
"""

import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nasty_jax import methods
from nasty_jax import models
from nasty_jax import parallel
from nasty_jax import state as state_lib
from nasty_jax import steps
from nasty_jax import programs

SGD = ml_collections.ConfigDict(dict(
    name='sgd', learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
    nesterov=False, milestones=(), gamma=0.1))
LOSS = ml_collections.ConfigDict(dict(temperature=4.0, omega=0.04,
                                      alpha=0.9))
BATCH = 16


def _nasty_steps(dtype, num_steps=3):
  """Nasty-mode steps of _tiny_resnet against a frozen _tiny_cnn.

  Returns:
    (parameter change, final state, per-step losses, the step's StableHLO).
  """
  par = parallel.Parallel('jit', 1)
  model = models.get_model('_tiny_resnet', 10, dtype=dtype)
  frozen = models.get_model('_tiny_cnn', 10, dtype=dtype)
  x0 = jnp.zeros((1, 32, 32, 3))
  tx = state_lib.create_optimizer(SGD, steps_per_epoch=1)
  state = state_lib.create_train_state(model.init(jax.random.key(0), x0), tx)
  init_params = jax.device_get(state.params)
  frozen_vars = {'adversary': frozen.init(jax.random.key(1), x0)}
  p_step = par.train_step(functools.partial(
      steps.train_step, model=model, tx=tx,
      objective=methods.get('nasty').objective(LOSS),
      learning_rate_fn=state_lib.learning_rate_schedule(SGD, 1),
      frozen={'adversary': functools.partial(frozen.apply, train=False)}))
  rng = np.random.RandomState(0)
  # The data paths hand the model images already in the compute dtype.
  batch = {'image': jnp.asarray(rng.standard_normal((BATCH, 32, 32, 3)),
                                dtype),
           'label': jnp.asarray(rng.randint(0, 10, BATCH), jnp.int32)}
  hlo = p_step.lower(state, frozen_vars, batch, jax.random.key(2)).as_text()
  history = []
  for i in range(num_steps):
    state, m = p_step(state, frozen_vars, batch, jax.random.key(i))
    history.append(float(m.compute()['loss']))
  state = jax.device_get(state)
  change = np.concatenate([
      np.ravel(a - b) for a, b in zip(jax.tree.leaves(state.params),
                                      jax.tree.leaves(init_params))])
  return change, state, history, hlo


def _convolution_types(hlo):
  """The operand/result type signature of every convolution."""
  return [line.split(' : ')[-1] for line in hlo.splitlines()
          if 'stablehlo.convolution' in line]


def test_bfloat16_step_computes_in_bf16_and_keeps_float32_state():
  change32, _, loss32, hlo32 = _nasty_steps(jnp.float32)
  change16, state16, loss16, hlo16 = _nasty_steps(jnp.bfloat16)
  # Every convolution (trained and frozen net, forward and backward) takes
  # and gives bf16; the float32 program has no bf16 at all.
  convs = _convolution_types(hlo16)
  assert len(convs) == len(_convolution_types(hlo32)) > 0
  for signature in convs:
    assert set(re.findall(r'x(bf16|f16|f32|f64)>', signature)) == {'bf16'}, (
        signature)
  assert 'bf16' not in hlo32
  # Parameters, BN statistics and optimiser state stay float32.
  for tree in (state16.params, state16.batch_stats, state16.opt_state):
    kinds = {x.dtype for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.floating)}
    assert kinds == {np.dtype(np.float32)}, kinds
  # Same training, to bf16 accuracy: losses (CE - omega * T^2 KL) agree to
  # a few percent, and the parameters moved the same way.
  np.testing.assert_allclose(loss16, loss32, rtol=0.05, atol=0.02)
  assert loss32[-1] < loss32[0] and loss16[-1] < loss16[0]
  cosine = change16 @ change32 / (np.linalg.norm(change16)
                                  * np.linalg.norm(change32))
  assert cosine > 0.95, cosine


def test_config_dtype_reaches_the_models():
  config = ml_collections.ConfigDict(dict(
      model=dict(dtype='bfloat16', bn_momentum=0.1, num_channels=8,
                 dropout_rate=0.0, width=64),
      dataset=dict(num_classes=10)))
  for arch in ('resnet18', 'net'):
    model = programs.create_model(config, arch, 'batch')
    assert model.dtype == jnp.bfloat16 and model.bn_axis_name == 'batch'
  config.model.dtype = 'float32'
  assert programs.create_model(config, 'resnet18').dtype == jnp.float32


def test_bfloat16_eval_logits_are_finite_and_near_float32():
  """ResNet-18's bf16 eval-mode logits on this backend: finite and within
  a few percent of float32's (XLA:CPU once made them NaN by fusing the
  last block into the pooling; layers.global_avg_pool fences it off)."""
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  model32 = models.get_model('resnet18', 10, width=16)
  variables = model32.init(jax.random.key(0), x)
  model16 = models.get_model('resnet18', 10, width=16, dtype=jnp.bfloat16)
  logits32, logits16 = (jax.jit(functools.partial(m.apply, train=False))(
      variables, x) for m in (model32, model16))
  assert np.isfinite(np.asarray(logits16)).all()
  np.testing.assert_allclose(logits16, logits32,
                             atol=0.05 * float(jnp.abs(logits32).max()))
