"""Defenses: serving transforms, CMIM's loss, a defense x attack run."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import digits
from nasty_jax import experiment_report
from nasty_jax import experiment_schema as schema
from nasty_jax import experiments
from nasty_jax import losses
from nasty_jax import methods
from nasty_jax import pipeline
from nasty_jax import serving

RNG = np.random.default_rng(4)


def _config(**groups):
  base = {'dataset': {'num_classes': 10}, 'stingy': {'sparse_ratio': None}}
  return ml_collections.ConfigDict({**base, **groups})


def test_reverse_keeps_the_argmax_and_permutes_the_values():
  z = jnp.asarray(RNG.standard_normal((8, 10)))
  out = np.asarray(losses.reverse_rank_logits(z))
  np.testing.assert_array_equal(out.argmax(-1), np.asarray(z).argmax(-1))
  np.testing.assert_array_equal(np.sort(out, -1), np.sort(np.asarray(z), -1))
  # The runner-up gets the smallest value, the last class the second.
  order = np.argsort(-np.asarray(z), -1)
  rows = np.arange(8)
  np.testing.assert_array_equal(out[rows, order[:, 1]], np.asarray(z).min(-1))
  np.testing.assert_array_equal(out[rows, order[:, -1]],
                                np.asarray(z)[rows, order[:, 1]])
  small = jnp.asarray([[1.0, 5.0, 3.0, 2.0, 4.0]])
  np.testing.assert_array_equal(losses.reverse_rank_logits(small),
                                [[4.0, 5.0, 2.0, 3.0, 1.0]])


def test_stingy_keeps_int_ratio_times_classes():
  z = jnp.asarray(RNG.standard_normal((4, 10)))
  out = serving.resolve('stingy', _config())(z)
  assert (np.isfinite(np.asarray(out)).sum(-1) == 2).all()  # 0.2 * 10.
  out = serving.resolve('stingy', _config(
      dataset={'num_classes': 100}))(jnp.asarray(
          RNG.standard_normal((4, 100))))
  assert (np.isfinite(np.asarray(out)).sum(-1) == 10).all()  # 0.1 * 100.
  out = serving.resolve('stingy', _config(stingy={'sparse_ratio': 1.0}))(z)
  np.testing.assert_array_equal(out, z)  # k = C: the identity.


def test_api_modes():
  z = jnp.asarray(RNG.standard_normal((4, 10)) * 3)
  s = jnp.asarray(RNG.standard_normal((4, 10)))
  assert serving.resolve('logits', _config()) is None
  # Probabilities carry the same distribution at every temperature.
  probs = serving.resolve('probs', _config())(z)
  for tau in (1.0, 4.0):
    np.testing.assert_allclose(losses.kd_kl(s, probs, tau),
                               losses.kd_kl(s, z, tau), rtol=1e-5)
  np.testing.assert_array_equal(serving.resolve('label', _config())(z),
                                losses.top_k_logits(z, 1))
  np.testing.assert_array_equal(serving.resolve('topk:3', _config())(z),
                                losses.top_k_logits(z, 3))
  both = serving.resolve('stingy+label', _config())(z)
  assert (np.isfinite(np.asarray(both)).sum(-1) == 1).all()
  for bad in ('topk:0', 'topk', 'softmax'):
    with pytest.raises(ValueError, match='Unknown API output mode'):
      serving.resolve(bad, _config())
  with pytest.raises(ValueError, match='is not a serving transform'):
    serving.resolve('nasty', _config())


def _cmi_numpy(logits, labels, tau):
  p = np.exp(logits / tau - np.log(np.exp(logits / tau).sum(-1,
                                                             keepdims=True)))
  out = []
  for i, y in enumerate(labels):
    q = p[labels == y].mean(0)
    out.append((p[i] * (np.log(p[i]) - np.log(q))).sum())
  return float(np.mean(out))


@pytest.fixture(name='x64')
def _x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


def test_cmi_against_numpy_with_an_absent_class(x64):
  del x64
  logits = RNG.standard_normal((7, 5)) * 2
  labels = np.array([0, 0, 2, 2, 2, 4, 1])  # Class 3 is absent.
  for tau in (1.0, 4.0):
    got = losses.conditional_mutual_information(jnp.asarray(logits),
                                                jnp.asarray(labels), tau)
    np.testing.assert_allclose(float(got), _cmi_numpy(logits, labels, tau),
                               rtol=1e-10)
  # A class of one sample is its own centroid: no term.
  assert abs(float(losses.conditional_mutual_information(
      jnp.asarray(logits[:1]), jnp.asarray(labels[:1]), 1.0))) < 1e-15


def test_cmim_loss_value_and_gradient(x64):
  del x64
  logits = RNG.standard_normal((6, 4)) * 2
  labels = np.array([0, 1, 1, 3, 3, 3])
  temperatures, lam = (1.0, 2.0), 0.5

  def want(z):
    ce = np.mean(-(np.log(np.exp(z) / np.exp(z).sum(-1, keepdims=True))
                   [np.arange(6), labels]))
    return ce + lam * np.mean([_cmi_numpy(z, labels, t)
                               for t in temperatures])

  value, _ = losses.cmim_loss(jnp.asarray(logits), jnp.asarray(labels),
                              temperatures, lam)
  np.testing.assert_allclose(float(value), want(logits), rtol=1e-10)
  # With the centroids held fixed, the gradient of the CMI term is the one
  # of sum_i KL(P_i || Q_{y_i}) in P_i only: check by finite differences
  # against the numpy value computed with frozen centroids.
  p = lambda z, t: np.exp(z / t) / np.exp(z / t).sum(-1, keepdims=True)
  frozen_q = {t: {y: p(logits, t)[labels == y].mean(0) for y in set(labels)}
              for t in temperatures}

  def frozen(z):
    ce = np.mean(-np.log(p(z, 1.0)[np.arange(6), labels]))
    cmi = [np.mean([(p(z, t)[i] * (np.log(p(z, t)[i])
                                   - np.log(frozen_q[t][y]))).sum()
                    for i, y in enumerate(labels)]) for t in temperatures]
    return ce + lam * np.mean(cmi)

  grad = jax.grad(lambda z: losses.cmim_loss(
      z, jnp.asarray(labels), temperatures, lam)[0])(jnp.asarray(logits))
  eps, numeric = 1e-6, np.zeros_like(logits)
  for idx in np.ndindex(*logits.shape):
    step = np.zeros_like(logits)
    step[idx] = eps
    numeric[idx] = (frozen(logits + step) - frozen(logits - step)) / (2 * eps)
  np.testing.assert_allclose(np.asarray(grad), numeric, atol=1e-6)


def _tiny(workdir):
  return digits.get_config(
      '_tiny_resnet,students.archs=_tiny_cnn,batch_size=16,'
      'dataset.subset_percent=0.1,num_epochs=1,max_eval_batches=2,'
      'teachers=normal+nasty+stingy+reverse+cmim,'
      'students.methods=ce+ls+kd+hard_label')


def test_a_defense_x_attack_run_and_its_report(tmp_path):
  config = _tiny(tmp_path)
  results = pipeline.run(config, str(tmp_path / 'run' / 'seed0'))
  teachers = results['teachers']
  assert list(teachers) == ['normal', 'nasty', 'stingy', 'reverse', 'cmim']
  # A served defense keeps the normal teacher's argmax, so its accuracy.
  assert teachers['stingy']['best'] == pytest.approx(
      teachers['normal']['best'] if 'source' in teachers['normal'] else
      results['stages']['kd_normal/_tiny_cnn']['frozen_accuracy'])
  assert teachers['reverse']['best'] == teachers['stingy']['best']
  for defense in teachers:
    for attack in ('kd', 'hard_label'):
      assert results['students']['_tiny_cnn'][f'{attack}_{defense}'][
          'best'] is not None
  assert results['stages']['kd_stingy/_tiny_cnn']['frozen_checkpoint'] == (
      str(tmp_path / 'run' / 'seed0' / 'normal'))
  # The report: a matrix with a verdict per defense and a heatmap.
  run = schema.Run('run', 'configs/digits.py')
  cells = {d: schema.Cell('run', d) for d in teachers}
  table = _matrix(tuple(teachers), cells)
  entry = schema.Entry('mini', 'Mini', (run,), (table,))
  written = experiment_report.write_report(
      entry, experiments.gather_results(entry, str(tmp_path)),
      str(tmp_path / 'report'))
  text = open(written[0]).read()
  for defense in ('normal', 'nasty', 'stingy', 'reverse', 'cmim'):
    assert any(line.startswith(f'* {defense}: ') and (
        'distillable' in line) for line in text.splitlines()), defense
  assert any(p.endswith('_heatmap.png') and os.path.getsize(p) > 0
             for p in written)


def _matrix(defenses, cells):
  normal = cells['normal']
  rows = []
  for d in defenses:
    rows.append((d, (schema.Cell('run', d, versus=None if d == 'normal'
                                 else normal), *[
        schema.Cell('run', f'{a}_{d}/_tiny_cnn',
                    versus=schema.Cell('run', 'ls/_tiny_cnn'))
        for a in ('kd', 'hard_label')])))
  return schema.Table('matrix', ('Teacher', 'KD', 'hard-label'),
                      tuple(rows), verdict=True)


def test_served_defenses_need_the_normal_teacher():
  config = digits.get_config('_tiny_resnet,teachers=stingy')
  with pytest.raises(ValueError, match="list 'normal' before it"):
    pipeline.plan(config, '/w')
  with pytest.raises(ValueError, match='a serving transform is a '
                     'teacher-side defense'):
    methods.Method('x', methods.STUDENT, transform=functools.partial(
        serving.stingy))
