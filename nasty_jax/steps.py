"""Pure train and eval step bodies, one for every supervised method.

A train step runs the trained network in train mode, every frozen network
(teacher, adversary) in eval mode like the reference's `model.eval()`, and
descends the method's objective (`methods.Objective`) over their logits.
What differs between normal, nasty, KD or any registered method is only the
objective and which frozen networks run.

Bodies take everything as arguments (hyper-parameters and modules are bound
with `functools.partial` before wrapping), touch no host state, and run
unchanged under `jax.pmap` (`axis_name='batch'`: gradients and metrics are
reduced across devices, BatchNorm is synchronised by the model) or under
`jax.jit` over one global batch (`axis_name=None`).
"""

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from nasty_jax import methods
from nasty_jax import metrics as metrics_lib
from nasty_jax import state as state_lib

# (variables, images) -> logits of a frozen network, serving transform
# applied.
FrozenApply = Callable[[Any, jax.Array], jax.Array]


def final_head(logits: Any) -> jax.Array:
  """The logits a network is scored by: the final head of a multi-head one."""
  return logits[0] if isinstance(logits, (tuple, list)) else logits


def _correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def train_step(state: state_lib.TrainState, frozen_vars: Mapping[str, Any],
               batch: dict[str, jax.Array], rng: jax.Array, *,
               model: nn.Module, tx: optax.GradientTransformation,
               objective: methods.Objective,
               learning_rate_fn: optax.Schedule,
               frozen: Mapping[str, FrozenApply] | None = None,
               steps_per_epoch: int = 1, axis_name: str | None = None
               ) -> tuple[state_lib.TrainState, metrics_lib.TrainMetrics]:
  """One optimiser step of the trained network.

  Args:
    state: the trained network's state.
    frozen_vars: each frozen network's `{'params', 'batch_stats'}`, by role.
    batch: `image` (B, H, W, 3) normalised and `label` (B,) int32.
    rng: this step's key, `fold_in(key(seed), step)`.
    model: the trained network (with `bn_axis_name=axis_name`).
    tx: its optimiser.
    objective: the method's objective.
    learning_rate_fn: the optimiser's schedule, for logging only.
    frozen: each frozen network's eval-mode apply, by role.
    steps_per_epoch: to tell the objective the epoch.
    axis_name: 'batch' under pmap, None under jit.

  Returns:
    The new state and this step's metrics (already reduced across devices).
  """
  if axis_name is not None:
    rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
  images, labels = batch['image'], batch['label']
  frozen_logits = {role: apply(frozen_vars[role], images)
                   for role, apply in (frozen or {}).items()}
  epoch = state.step // steps_per_epoch

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, images,
        train=True, mutable=['batch_stats'], rngs={'dropout': rng})
    loss, terms = objective(methods.Outputs(logits, labels, frozen_logits,
                                            epoch))
    return loss, (terms, logits, updates.get('batch_stats', {}))

  (loss, (terms, logits, batch_stats)), grads = jax.value_and_grad(
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
      metrics_lib.TrainMetrics, axis_name, loss=loss, terms=terms,
      accuracy=_correct(final_head(logits), labels),
      grad_norm=optax.tree.norm(grads),
      learning_rate=learning_rate_fn(state.step), step=state.step)
  return new_state, step_metrics


def eval_step(variables: Any, batch: dict[str, jax.Array], *,
              model: nn.Module, axis_name: str | None = None
              ) -> metrics_lib.EvalMetrics:
  """Per-example CE and accuracy of `model` in eval mode, masked padding.

  A multi-head network is scored by its final head, and also by the argmax
  of its heads' mean logits (`ensemble_accuracy`).
  """
  outputs = model.apply(variables, batch['image'], train=False)
  logits = final_head(outputs)
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch['label'])
  values = dict(loss=per_example, accuracy=_correct(logits, batch['label']),
                mask=batch['mask'])
  collection = metrics_lib.EvalMetrics
  if isinstance(outputs, (tuple, list)):
    collection = metrics_lib.MultiHeadEvalMetrics
    values['ensemble_accuracy'] = _correct(
        jnp.mean(jnp.stack(outputs), axis=0), batch['label'])
  return metrics_lib.collect(collection, axis_name, **values)
