"""Classification, KD and nasty-teacher losses over logits (pure jnp).

Conventions shared by every function here:

* Logits are (B, C) arrays; labels are (B,) integers. Every loss is a batch
  mean and a scalar.
* Inputs are upcast to at least float32 before any arithmetic, so bf16 logits
  from a mixed-precision forward are safe; float64 stays float64 under
  `jax_enable_x64`.
* Log-probabilities always come from `log_softmax`, never `log(softmax)`: a
  softmax that underflows to 0 would turn `0 * log 0` into NaN (SPEC §5.2).

The two training losses return `(loss, aux)` so a step can call
`jax.value_and_grad(fn, has_aux=True)` and log `aux` directly:

* `kd_loss`: aux = {'ce': CE(s, y), 'kl': T^2 * KL(p_t || p_s)}.
* `nasty_loss`: aux = {'ce': CE(n, y), 'kl': T^2 * KL(p_n || p_adv)}; 'kl' is
  upstream's logged "adversarial loss" (no omega). Upstream's `+100` constant
  is dropped: it changes no gradient (SPEC §5.2).
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
  kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student),
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
  which must not be stop-gradiented (SPEC §5.2); the adversary is constant.

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
