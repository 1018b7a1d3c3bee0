"""DeepInversion: BN order = torch's, first-BN weight, one compile, images."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nasty_jax import losses
from nasty_jax import models
from nasty_jax import parallel
from nasty_jax.data_free import deepinversion
from nasty_jax.data_free import losses as df_losses

SIZE = 16  # _tiny_resnet pools globally; small images keep this fast.


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(
      batch_size=20, iterations=8, lr=0.1, r_feature=10.0,
      first_bn_multiplier=1.0, tv_l2=2.5e-5, l2=0.0, jitter=2,
      cig_scale=0.0, adi_temperature=3.0))
  config.update(overrides)
  return config


def _teacher():
  """A tiny teacher whose running statistics are those of a 'data' batch.

  At init they are (0, 1), which no input can match in eval mode; with
  torch momentum 1 one train-mode pass sets them to the batch's own.
  """
  init_key, data_key = jax.random.split(jax.random.key(5, impl='rbg'))
  fit = models.get_model('_tiny_resnet', 10, bn_momentum=1.0)
  variables = jax.jit(functools.partial(fit.init, train=False))(
      init_key, jnp.zeros((1, SIZE, SIZE, 3)))
  data = 1.0 + 0.3 * jax.random.normal(data_key, (32, SIZE, SIZE, 3))
  _, updates = jax.jit(functools.partial(
      fit.apply, train=True, mutable=['batch_stats']))(variables, data)
  return models.get_model('_tiny_resnet', 10), {
      'params': variables['params'], 'batch_stats': updates['batch_stats']}


@pytest.mark.parametrize('arch', ['resnet18', 'resnet34'])
def test_bn_order_is_the_torch_forward_order(arch, fixtures_dir):
  with np.load(fixtures_dir / 'datafree.npz') as data:
    names = [str(n) for n in data[f'meta_{arch}_bn_names']]
    channels = data[f'meta_{arch}_bn_channels']
  model = models.get_model(arch, 10)
  variables = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0),
      jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  paths = deepinversion.bn_layer_paths(model, variables, (32, 32, 3))
  assert ['.'.join(p) for p in paths] == names
  assert paths[0] == ('bn1',)  # The stem: where first_bn_multiplier goes.
  for path, want in zip(paths, channels):
    node = variables['batch_stats']
    for key in path:
      node = node[key]
    assert node['mean'].shape == (want,), path


def test_first_bn_multiplier_weights_the_stem():
  teacher, variables = _teacher()
  paths = deepinversion.bn_layer_paths(teacher, variables, (SIZE, SIZE, 3))
  x = np.random.RandomState(0).standard_normal((8, SIZE, SIZE, 3))
  _, captured = jax.jit(functools.partial(
      teacher.apply, train=False, mutable=['bn_stats']))(variables, x)
  stats = deepinversion.bn_statistics(captured['bn_stats'],
                                      variables['batch_stats'], paths)
  one = df_losses.bn_feature_loss(*stats)
  ten = df_losses.bn_feature_loss(*stats, first_bn_multiplier=10.0)
  # The stem BN read by name, independently of the recorded order.
  (mean, var), = captured['bn_stats']['bn1']['input_stats']
  running = variables['batch_stats']['bn1']
  stem = (np.linalg.norm(var - running['var'])
          + np.linalg.norm(mean - running['mean']))
  np.testing.assert_allclose(ten - one, 9.0 * stem, rtol=1e-5)


def test_inversion_step_compiles_once_and_lowers_the_loss(monkeypatch):
  teacher, variables = _teacher()
  monkeypatch.setattr(deepinversion, 'inversion_step', chex.assert_max_traces(
      deepinversion.inversion_step, n=1))
  par = parallel.Parallel('jit', 1)
  inverter = deepinversion.Inverter(_config(), teacher, par.replicate(
      variables), (SIZE, SIZE, 3), 10, par)
  images, curves, bad = inverter.invert(jax.random.key(1))
  assert bad is None and images.shape == (20, SIZE, SIZE, 3)
  assert set(curves) == set(deepinversion.LOSS_TERMS)
  assert all(len(v) == 8 for v in curves.values())
  assert curves['loss'][-1] < 0.7 * curves['loss'][0], curves['loss']
  assert curves['bn'][-1] < curves['bn'][0]
  # The same key gives the same batch (start image and every jitter).
  again, _, _ = inverter.invert(jax.random.key(1))
  np.testing.assert_array_equal(images, again)
  # Targets are class-cyclic: column c of a 10-wide grid is class c.
  np.testing.assert_array_equal(jax.device_get(inverter.targets),
                                np.arange(20) % 10)


def test_step_loss_is_the_upstream_sum_on_the_rolled_batch():
  teacher, variables = _teacher()
  config = _config(cig_scale=0.5, l2=0.01, first_bn_multiplier=3.0)
  student = models.get_model('_tiny_resnet', 10)
  student_vars = jax.jit(functools.partial(student.init, train=False))(
      jax.random.key(9, impl='rbg'), jnp.zeros((1, SIZE, SIZE, 3)))
  paths = deepinversion.bn_layer_paths(teacher, variables, (SIZE, SIZE, 3))
  tx = deepinversion.image_optimizer(config.lr)
  state = deepinversion.init_inversion(jax.random.key(2), (20, SIZE, SIZE, 3),
                                       tx)
  targets = jnp.asarray(deepinversion.class_cyclic_targets(20, 10))
  key = jax.random.key(4)
  _, terms = jax.jit(functools.partial(
      deepinversion.inversion_step, teacher=teacher, bn_paths=tuple(paths),
      tx=tx, r_feature=config.r_feature,
      first_bn_multiplier=config.first_bn_multiplier, tv_l2=config.tv_l2,
      l2=config.l2, jitter=config.jitter, cig_scale=config.cig_scale,
      student=student))(state, variables, student_vars, targets, key)
  # Recomputed by hand from the same offsets.
  off = jax.random.randint(jax.random.fold_in(key, 0), (2,), -2, 3)
  assert np.all(np.abs(np.asarray(off)) <= 2)
  x = np.roll(np.asarray(state.images), tuple(np.asarray(off)), axis=(1, 2))

  @jax.jit
  def reference(x):
    logits, captured = teacher.apply(variables, x, train=False,
                                     mutable=['bn_stats'])
    stats = deepinversion.bn_statistics(captured['bn_stats'],
                                        variables['batch_stats'], paths)
    return {
        'ce': losses.cross_entropy(logits, targets),
        'bn': df_losses.bn_feature_loss(*stats, first_bn_multiplier=3.0),
        'tv_l2': df_losses.tv_l2(x), 'l2': df_losses.l2_whole_batch(x),
        'competition': df_losses.adi_competition_loss(
            student.apply(student_vars, x), logits, 3.0)}

  want = reference(x)
  for name, value in want.items():
    np.testing.assert_allclose(terms[name], value, rtol=2e-5, err_msg=name)
  total = (want['ce'] + 10.0 * want['bn'] + 2.5e-5 * want['tv_l2']
           + 0.01 * want['l2'] + 0.5 * want['competition'])
  np.testing.assert_allclose(terms['loss'], total, rtol=2e-5)


def test_grid_puts_one_class_per_column():
  pixels = np.zeros((25, 4, 4, 3), np.float32)
  pixels[np.arange(25) % 10 == 3] = 1.0  # Class 3 white, the rest black.
  grid = deepinversion.image_grid(pixels, columns=10, pad=1)
  assert grid.shape == (3 * 5 + 1, 10 * 5 + 1, 3)
  cells = grid[1:, 1:].reshape(3, 5, 10, 5, 3)[:, :4, :, :4]
  assert np.all(cells[:, :, 3] == 255)
  # Row 2 holds images 20..24; its cells 5..9 are empty (white).
  assert np.all(cells[:2, :, [0, 1, 2, 4, 5]] == 0)
  assert np.all(cells[2, :, 5:] == 255)
  np.testing.assert_allclose(
      deepinversion.to_pixels(np.array([[-1.0, 0.0, 9.0]]),
                              np.array([0.5] * 3), np.array([0.25] * 3)),
      [[0.25, 0.5, 1.0]])
