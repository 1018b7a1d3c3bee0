"""DAFL (Chen et al. 2019) against a frozen teacher: `dafl_step`, `program`.

As huawei-noah `DAFL/DAFL-train.py` runs it (docs/data_free.md#dafl): every
iteration draws a fresh latent batch z ~ N(0, I), makes x = G(z) with the
generator in train-mode BN, and takes *one* generator step and *one* student
step, both from that pre-update generator's batch:

* the generator descends oh * L_oh + ie * L_ie + a * L_a, computed from the
  frozen teacher (eval-mode BN, `return_features=True`) on x;
* the student (train-mode BN) descends KL(softmax(t) || softmax(s)) at T = 1
  on stop_gradient(x) against the stop-gradient teacher logits.

Upstream sums both losses and calls `backward()` once; its gradient paths are
disjoint, so this equals two independent updates. Optimisers: Adam(lr_G)
for the generator, SGD(lr_S, momentum 0.9, coupled wd 5e-4) with per-epoch
x0.1 milestones for the student. The student is evaluated on the real test
split after every epoch (the dataset's normalisation, which is the one the
teacher was trained with), and its best-on-test epoch is kept, as upstream
saves it.

Parallelism follows the training engine (`nasty_jax.parallel`): the latent
batch is drawn globally from `fold_in(key(seed), step + 1)` and split over
devices, BN is synchronised (`bn_axis_name`), and the batch-level terms
(L_ie's mean prediction) see the whole global batch, so a run does not
depend on the device count.
"""

import functools
import json
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metrics
from jax import lax

from nasty_jax import methods
from nasty_jax import metrics as metrics_lib
from nasty_jax import programs
from nasty_jax import state as state_lib
from nasty_jax.data_free import generator as generator_lib
from nasty_jax.data_free import losses as df_losses



@flax.struct.dataclass
class DaflState:
  """The generator's and the student's train states (checkpointed together).

  The teacher is never part of it: it enters `dafl_step` as an argument.
  """
  generator: state_lib.TrainState
  student: state_lib.TrainState

  @property
  def step(self) -> jax.Array:
    return self.student.step


@flax.struct.dataclass
class DaflMetrics(metrics.Collection):
  """Per-step DAFL metrics, averaged between log steps.

  `loss` is upstream's backpropagated scalar L_G + L_S; `agreement` is the
  fraction of generated images on which student and teacher agree.
  """
  loss: metrics.Average.from_output('loss')
  loss_generator: metrics.Average.from_output('loss_generator')
  one_hot: metrics.Average.from_output('one_hot')
  information_entropy: metrics.Average.from_output('information_entropy')
  activation: metrics.Average.from_output('activation')
  loss_student: metrics.Average.from_output('loss_student')
  agreement: metrics.Average.from_output('agreement')
  grad_norm: metrics.Average.from_output('grad_norm')
  learning_rate: metrics.LastValue.from_output('learning_rate')
  first_nonfinite_step: metrics_lib.FirstNonFinite


def create_generator(config: ml_collections.ConfigDict,
                     axis_name: str | None = None) -> generator_lib.Generator:
  """The DAFL generator for the config's image size and latent size."""
  return generator_lib.Generator(
      img_size=config.dataset.image_size,
      latent_dim=config.dafl.latent_dim, channels=3,
      dtype=jnp.dtype(config.model.dtype), bn_axis_name=axis_name)


def student_optim(dafl_config: ml_collections.ConfigDict
                  ) -> ml_collections.ConfigDict:
  """The student's SGD as an engine optimiser config (state.create_optimizer).

  Upstream sets lr_S * 0.1**k at the start of each epoch; the milestones are
  0-based epochs (800 and 1600 of 2000 on CIFAR).
  """
  return ml_collections.ConfigDict(dict(
      name='sgd', learning_rate=float(dafl_config.lr_student),
      momentum=float(dafl_config.momentum),
      weight_decay=float(dafl_config.weight_decay), nesterov=False,
      milestones=tuple(dafl_config.milestones),
      gamma=float(dafl_config.gamma)))


def generator_optimizer(dafl_config: ml_collections.ConfigDict
                        ) -> optax.GradientTransformation:
  """torch Adam(lr_G) with default betas and eps; constant lr upstream."""
  return optax.adam(float(dafl_config.lr_generator), b1=0.9, b2=0.999,
                    eps=1e-8)


