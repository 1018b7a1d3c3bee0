"""Train state and the reference's optimisers and learning-rate schedules."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """What one stage trains and checkpoints.

  Frozen networks (KD teacher, nasty adversary) are never part of it: they
  enter the steps as arguments, so they are never written by a stage.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState

  @property
  def variables(self) -> dict[str, Any]:
    return {'params': self.params, 'batch_stats': self.batch_stats}


def learning_rate_schedule(optim_config, steps_per_epoch: int
                           ) -> optax.Schedule:
  """The optimiser's learning rate over the step count.

  'step' (the reference's, docs/reference.md#optimisers-and-schedules): before
  0-based epoch e the reference
  multiplies lr by gamma when e is a milestone, so the drop lands on step
  e * steps_per_epoch. 'cosine' (a short-schedule deviation, not the
  reference's): a linear warm-up from 0 over `warmup_epochs`, then a
  per-step cosine decay to 0 at the end of `num_epochs`.

  Args:
    optim_config: `learning_rate, milestones, gamma` (config.optim.*), and
      optionally `schedule`, `num_epochs`, `warmup_epochs`.
    steps_per_epoch: optimiser steps per epoch.

  Returns:
    An optax schedule over the step count.
  """
  kind = getattr(optim_config, 'schedule', 'step')
  peak = float(optim_config.learning_rate)
  if kind == 'cosine':
    total = int(optim_config.num_epochs) * steps_per_epoch
    warmup = int(getattr(optim_config, 'warmup_epochs', 0)) * steps_per_epoch
    if warmup <= 0:
      # The same values; optax's warm-up form would log a 'non-positive
      # transition_steps' line for its empty warm-up at every stage start.
      return optax.cosine_decay_schedule(peak, max(total, 1), alpha=0.0)
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup, max(total, warmup + 1), end_value=0.0)
  if kind != 'step':
    raise ValueError(f'Unknown learning-rate schedule {kind!r}; valid: '
                     'step, cosine.')
  boundaries = {int(m) * steps_per_epoch: float(optim_config.gamma)
                for m in optim_config.milestones}
  return optax.piecewise_constant_schedule(peak, boundaries or None)


def create_optimizer(optim_config, steps_per_epoch: int
                     ) -> optax.GradientTransformation:
  """The reference's optimiser: SGD (+ coupled wd on all params) or Adam.

  PyTorch's SGD adds wd*w to the gradient before the momentum buffer and
  applies lr to the buffer, which is `add_decayed_weights` then `sgd`
  (buffer = gradient on the first step in both). torch Adam (eps outside the
  square root, bias-corrected) equals `optax.adam`.

  Args:
    optim_config: config.optim.sgd or config.optim.adam.
    steps_per_epoch: optimiser steps per epoch.

  Returns:
    The optax transformation.
  """
  schedule = learning_rate_schedule(optim_config, steps_per_epoch)
  if optim_config.name == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(float(optim_config.weight_decay)),
        optax.sgd(schedule, momentum=float(optim_config.momentum),
                  nesterov=bool(optim_config.nesterov)))
  if optim_config.name == 'adam':
    adam = optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)
    if optim_config.weight_decay:
      return optax.chain(
          optax.add_decayed_weights(float(optim_config.weight_decay)), adam)
    return adam
  raise ValueError(f'Unknown optimiser {optim_config.name!r}; valid: sgd, '
                   'adam.')


def create_train_state(variables: dict[str, Any],
                       tx: optax.GradientTransformation) -> TrainState:
  """A step-0 state from freshly initialised `{'params', 'batch_stats'}`."""
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params))
