"""Classification, KD and nasty-teacher losses over logits (pure jnp).

Conventions shared by every function here:

* Logits are (B, C) arrays; labels are (B,) integers. Every loss is a batch
  mean and a scalar.
* Inputs are upcast to at least float32 before any arithmetic, so bf16 logits
  from a mixed-precision forward are safe; float64 stays float64 under
  `jax_enable_x64`.
* Log-probabilities always come from `log_softmax`, never `log(softmax)`: a
  softmax that underflows to 0 would turn `0 * log 0` into NaN
  (docs/reference.md#nasty-loss).

The two training losses return `(loss, aux)` so a step can call
`jax.value_and_grad(fn, has_aux=True)` and log `aux` directly:

* `kd_loss`: aux = {'ce': CE(s, y), 'kl': T^2 * KL(p_t || p_s)}.
* `nasty_loss`: aux = {'ce': CE(n, y), 'kl': T^2 * KL(p_n || p_adv)}; 'kl' is
  upstream's logged "adversarial loss" (no omega). Upstream's `+100` constant
  is dropped: it changes no gradient (docs/reference.md#nasty-loss).
"""

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Scalar = float | Array


def upcast(x: Any) -> Array:
  """Casts `x` to float32, or keeps a wider float type (float64 under x64).

  Args:
    x: an array-like of any numeric dtype.

  Returns:
    `x` as a float array of at least float32 precision.
  """
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_logits(name: str, logits: Array) -> None:
  if logits.ndim != 2:
    raise ValueError(
        f'{name} must have shape (batch, num_classes); got {logits.shape}. '
        'Flatten any extra axes into the batch first.')


def _check_same_shape(a_name: str, a: Array, b_name: str, b: Array) -> None:
  _check_logits(a_name, a)
  _check_logits(b_name, b)
  if a.shape != b.shape:
    raise ValueError(
        f'{a_name} {a.shape} and {b_name} {b.shape} must have the same '
        '(batch, num_classes) shape.')


def _check_temperature(temperature: Scalar) -> None:
  # Traced temperatures cannot be checked; concrete ones can.
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f'temperature must be > 0; got {temperature}.')


def cross_entropy(logits: Array, labels: Array,
                  weights: Array | None = None) -> Array:
  """Mean softmax cross-entropy, torch `nn.CrossEntropyLoss()` parity.

  Args:
    logits: (B, C) unnormalised scores.
    labels: (B,) integer class indices in [0, C).
    weights: optional (B,) per-example weights, e.g. the 0/1 mask of a padded
      eval batch. The result is then sum(w * ce) / sum(w); an all-zero mask
      (a device holding only padding) gives 0 rather than NaN.

  Returns:
    The scalar (weighted) mean cross-entropy.
  """
  logits = upcast(logits)
  _check_logits('logits', logits)
  labels = jnp.asarray(labels)
  if labels.shape != logits.shape[:1]:
    raise ValueError(
        f'labels must have shape (batch,) = {logits.shape[:1]}; got '
        f'{labels.shape}. Pass integer class indices, not one-hot rows.')
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
        f'labels must be integer class indices; got dtype {labels.dtype}.')
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  if weights is None:
    return jnp.mean(nll)
  weights = upcast(weights)
  if weights.shape != nll.shape:
    raise ValueError(
        f'weights must have shape (batch,) = {nll.shape}; got '
        f'{weights.shape}.')
  total = jnp.sum(weights)
  return jnp.sum(weights * nll) / jnp.where(total > 0, total, 1.0)


def kd_kl(student_logits: Array, teacher_logits: Array,
          temperature: Scalar) -> Array:
  """T^2 * mean_b KL(softmax(t/T) || softmax(s/T)).

  torch `KLDivLoss(reduction='batchmean')(log_softmax(s/T), softmax(t/T))`
  times T^2, as `train_kd.py` writes it: summed over classes, divided by B.
  Gradients flow into both arguments; callers stop-gradient the side that
  must stay fixed.

  Args:
    student_logits: (B, C) logits whose log-softmax is the KL `input`.
    teacher_logits: (B, C) logits whose softmax is the KL `target`.
    temperature: softmax temperature T > 0.

  Returns:
    The scalar T^2-scaled batchmean KL divergence.
  """
  student_logits = upcast(student_logits)
  teacher_logits = upcast(teacher_logits)
  _check_same_shape('student_logits', student_logits, 'teacher_logits',
                    teacher_logits)
  _check_temperature(temperature)
  log_p_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  log_p_teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  # exp(log p) is 0 where the softmax underflows, and both logs are finite,
  # so underflowed classes contribute exactly 0 (torch's target == 0 rule).
  # A teacher logit of -inf (a top-k or label-only target) has log p = -inf:
  # its term is 0 * log 0 = 0, computed as 0 * (0 - log q).
  log_p_teacher_safe = jnp.where(jnp.isfinite(log_p_teacher), log_p_teacher,
                                 0.0)
  kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher_safe - log_p_student),
               axis=-1)
  return temperature**2 * jnp.mean(kl)


