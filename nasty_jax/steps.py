"""Pure train and eval step bodies for normal, nasty and student training.

One body serves all three modes; they differ only in the objective over
(logits, frozen logits, labels) and in whether a frozen network runs:

* normal (and a baseline student): cross-entropy, no frozen network;
* nasty: `nasty_loss` against a frozen adversary (train_nasty.py);
* student: `kd_loss` against a frozen teacher (train_kd.py).

Bodies take everything as arguments (hyper-parameters and modules are bound
with `functools.partial` before wrapping), touch no host state, and run
unchanged under `jax.pmap` (`axis_name='batch'`: gradients and metrics are
reduced across devices, BatchNorm is synchronised by the model) or under
`jax.jit` over one global batch (`axis_name=None`).
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from nasty_jax import losses
from nasty_jax import metrics as metrics_lib
from nasty_jax import state as state_lib

# (logits, frozen_logits or None, labels) -> (loss, {'ce', 'kl'}).
Objective = Callable[[jax.Array, Any, jax.Array],
                     tuple[jax.Array, dict[str, jax.Array]]]


def normal_objective(logits, frozen_logits, labels):
  """Plain cross-entropy (train_scratch.py)."""
  del frozen_logits
  ce = losses.cross_entropy(logits, labels)
  return ce, {'ce': ce, 'kl': jnp.zeros_like(ce)}


def nasty_objective(logits, adversary_logits, labels, *, temperature,
                    omega):
  """Self-undermining KD: CE - omega * T^2 * KL(nasty || adversary)."""
  return losses.nasty_loss(logits, adversary_logits, labels,
                           temperature=temperature, omega=omega)


def kd_objective(logits, teacher_logits, labels, *, temperature, alpha):
  """Student KD: alpha * T^2 * KL(teacher || student) + (1-alpha) * CE."""
  return losses.kd_loss(logits, teacher_logits, labels,
                        temperature=temperature, alpha=alpha)


def _correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def create_objective(mode: str, loss_config) -> Objective:
  """The objective of a stage mode ('normal', 'nasty' or 'kd')."""
  if mode == 'normal':
    return normal_objective
  if mode == 'nasty':
    return functools.partial(nasty_objective,
                             temperature=float(loss_config.temperature),
                             omega=float(loss_config.omega))
  if mode == 'kd':
    return functools.partial(kd_objective,
                             temperature=float(loss_config.temperature),
                             alpha=float(loss_config.alpha))
  raise ValueError(f'Unknown mode {mode!r}; valid: normal, nasty, kd.')


def train_step(state: state_lib.TrainState, frozen_vars: Any,
               batch: dict[str, jax.Array], rng: jax.Array, *,
               model: nn.Module, tx: optax.GradientTransformation,
               objective: Objective, learning_rate_fn: optax.Schedule,
               frozen_model: nn.Module | None = None,
               axis_name: str | None = None
               ) -> tuple[state_lib.TrainState, metrics_lib.TrainMetrics]:
  """One optimiser step of the trained network.

  Args:
    state: the trained network's state.
    frozen_vars: the frozen network's `{'params', 'batch_stats'}` (adversary
      or teacher), or None when `frozen_model` is None.
    batch: `image` (B, H, W, 3) normalised and `label` (B,) int32.
    rng: this step's key, `fold_in(key(seed), step)`.
    model: the trained network (with `bn_axis_name=axis_name`).
    tx: its optimiser.
    objective: see `create_objective`.
    learning_rate_fn: the optimiser's schedule, for logging only.
    frozen_model: the frozen network, applied in eval mode like the
      reference's `model.eval()` teacher/adversary.
    axis_name: 'batch' under pmap, None under jit.

  Returns:
    The new state and this step's metrics (already reduced across devices).
  """
  if axis_name is not None:
    rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
  images, labels = batch['image'], batch['label']
  frozen_logits = None
  if frozen_model is not None:
    frozen_logits = frozen_model.apply(frozen_vars, images, train=False)

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, images,
        train=True, mutable=['batch_stats'], rngs={'dropout': rng})
    loss, aux = objective(logits, frozen_logits, labels)
    return loss, (aux, logits, updates.get('batch_stats', {}))

  (loss, (aux, logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  if axis_name is not None:
    # Equal per-device batches, so the mean of the local means is the
    # gradient of the global mean.
    grads = lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats, opt_state=opt_state)
  step_metrics = metrics_lib.collect(
      metrics_lib.TrainMetrics, axis_name, loss=loss, ce=aux['ce'],
      kl=aux['kl'], accuracy=_correct(logits, labels),
      grad_norm=optax.tree.norm(grads),
      learning_rate=learning_rate_fn(state.step), step=state.step)
  return new_state, step_metrics


def eval_step(variables: Any, batch: dict[str, jax.Array], *,
              model: nn.Module, axis_name: str | None = None
              ) -> metrics_lib.EvalMetrics:
  """Per-example CE and accuracy of `model` in eval mode, masked padding."""
  logits = model.apply(variables, batch['image'], train=False)
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch['label'])
  return metrics_lib.collect(
      metrics_lib.EvalMetrics, axis_name, loss=per_example,
      accuracy=_correct(logits, batch['label']), mask=batch['mask'])
