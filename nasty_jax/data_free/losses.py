"""DAFL and DeepInversion losses (pure jnp), as the upstream scripts run them.

DAFL (huawei-noah `DAFL/DAFL-train.py`,
docs/data_free.md#generator-and-student-losses): the generator's
one-hot, activation and information-entropy terms, and the student's T=1 KL.
DeepInversion (NVlabs `cifar10/deepinversion_cifar10.py` and the ImageNet
`deepinversion.py`, docs/data_free.md#bn-feature-loss): the BN-statistics
feature loss, image
priors, jitter and the ADI competition term.

Images are NHWC here (upstream is NCHW); every loss is a float32-or-wider
scalar. Euclidean norms are NaN-safe at 0: `sqrt` has an infinite derivative
there, so a zero difference (e.g. BN statistics matched exactly, or a constant
image) gets gradient 0, as torch's norm backward gives.
"""

from collections.abc import Sequence
import math

import jax
import jax.numpy as jnp

from nasty_jax import losses

Array = jax.Array
Scalar = float | Array

# ADI clamps every probability into this range (upstream hard-codes it).
ADI_PROB_MIN = 0.01
ADI_PROB_MAX = 0.99


def _check_rank(name: str, x: Array, rank: int, layout: str) -> None:
  if x.ndim != rank:
    raise ValueError(f'{name} must have shape {layout}; got {x.shape}.')


def _safe_norm(x: Array, axis: int | tuple[int, ...] | None = None) -> Array:
  """Euclidean norm over `axis` whose gradient at 0 is 0 instead of NaN."""
  squared = jnp.sum(jnp.square(x), axis=axis)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def _clamp(x: Array, low: float, high: float) -> Array:
  """torch.clamp: the gradient passes where low <= x <= high, else is 0.

  `jnp.clip` would halve the gradient at an exact tie with a bound.
  """
  return jnp.where(x < low, low, jnp.where(x > high, high, x))


# ----------------------------------------------------------------------------
# DAFL.


def one_hot_loss(teacher_logits: Array) -> Array:
  """L_oh: mean CE of the teacher's logits to their own argmax labels.

  Args:
    teacher_logits: (B, C) logits of the frozen teacher on generated images.

  Returns:
    The scalar loss; the gradient flows through the logits, not the labels.
  """
  teacher_logits = losses.upcast(teacher_logits)
  _check_rank('teacher_logits', teacher_logits, 2, '(batch, num_classes)')
  pseudo_labels = jnp.argmax(jax.lax.stop_gradient(teacher_logits), axis=-1)
  return losses.cross_entropy(teacher_logits, pseudo_labels)


def activation_loss(features: Array) -> Array:
  """L_a = -mean(|f|) over all B * D feature elements (not per-row L1).

  Args:
    features: (B, D) penultimate teacher features.

  Returns:
    The scalar loss.
  """
  features = losses.upcast(features)
  _check_rank('features', features, 2, '(batch, feature_dim)')
  return -jnp.mean(jnp.abs(features))


def information_entropy_loss(teacher_logits: Array) -> Array:
  """L_ie = sum_c pbar_c * log10(pbar_c), pbar = batch mean of softmax.

  Base 10, as upstream HEAD runs it (its history switched bases twice). log
  pbar comes from a logsumexp over the batch, so a class whose mean
  probability underflows contributes 0 instead of `0 * log 0` = NaN.

  Args:
    teacher_logits: (B, C) teacher logits.

  Returns:
    The scalar loss, the negative base-10 entropy of pbar (>= -log10 C).
  """
  teacher_logits = losses.upcast(teacher_logits)
  _check_rank('teacher_logits', teacher_logits, 2, '(batch, num_classes)')
  log_probs = jax.nn.log_softmax(teacher_logits, axis=-1)
  log_mean = (jax.nn.logsumexp(log_probs, axis=0)
              - math.log(teacher_logits.shape[0]))
  return jnp.sum(jnp.exp(log_mean) * log_mean) / math.log(10.0)