def create_state(generator: nn.Module, student: nn.Module,
                 g_tx: optax.GradientTransformation,
                 s_tx: optax.GradientTransformation, key: jax.Array,
                 image_size: int) -> DaflState:
  """A step-0 state: freshly initialised generator and student.

  Pass modules without `bn_axis_name` (the generator's BN computes batch
  statistics even at init), outside pmap.
  """
  g_key, s_key = jax.random.split(key)
  # Two latents: the generator's BN needs more than one value per channel.
  g_vars = generator.init(g_key, jnp.zeros((2, generator.latent_dim),
                                           jnp.float32))
  s_vars = student.init(s_key, jnp.zeros((1, image_size, image_size, 3),
                                         jnp.float32), train=False)
  return DaflState(generator=state_lib.create_train_state(g_vars, g_tx),
                   student=state_lib.create_train_state(s_vars, s_tx))


def sample_latents(key: jax.Array, batch_size: int, latent_dim: int
                   ) -> dict[str, jax.Array]:
  """One step's global latent batch z ~ N(0, I), (batch_size, latent_dim)."""
  return {'latent': jax.random.normal(key, (batch_size, latent_dim),
                                      jnp.float32)}


def _global_batch(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Every device's rows of `x`, in global order (identity under jit).

  The gradient of a loss of the gathered batch comes back to each device's
  own rows; with the loss equal on every device and `pmean`ed gradients
  this is the gradient of the single-device loss.
  """
  if axis_name is None:
    return x
  return lax.all_gather(x, axis_name, axis=0, tiled=True)


def dafl_step(state: DaflState, teacher_vars: Any,
              batch: dict[str, jax.Array], rng: jax.Array, *,
              generator: nn.Module, student: nn.Module, teacher: nn.Module,
              g_tx: optax.GradientTransformation,
              s_tx: optax.GradientTransformation,
              learning_rate_fn: optax.Schedule, oh: float, ie: float,
              a: float, axis_name: str | None = None
              ) -> tuple[DaflState, DaflMetrics]:
  """One DAFL iteration: a generator step and a student step on one batch.

  Args:
    state: generator and student states.
    teacher_vars: the frozen teacher's `{'params', 'batch_stats'}`.
    batch: `latent` (B, latent_dim), this device's rows of the step's z.
    rng: this step's key (the student's dropout, if it has any).
    generator: the generator (with `bn_axis_name=axis_name`).
    student: the student (with `bn_axis_name=axis_name`).
    teacher: the frozen teacher, applied in eval mode.
    g_tx: the generator's optimiser.
    s_tx: the student's optimiser.
    learning_rate_fn: the student's schedule, for logging only.
    oh: weight of the one-hot loss.
    ie: weight of the information-entropy loss.
    a: weight of the activation loss.
    axis_name: 'batch' under pmap, None under jit.

  Returns:
    The new state and this step's metrics (reduced across devices).
  """
  if axis_name is not None:
    rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
  g_state, s_state = state.generator, state.student

  def generator_loss(g_params):
    images, g_updates = generator.apply(
        {'params': g_params, 'batch_stats': g_state.batch_stats},
        batch['latent'], mutable=['batch_stats'])
    logits, features = teacher.apply(teacher_vars, images, train=False,
                                      return_features=True)
    # L_ie is a function of the mean prediction over the *whole* batch.
    loss, aux = df_losses.dafl_generator_loss(
        _global_batch(logits, axis_name),
        _global_batch(features.reshape(features.shape[0], -1), axis_name),
        oh, ie, a)
    return loss, (aux, images, logits, g_updates['batch_stats'])

  (g_loss, (g_aux, images, t_logits, g_batch_stats)), g_grads = (
      jax.value_and_grad(generator_loss, has_aux=True)(g_state.params))
  # Upstream's student sees G(z).detach() and the detached teacher logits.
  images = lax.stop_gradient(images)
  t_logits = lax.stop_gradient(t_logits)

  def student_loss(s_params):
    logits, s_updates = student.apply(
        {'params': s_params, 'batch_stats': s_state.batch_stats}, images,
        train=True, mutable=['batch_stats'], rngs={'dropout': rng})
    return (df_losses.dafl_kd_loss(logits, t_logits),
            (logits, s_updates.get('batch_stats', {})))

  (s_loss, (s_logits, s_batch_stats)), s_grads = jax.value_and_grad(
      student_loss, has_aux=True)(s_state.params)
  if axis_name is not None:
    g_grads = lax.pmean(g_grads, axis_name)
    s_grads = lax.pmean(s_grads, axis_name)
  g_updates, g_opt_state = g_tx.update(g_grads, g_state.opt_state,
                                       g_state.params)
  s_updates, s_opt_state = s_tx.update(s_grads, s_state.opt_state,
                                       s_state.params)
  new_state = DaflState(
      generator=g_state.replace(
          step=g_state.step + 1, batch_stats=g_batch_stats,
          params=optax.apply_updates(g_state.params, g_updates),
          opt_state=g_opt_state),
      student=s_state.replace(
          step=s_state.step + 1, batch_stats=s_batch_stats,
          params=optax.apply_updates(s_state.params, s_updates),
          opt_state=s_opt_state))
  agreement = (jnp.argmax(s_logits, -1)
               == jnp.argmax(t_logits, -1)).astype(jnp.float32)
  step_metrics = metrics_lib.collect(
      DaflMetrics, axis_name, loss=g_loss + s_loss, loss_generator=g_loss,
      one_hot=g_aux['one_hot'],
      information_entropy=g_aux['information_entropy'],
      activation=g_aux['activation'], loss_student=s_loss,
      agreement=agreement,
      grad_norm=optax.tree.norm((g_grads, s_grads)),
      learning_rate=learning_rate_fn(s_state.step), step=s_state.step)
  return new_state, step_metrics


def _describe(s: dict[str, float]) -> str:
  return (f'L_oh {s["train/one_hot"]:.4f} L_ie '
          f'{s["train/information_entropy"]:.4f} L_a '
          f'{s["train/activation"]:.4f} L_S {s["train/loss_student"]:.4f} '
          f'agree {s["train/agreement"]:.2f}% lr '
          f'{s["train/learning_rate"]:.4g}')


def program(ctx: programs.Context) -> programs.Program:
  """The engine program of a DAFL stage (see the module docstring).

  The student `ctx.spec.arch` learns from the frozen teacher for
  config.dafl's schedule; `best/` keeps the best-on-test student variables
  and `last/` generator and student (resumable bit-for-bit), like a
  training stage.

  Raises:
    ValueError: a bad schedule, batch size or teacher checkpoint.
  """
  config, spec, par = ctx.config, ctx.spec, ctx.par
  dcfg = config.dafl
  if dcfg.num_epochs < 1 or dcfg.iters_per_epoch < 1:
    raise ValueError(f'dafl.num_epochs ({dcfg.num_epochs}) and '
                     f'dafl.iters_per_epoch ({dcfg.iters_per_epoch}) must '
                     'be >= 1.')
  par.check_batch_size(dcfg.batch_size, 'dafl.batch_size')
  steps_per_epoch = dcfg.iters_per_epoch
  s_optim = student_optim(dcfg)
  s_tx = state_lib.create_optimizer(s_optim, steps_per_epoch)
  g_tx = generator_optimizer(dcfg)
  generator = create_generator(config, par.axis_name)
  student = programs.create_model(config, spec.arch, par.axis_name)
  base_key = jax.random.key(config.seed)
  # Initialised outside any mapped axis: without BN sync. Parameters from
  # an 'rbg' key, as every stage (programs.init_key).
  init_fn = jax.jit(functools.partial(
      create_state, create_generator(config),
      programs.create_model(config, spec.arch), g_tx, s_tx,
      image_size=config.dataset.image_size), out_shardings=par.replicated)
  state = init_fn(programs.init_key(config.seed))

  frozen = programs.load_frozen_networks(ctx)
  teacher = frozen.models[methods.TEACHER]
  teacher_vars = frozen.variables[methods.TEACHER]
  p_eval = programs.eval_fn(student, par)
  p_train = par.train_step(functools.partial(
      dafl_step, generator=generator, student=student, teacher=teacher,
      g_tx=g_tx, s_tx=s_tx,
      learning_rate_fn=state_lib.learning_rate_schedule(s_optim,
                                                        steps_per_epoch),
      oh=float(dcfg.oh), ie=float(dcfg.ie), a=float(dcfg.a),
      axis_name=par.axis_name))
  latents = jax.jit(functools.partial(
      sample_latents, batch_size=dcfg.batch_size, latent_dim=dcfg.latent_dim),
      out_shardings=par.batch_sharding)

  def step(state, _, step):
    key = jax.random.fold_in(base_key, step + 1)
    z_key, step_key = jax.random.split(key)
    return p_train(state, teacher_vars, par.shard_batch(latents(z_key)),
                   step_key)

  return programs.Program(
      state=state, step=step,
      batches=lambda epoch, start: range(start, steps_per_epoch),
      steps_per_epoch=steps_per_epoch, num_epochs=dcfg.num_epochs,
      images_per_step=dcfg.batch_size,
      evaluate=lambda state: programs.evaluate(
          p_eval, state.student.variables, ctx.dataset, par,
          config.max_eval_batches),
      best_variables=lambda state: state.student.variables, arch=spec.arch,
      describe=_describe, percent=('agreement',),
      frozen_accuracy=frozen.accuracy,
      record={'dafl': json.loads(dcfg.to_json())})
