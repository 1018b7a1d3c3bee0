"""DAFL: pmap(4) = 1 device = jit, one compile, it learns, exact resume."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import digits as digits_config
from nasty_jax import checkpointing
from nasty_jax import engine
from nasty_jax import models
from nasty_jax import parallel
from nasty_jax import programs
from nasty_jax import state as state_lib
from nasty_jax.data_free import dafl
from nasty_jax.data_free import generator as generator_lib

SIZE = 16  # The tiny nets pool globally, so small images keep this fast.
LATENT = 12
BATCH = 16  # 4 per device; at 2 per device BN makes the step ill-conditioned.
DAFL = ml_collections.ConfigDict(dict(
    lr_generator=0.02, lr_student=0.1, momentum=0.9, weight_decay=5e-4,
    milestones=(1,), gamma=0.1))


def _teacher():
  teacher = models.get_model('_tiny_resnet', 10)
  variables = jax.jit(teacher.init)(jax.random.key(7, impl='rbg'),
                                    jnp.zeros((1, SIZE, SIZE, 3)))
  return teacher, variables


def _run(kind, num_devices, num_steps, step_fn=dafl.dafl_step,
         g_tx=dafl.generator_optimizer(DAFL)):
  """`num_steps` DAFL steps; returns the final state and per-step metrics."""
  par = parallel.Parallel(kind, num_devices)
  generator = generator_lib.Generator(img_size=SIZE, latent_dim=LATENT,
                                      bn_axis_name=par.axis_name)
  student = models.get_model('_tiny_resnet', 10, bn_axis_name=par.axis_name)
  teacher, teacher_vars = _teacher()
  s_optim = dafl.student_optim(DAFL)
  s_tx = state_lib.create_optimizer(s_optim, steps_per_epoch=2)
  state = jax.jit(functools.partial(
      dafl.create_state, generator_lib.Generator(img_size=SIZE,
                                                 latent_dim=LATENT),
      models.get_model('_tiny_resnet', 10), g_tx, s_tx, image_size=SIZE),
                  out_shardings=par.replicated)(jax.random.key(0, impl='rbg'))
  p_step = par.train_step(functools.partial(
      step_fn, generator=generator, student=student, teacher=teacher,
      g_tx=g_tx, s_tx=s_tx,
      learning_rate_fn=state_lib.learning_rate_schedule(s_optim, 2),
      oh=1.0, ie=5.0, a=0.1, axis_name=par.axis_name))
  teacher_vars = par.replicate(teacher_vars)
  history = []
  for i in range(num_steps):
    z = dafl.sample_latents(jax.random.fold_in(jax.random.key(1), i), BATCH,
                            LATENT)
    state, m = p_step(state, teacher_vars, par.shard_batch(z),
                      jax.random.fold_in(jax.random.key(2), i))
    history.append(jax.device_get(m.compute()))
  return jax.device_get(state), history


def _assert_close(a, b):
  chex.assert_trees_all_close(a, b, atol=1e-5, rtol=1e-5)


def test_pmap_four_devices_equals_one_device_and_jit_and_compiles_once():
  assert jax.device_count() == 4, 'conftest must give 4 CPU devices'
  # Plain SGD for the generator here: Adam's first steps are sign(g) * lr,
  # so gradient entries that are zero in exact arithmetic (a bias before a
  # BN) turn float noise of another summation order into lr-sized moves.
  # (The DAFL stage's Adam runs in the resume test below.)
  sgd = optax.sgd(0.02)
  one, m_one = _run('pmap', 1, 3, g_tx=sgd,
                    step_fn=chex.assert_max_traces(dafl.dafl_step, n=1))
  four, m_four = _run('pmap', 4, 3, g_tx=sgd)
  jit4, m_jit = _run('jit', 4, 3, g_tx=sgd)
  for other, m_other in ((four, m_four), (jit4, m_jit)):
    _assert_close(other.generator.params, one.generator.params)
    _assert_close(other.generator.batch_stats, one.generator.batch_stats)
    _assert_close(other.student.params, one.student.params)
    _assert_close(other.student.batch_stats, one.student.batch_stats)
    for a, b in zip(m_other, m_one):
      _assert_close(a, b)
  # The steps learn: the student closes in on the teacher, the generator's
  # objective goes down, and the student's lr drops at its milestone.
  assert all(np.isfinite(m['loss']) for m in m_one)
  assert m_one[-1]['loss_student'] < 0.5 * m_one[0]['loss_student']
  assert m_one[-1]['loss_generator'] < m_one[0]['loss_generator']
  # L_ie is bounded below by -log10(C) (balanced predictions).
  assert all(m['information_entropy'] >= -1.0 - 1e-5 for m in m_one)
  assert m_one[0]['learning_rate'] == pytest.approx(0.1)
  assert m_one[2]['learning_rate'] == pytest.approx(0.01)


def _config():
  # 8 steps of 16 digits an epoch; DAFL: 2 epochs of 3 iterations.
  return digits_config.get_config(
      '_tiny_resnet,batch_size=16,dataset.subset_percent=0.1,'
      'max_eval_batches=2,log_every_steps=2,dafl.enabled=true,'
      'dafl.student_arch=_tiny_cnn,dafl.num_epochs=2,dafl.iters_per_epoch=3,'
      f'dafl.batch_size=8,dafl.latent_dim={LATENT},dafl.milestones=1+')


def _save_teacher(directory):
  teacher = models.get_model('_tiny_resnet', 10)
  variables = jax.jit(teacher.init)(jax.random.key(3, impl='rbg'),
                                    jnp.zeros((1, 32, 32, 3)))
  checkpointing.save_variables(directory, variables,
                               {'arch': '_tiny_resnet', 'num_classes': 10})


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
  config = _config()
  _save_teacher(str(tmp_path / 'teacher'))
  spec = programs.StageSpec('dafl/normal', 'dafl', '_tiny_cnn', (
      programs.FrozenSpec('teacher', '_tiny_resnet',
                          str(tmp_path / 'teacher')),))
  full = engine.run_stage(config, spec, str(tmp_path / 'full'))
  assert full['status'] == 'complete' and full['steps'] == 6
  assert 0 <= full['frozen_accuracy'] <= 100

  def preempt(step):
    if step == 4:  # Mid-epoch 2.
      engine.request_preemption()

  killed = str(tmp_path / 'killed')
  assert engine.run_stage(config, spec, killed, step_hook=preempt) == {
      'status': 'preempted', 'step': 4}
  assert engine.read_result(killed) is None
  resumed = engine.run_stage(config, spec, killed)
  for key in ('best', 'last', 'best_epoch', 'steps', 'epochs',
              'frozen_accuracy'):
    assert resumed[key] == full[key], key
  full_vars, full_meta = checkpointing.load_variables(str(tmp_path / 'full'))
  resumed_vars, resumed_meta = checkpointing.load_variables(killed)
  assert full_meta == resumed_meta and full_meta['arch'] == '_tiny_cnn'
  for a, b in zip(jax.tree_util.tree_leaves(full_vars),
                  jax.tree_util.tree_leaves(resumed_vars)):
    np.testing.assert_array_equal(a, b)
  assert engine.run_stage(config, spec, killed) == resumed