def dafl_generator_loss(
    teacher_logits: Array, features: Array, oh: Scalar, ie: Scalar,
    a: Scalar) -> tuple[Array, dict[str, Array]]:
  """L_G = oh * L_oh + ie * L_ie + a * L_a
  (docs/data_free.md#generator-and-student-losses).

  Args:
    teacher_logits: (B, C) frozen-teacher logits of the generated batch.
    features: (B, D) the teacher's pooled penultimate features.
    oh: weight of the one-hot loss.
    ie: weight of the information-entropy loss.
    a: weight of the activation loss.

  Returns:
    (loss, aux): the scalar to differentiate w.r.t. the generator, and the
    unweighted terms {'one_hot', 'information_entropy', 'activation'}.
  """
  aux = {
      'one_hot': one_hot_loss(teacher_logits),
      'information_entropy': information_entropy_loss(teacher_logits),
      'activation': activation_loss(features),
  }
  loss = (oh * aux['one_hot'] + ie * aux['information_entropy']
          + a * aux['activation'])
  return loss, aux


def dafl_kd_loss(student_logits: Array, teacher_logits: Array) -> Array:
  """Student loss KL(softmax(t) || softmax(s)), summed, divided by B.

  Temperature 1, no T^2, no hard-label term
  (docs/data_free.md#generator-and-student-losses); the teacher is
  a constant.

  Args:
    student_logits: (B, C) student logits on the generated batch.
    teacher_logits: (B, C) teacher logits on the same batch.

  Returns:
    The scalar loss.
  """
  return losses.kd_kl(student_logits, jax.lax.stop_gradient(teacher_logits),
                      1.0)


# ----------------------------------------------------------------------------
# DeepInversion.


def bn_feature_loss(batch_means: Sequence[Array], batch_vars: Sequence[Array],
                    running_means: Sequence[Array],
                    running_vars: Sequence[Array],
                    first_bn_multiplier: Scalar = 1.0) -> Array:
  """sum_l w_l (||var_l - rv_l||_2 + ||mean_l - rm_l||_2)
  (docs/data_free.md#bn-feature-loss).

  Plain Euclidean norms over channels: not squared, not divided by C_l, and
  on the variance, not the standard deviation. The running statistics are
  constants (upstream reads `.data`).

  Args:
    batch_means: per BN layer, in forward order, the (C_l,) batch mean of the
      BN input.
    batch_vars: the matching (C_l,) biased two-pass batch variances.
    running_means: the teacher's (C_l,) running means, same order.
    running_vars: the teacher's (C_l,) running variances, same order.
    first_bn_multiplier: w_0, the weight of the first layer (1 in the CIFAR
      script, 10 in the ImageNet module); every other w_l is 1.

  Returns:
    The scalar weighted sum of the per-layer losses.
  """
  counts = {len(batch_means), len(batch_vars), len(running_means),
            len(running_vars)}
  if len(counts) != 1 or not batch_means:
    raise ValueError(
        'batch_means, batch_vars, running_means and running_vars must list '
        'the same, non-zero number of BN layers; got lengths '
        f'{len(batch_means)}, {len(batch_vars)}, {len(running_means)}, '
        f'{len(running_vars)}.')
  total = 0.0
  for layer, stats in enumerate(
      zip(batch_means, batch_vars, running_means, running_vars)):
    mean, var, running_mean, running_var = (losses.upcast(s) for s in stats)
    if not mean.shape == var.shape == running_mean.shape == running_var.shape:
      raise ValueError(
          f'BN layer {layer}: batch mean {mean.shape}, batch var '
          f'{var.shape}, running mean {running_mean.shape} and running var '
          f'{running_var.shape} must all be the same (channels,) shape.')
    r_feature = (
        _safe_norm(var - jax.lax.stop_gradient(running_var))
        + _safe_norm(mean - jax.lax.stop_gradient(running_mean)))
    total = total + (first_bn_multiplier if layer == 0 else 1.0) * r_feature
  return total


def _tv_differences(x: Array) -> tuple[Array, ...]:
  """The four neighbour differences of NHWC images: W, H and two diagonals."""
  x = losses.upcast(x)
  _check_rank('images', x, 4, '(batch, height, width, channels)')
  return (x[:, :, :-1] - x[:, :, 1:],
          x[:, :-1, :] - x[:, 1:, :],
          x[:, 1:, :-1] - x[:, :-1, 1:],
          x[:, :-1, :-1] - x[:, 1:, 1:])


def tv_l2(x: Array) -> Array:
  """TV_2: sum over the 4 directions of one whole-batch Frobenius norm each.

  Args:
    x: (B, H, W, C) images.

  Returns:
    The scalar prior; the norms are per direction over the whole batch, not
    per image, and not squared (docs/data_free.md#image-priors).
  """
  return sum(_safe_norm(d) for d in _tv_differences(x))