def kd_loss(student_logits: Array, teacher_logits: Array, labels: Array,
            temperature: Scalar,
            alpha: Scalar) -> tuple[Array, dict[str, Array]]:
  """Student KD loss of upstream `train_kd.py` (`loss_fn_kd`).

  alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(s, y). The teacher is a
  constant (stop-gradient), as under upstream's `no_grad`.

  Args:
    student_logits: (B, C) logits of the student being trained.
    teacher_logits: (B, C) logits of the frozen teacher.
    labels: (B,) integer labels.
    temperature: KD temperature T > 0.
    alpha: weight of the KL term in [0, 1].

  Returns:
    (loss, aux): the scalar loss to differentiate, and {'ce', 'kl'} with
    'kl' = T^2 * KL unweighted by alpha, for logging.
  """
  ce = cross_entropy(student_logits, labels)
  kl = kd_kl(student_logits, jax.lax.stop_gradient(teacher_logits),
             temperature)
  loss = alpha * kl + (1.0 - alpha) * ce
  return loss, {'ce': ce, 'kl': kl}


def nasty_loss(teacher_logits: Array, adversarial_logits: Array,
               labels: Array, temperature: Scalar,
               omega: Scalar) -> tuple[Array, dict[str, Array]]:
  """Self-undermining loss of upstream `train_nasty.py`, without its +100.

  CE(n, y) - omega * T^2 * KL(p_n || p_adv). The gradient reaches the nasty
  network's logits n through the CE *and* through the KL target softmax(n/T),
  which must not be stop-gradiented (docs/reference.md#nasty-loss); the
  adversary is constant.

  Args:
    teacher_logits: (B, C) logits n of the nasty teacher being trained.
    adversarial_logits: (B, C) logits of the frozen, normally trained
      adversarial network.
    labels: (B,) integer labels.
    temperature: temperature tau_A > 0 of the KL term.
    omega: weight of the KL term.

  Returns:
    (loss, aux): the scalar loss to differentiate, and {'ce', 'kl'} with
    'kl' = T^2 * KL(p_n || p_adv) without omega (upstream's logged
    "adversarial loss").
  """
  ce = cross_entropy(teacher_logits, labels)
  # Argument roles follow torch KLDivLoss(input=log p_adv, target=p_n).
  kl = kd_kl(jax.lax.stop_gradient(adversarial_logits), teacher_logits,
             temperature)
  loss = ce - omega * kl
  return loss, {'ce': ce, 'kl': kl}


def label_smoothing_cross_entropy(logits: Array, labels: Array,
                                  epsilon: Scalar,
                                  spread: str = 'uniform') -> Array:
  """Mean CE against label-smoothed targets (Szegedy et al. 2016).

  Args:
    logits: (B, C) logits.
    labels: (B,) integer labels.
    epsilon: the mass taken off the label, in [0, 1).
    spread: 'uniform': target (1 - eps) * onehot + eps / C, Szegedy's form;
      'others': eps / (C - 1) on every other class, the label keeping
      1 - eps (the form of the MCMI authors' code).

  Returns:
    The scalar batch-mean cross-entropy.
  """
  logits = upcast(logits)
  _check_logits('logits', logits)
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  if spread == 'uniform':
    target = (1.0 - epsilon) * onehot + epsilon / num_classes
  elif spread == 'others':
    target = (1.0 - epsilon) * onehot + epsilon / (num_classes - 1) * (
        1.0 - onehot)
  else:
    raise ValueError(f"spread must be 'uniform' or 'others'; got {spread!r}.")
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.sum(target * log_p, axis=-1))


def top_k_logits(logits: Array, k: int) -> Array:
  """Keeps each row's k largest logits and sets the others to -inf.

  Ties at the k-th value keep the lowest class indices (`lax.top_k`'s
  order), so exactly k entries stay; k >= C returns the logits unchanged.
  The kept logits keep their values: a softmax at any temperature then
  renormalises over them (Stingy's sparsification, a top-k API; k = 1 is
  the label only).
  """
  logits = jnp.asarray(logits)
  _check_logits('logits', logits)
  num_classes = logits.shape[-1]
  if not 1 <= k:
    raise ValueError(f'k must be >= 1; got {k}.')
  if k >= num_classes:
    return logits
  _, index = jax.lax.top_k(logits, k)
  keep = jnp.zeros(logits.shape, bool).at[
      jnp.arange(logits.shape[0])[:, None], index].set(True)
  return jnp.where(keep, logits, -jnp.inf)


