"""clu metric collections filled inside the jitted steps.

`clu.metrics.Std` is avoided on purpose: it is broken on clu 0.0.12 with
current jax.
"""

import flax
import jax.numpy as jnp
import numpy as np
from clu import metrics

_NO_STEP = np.iinfo(np.int32).max


@flax.struct.dataclass
class FirstNonFinite(metrics.Metric):
  """The first step whose loss or gradient norm was NaN or inf, on device.

  Merging takes the minimum, so the loop learns the exact failing step at
  its next host sync without syncing every step. The gradient norm is
  checked too because XLA:CPU's fused max-reductions (ReLU then pooling)
  can turn NaN activations into finite logits; a sum over NaN gradients
  stays NaN.
  """
  step: jnp.ndarray

  @classmethod
  def from_model_output(cls, *, loss, grad_norm, step, **_
                        ) -> 'FirstNonFinite':
    bad = ~(jnp.isfinite(jnp.asarray(loss, jnp.float32))
            & jnp.isfinite(jnp.asarray(grad_norm, jnp.float32)))
    return cls(step=jnp.where(bad, jnp.asarray(step, jnp.int32), _NO_STEP))

  def merge(self, other: 'FirstNonFinite') -> 'FirstNonFinite':
    return type(self)(step=jnp.minimum(self.step, other.step))

  def reduce(self) -> 'FirstNonFinite':
    return type(self)(step=jnp.min(self.step))

  def compute(self) -> jnp.ndarray:
    """The failing step, or -1 when every loss was finite."""
    return jnp.where(self.step == _NO_STEP, -1, self.step)


@flax.struct.dataclass
class Terms(metrics.Metric):
  """Averages of an objective's named terms (`methods.Objective`'s dict).

  Each term is a scalar per step; like `metrics.Average` of scalars, the
  total and the count are summed across devices and steps.
  """
  totals: dict[str, jnp.ndarray]
  count: jnp.ndarray

  @classmethod
  def from_model_output(cls, *, terms, **_) -> 'Terms':
    return cls(totals={k: jnp.asarray(v, jnp.float32).sum()
                       for k, v in terms.items()},
               count=jnp.array(1, jnp.int32))

  def merge(self, other: 'Terms') -> 'Terms':
    return type(self)(
        totals={k: v + other.totals[k] for k, v in self.totals.items()},
        count=self.count + other.count)

  def reduce(self) -> 'Terms':
    return type(self)(totals={k: v.sum(0) for k, v in self.totals.items()},
                      count=self.count.sum(0))

  def compute(self) -> dict[str, jnp.ndarray]:
    return {k: v / self.count for k, v in self.totals.items()}


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  """Per-step training metrics, averaged between log steps.

  `terms` are the objective's own named parts (for the built-in methods
  `ce`, the cross-entropy, and `kl`, the T^2-scaled KL term: the
  reference's logged "adversarial loss" in nasty mode, the KD term for
  students, 0 for plain training).
  """
  loss: metrics.Average.from_output('loss')
  terms: Terms
  accuracy: metrics.Average.from_output('accuracy')
  grad_norm: metrics.Average.from_output('grad_norm')
  learning_rate: metrics.LastValue.from_output('learning_rate')
  first_nonfinite_step: FirstNonFinite


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  """Per-example loss and accuracy over a padded eval split (`mask`)."""
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('accuracy')


@flax.struct.dataclass
class MultiHeadEvalMetrics(metrics.Collection):
  """EvalMetrics of a multi-head network's final head, plus the accuracy of
  the argmax of the heads' mean logits (the Skeptical student's ensemble).
  clu collects only a class's own fields, hence no subclassing."""
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('accuracy')
  ensemble_accuracy: metrics.Average.from_output('ensemble_accuracy')


def collect(collection_cls, axis_name: str | None, **outputs):
  """Builds a collection from step outputs; all-gathered under pmap."""
  if axis_name is None:
    return collection_cls.single_from_model_output(**outputs)
  return collection_cls.gather_from_model_output(axis_name=axis_name,
                                                 **outputs)