def tv_l1(x: Array) -> Array:
  """TV_1: sum over the 4 directions of the mean absolute difference.

  Args:
    x: (B, H, W, C) images.

  Returns:
    The scalar prior of the ImageNet module (its /255 * 255 cancels).
  """
  return sum(jnp.mean(jnp.abs(d)) for d in _tv_differences(x))


def l2_whole_batch(x: Array) -> Array:
  """||x||_F over the whole batch tensor (the CIFAR script's L2 prior).

  Args:
    x: (B, ...) images.

  Returns:
    The scalar norm.
  """
  return _safe_norm(losses.upcast(x))


def l2_per_image_mean(x: Array) -> Array:
  """mean_b ||x_b||_2 (the ImageNet module's L2 prior).

  Args:
    x: (B, ...) images.

  Returns:
    The scalar mean per-image norm.
  """
  x = losses.upcast(x)
  return jnp.mean(_safe_norm(x, axis=tuple(range(1, x.ndim))))


def jitter(x: Array, off_h: int | Array, off_w: int | Array) -> Array:
  """Circular roll of NHWC images by (off_h, off_w) pixels over (H, W).

  Upstream's `torch.roll(x, shifts=(off1, off2), dims=(2, 3))` in NCHW. The
  shifts may be traced, so one compiled step serves every offset.

  Args:
    x: (B, H, W, C) images.
    off_h: shift along H (positive moves content down).
    off_w: shift along W (positive moves content right).

  Returns:
    The rolled images; the wrap-around seam is kept, as upstream's priors
    see it.
  """
  _check_rank('images', x, 4, '(batch, height, width, channels)')
  return jnp.roll(x, (off_h, off_w), axis=(1, 2))


def adi_js_divergence(student_logits: Array, teacher_logits: Array,
                      temperature: Scalar = 3.0) -> Array:
  """Upstream's clamped "JS" JS' = (KL(M~||P~) + KL(M~||Q~)) / 2, batchmean.

  P = softmax(s/T), Q = softmax(t/T) and M = (P + Q) / 2 (M from the
  unclamped P, Q); then each is clamped into [0.01, 0.99] with zero gradient
  where a clamp is active. The KL order comes from upstream's
  `KLDivLoss(log P~, M~)`, so this is not the textbook JS
  (docs/data_free.md#competition-term-adi).

  Args:
    student_logits: (B, C) student logits; not detached upstream (CIFAR).
    teacher_logits: (B, C) teacher logits.
    temperature: softmax temperature, 3 (hard-coded upstream).

  Returns:
    The scalar JS', before the outer clamp.
  """
  student_logits = losses.upcast(student_logits)
  teacher_logits = losses.upcast(teacher_logits)
  _check_rank('student_logits', student_logits, 2, '(batch, num_classes)')
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(
        f'student_logits {student_logits.shape} and teacher_logits '
        f'{teacher_logits.shape} must have the same shape.')
  p = jax.nn.softmax(student_logits / temperature, axis=-1)
  q = jax.nn.softmax(teacher_logits / temperature, axis=-1)
  m = 0.5 * (p + q)
  p, q, m = (_clamp(v, ADI_PROB_MIN, ADI_PROB_MAX) for v in (p, q, m))
  # All three are >= 0.01 after the clamp, so every log is finite.
  log_m = jnp.log(m)
  batch = student_logits.shape[0]
  kl_m_p = jnp.sum(m * (log_m - jnp.log(p))) / batch
  kl_m_q = jnp.sum(m * (log_m - jnp.log(q))) / batch
  return 0.5 * kl_m_p + 0.5 * kl_m_q


def adi_competition_loss(student_logits: Array, teacher_logits: Array,
                         temperature: Scalar = 3.0) -> Array:
  """L_comp = 1 - clamp(JS', 0, 1): high where student and teacher agree.

  Args:
    student_logits: (B, C) student logits (eval mode).
    teacher_logits: (B, C) teacher logits (eval mode).
    temperature: softmax temperature, 3 upstream.

  Returns:
    The scalar competition loss, weighted by cig_scale in the total.
  """
  js = adi_js_divergence(student_logits, teacher_logits, temperature)
  return 1.0 - _clamp(js, 0.0, 1.0)
