"""Serving transforms: what a deployed teacher's outputs become.

A transform maps a frozen teacher's logits (B, C) to what a student gets to
see, inside the jitted train step (no host round trip), and the teacher's
own accuracy is measured through it. Two kinds compose, the defense's first:

* a defense that retrains nothing (`methods.Method.transform`): Stingy's
  top-k sparsification, the reverse ranking;
* an API output mode (`config.api`, the audit's `--api`), the threat model:
  'logits' (everything, the default), 'probs' (probabilities at temperature
  1, returned as their logarithm, which a softmax at any temperature turns
  back into the same distribution), 'topk:K' (the K largest scores,
  renormalised: the rest -inf), 'label' (the argmax only).

A spec is a '+'-joined string ('stingy+topk:5'); `resolve` builds it.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from nasty_jax import losses
from nasty_jax import methods

Transform = Callable[[jax.Array], jax.Array]
API_MODES = ('logits', 'probs', 'topk:K', 'label')


def api(mode: str) -> Transform | None:
  """The API output mode's transform; None for 'logits' (identity).

  Raises:
    ValueError: an unknown mode, naming the valid ones.
  """
  if mode in ('', 'logits'):
    return None
  if mode == 'probs':
    return lambda z: jax.nn.log_softmax(jnp.asarray(z, jnp.float32), -1)
  if mode == 'label':
    return lambda z: losses.top_k_logits(z, 1)
  name, _, k = mode.partition(':')
  if name == 'topk' and k.isdigit() and int(k) >= 1:
    return lambda z: losses.top_k_logits(z, int(k))
  raise ValueError(f'Unknown API output mode {mode!r}; valid: '
                   f'{", ".join(API_MODES)} (K a positive integer).')


def resolve(spec: str | None, config: ml_collections.ConfigDict
            ) -> Transform | None:
  """The composed transform of `spec` (None: the logits as they are).

  Each part is a defense method with a transform (its fields from the
  config) or an API mode.

  Raises:
    ValueError: a part that is neither.
  """
  parts = []
  for part in methods.parse_list(spec or ''):
    if part.split(':')[0] in methods.names():
      method = methods.get(part)
      if method.transform_fn is None:
        raise ValueError(f'{part!r} is not a serving transform; defenses '
                         'with one: ' + ', '.join(
                             n for n in methods.names()
                             if methods.get(n).transform is not None))
      parts.append(method.transform_fn(methods.fields(config, method),
                                       config.dataset.num_classes))
    else:
      fn = api(part)
      if fn is not None:
        parts.append(fn)
  if not parts:
    return None

  def transform(logits):
    for fn in parts:
      logits = fn(logits)
    return logits

  return transform


def stingy(fields: ml_collections.ConfigDict,
           num_classes: int) -> Transform:
  """Stingy's sparsification: k = int(sparse_ratio * C) logits kept."""
  ratio = fields.sparse_ratio
  if ratio is None:
    ratio = 0.2 if num_classes <= 10 else 0.1
  k = max(1, int(ratio * num_classes))
  return lambda z: losses.top_k_logits(z, k)


def reverse(fields: ml_collections.ConfigDict, num_classes: int
            ) -> Transform:
  """The reverse ranking: argmax kept, the other logits' order reversed."""
  del fields, num_classes
  return losses.reverse_rank_logits