def skeptical_loss(heads: tuple[Array, ...], teacher_logits: Array,
                   labels: Array, *, loc: int, temperature: Scalar,
                   alpha: Scalar, distil: Array | bool
                   ) -> tuple[Array, dict[str, Array]]:
  """The Skeptical student's loss (Kundu et al. 2021, docs/attacks.md).

  With `distil`: KD from the teacher into head `loc` (alpha * T^2 * KL +
  (1 - alpha) * CE), self-distillation from the final head into head 1
  (0.3 * KL(softmax(s0/T) || softmax(s1/T)), no T^2, the target *not*
  stop-gradiented, as the authors' code) with 0.7 * CE on head 1, and CE
  on the final head. Without it (before `kd_delay`): CE on the final head.

  Args:
    heads: logits of every head, final head first.
    teacher_logits: the frozen teacher's logits.
    labels: integer labels.
    loc: the head the teacher distils into.
    temperature: T of both KL terms.
    alpha: the KD weight.
    distil: whether the epoch is past the delay (traced bool).

  Returns:
    (loss, {'ce': CE of the final head, 'kl': T^2 * KL into head loc,
    'self_kl': KL of head 1 to the final head}).
  """
  final, first = heads[0], heads[1]
  ce = cross_entropy(final, labels)
  kd, kd_terms = kd_loss(heads[loc], teacher_logits, labels, temperature,
                         alpha)
  self_kl = kd_kl(first, final, temperature) / temperature**2
  full = kd + 0.3 * self_kl + 0.7 * cross_entropy(first, labels) + ce
  loss = jnp.where(distil, full, ce)
  return loss, {'ce': ce, 'kl': kd_terms['kl'], 'self_kl': self_kl}


def reverse_rank_logits(logits: Array) -> Array:
  """Stingy's reverse variant: the argmax keeps its logit, the rest reversed.

  Sort each row's logits in descending order v_1 >= ... >= v_C at classes
  i_1..i_C; class i_1 keeps v_1 and class i_r (r >= 2) gets v_{C+2-r}: the
  runner-up gets the smallest logit and the last class v_2. A permutation
  of the row's values that keeps its argmax (ties: lower index first).
  """
  logits = jnp.asarray(logits)
  _check_logits('logits', logits)
  order = jnp.argsort(-logits, axis=-1, stable=True)
  values = jnp.take_along_axis(logits, order, axis=-1)
  new_values = jnp.concatenate([values[:, :1], values[:, :0:-1]], axis=-1)
  rows = jnp.arange(logits.shape[0])[:, None]
  return jnp.zeros_like(logits).at[rows, order].set(new_values)


def conditional_mutual_information(logits: Array, labels: Array,
                                   temperature: Scalar,
                                   stop_centroid: bool = True) -> Array:
  """In-batch CMI I(X; Y_hat | Y) of the temperature-scaled outputs.

  (1/B) sum_i KL(P_i || Q_{y_i}) with P_i = softmax(z_i / T) and the
  centroid Q_y the mean of P over the batch's samples of label y; a label
  absent from the batch has no centroid and no term (docs/defenses.md).

  Args:
    logits: (B, C) logits.
    labels: (B,) integer labels.
    temperature: T > 0.
    stop_centroid: treat the centroids as constants in the gradient.

  Returns:
    The scalar CMI estimate (nats).
  """
  logits = upcast(logits)
  _check_logits('logits', logits)
  _check_temperature(temperature)
  num_classes = logits.shape[-1]
  log_p = jax.nn.log_softmax(logits / temperature, axis=-1)
  p = jnp.exp(log_p)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=p.dtype)
  counts = jnp.sum(onehot, axis=0)
  centroids = (onehot.T @ p) / jnp.maximum(counts, 1.0)[:, None]
  if stop_centroid:
    centroids = jax.lax.stop_gradient(centroids)
  q = centroids[labels]
  # q > 0 wherever p > 0 (each sample is in its own centroid); 0 log 0 = 0.
  log_q = jnp.log(jnp.where(q > 0, q, 1.0))
  return jnp.mean(jnp.sum(p * (log_p - log_q), axis=-1))


def cmim_loss(logits: Array, labels: Array, temperatures: tuple[float, ...],
              lam: Scalar, stop_centroid: bool = True
              ) -> tuple[Array, dict[str, Array]]:
  """CMIM's training loss: CE + lam * mean over `temperatures` of the CMI.

  A reconstruction of Ye et al. (2025): the paper's max over temperatures
  averaged over a set, as its implementation is described
  (docs/defenses.md#cmim).
  """
  ce = cross_entropy(logits, labels)
  cmi = jnp.mean(jnp.stack([
      conditional_mutual_information(logits, labels, t, stop_centroid)
      for t in temperatures]))
  return ce + lam * cmi, {'ce': ce, 'cmi': cmi}
