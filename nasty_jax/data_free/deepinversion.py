"""DeepInversion (Yin et al. 2020) of a frozen teacher: images from BN stats.

As NVlabs `cifar10/deepinversion_cifar10.py` runs it
(docs/data_free.md#deepinversion): the optimised variable is the image batch
itself, in the teacher's normalised input space, started at x ~ N(0, I) and
moved by Adam (torch defaults, no schedule, no clipping). Every iteration rolls
the batch circularly by a random (dy, dx) in [-jitter, jitter]^2 and minimises,
on the rolled batch,

  CE(T(x~), y) + r_feature * sum_l w_l R_l + tv_l2 * TV2(x~) + l2 * ||x~||
  [+ cig_scale * L_comp(S(x~), T(x~))]

with fixed class-cyclic targets y_b = b mod C (so a grid with C columns shows
one class per column, the paper's Figure 6), R_l the distance of BN layer
l's input batch statistics to its running statistics (the teacher in eval
mode; `models.layers.BatchNorm` sows them into 'bn_stats'), and w_0 =
first_bn_multiplier on the first BN *in forward order*. The optional
competition term (Adaptive DeepInversion) uses a frozen student; upstream's
CIFAR script passes a freshly initialised ResNet-18, and so does this one.

`run_deepinversion` synthesises one batch per teacher for the figure
(`images.npz`, `grid.png`), and optionally more batches to distil a student
by KD (temperature 3) and score it on the real test split.
"""

import functools
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from nasty_jax import engine
from nasty_jax import losses
from nasty_jax import methods
from nasty_jax import parallel as parallel_lib
from nasty_jax import programs
from nasty_jax.data_free import losses as df_losses
from nasty_jax.models import layers

MODE = 'deepinversion'
BN_COLLECTION = 'bn_stats'
IMAGES_FILE = 'images.npz'
GRID_FILE = 'grid.png'
POOL_DIR = 'synthetic'
KD_DIR = 'kd'
# Per-iteration loss terms kept in images.npz (and the result's last values).
LOSS_TERMS = ('loss', 'ce', 'bn', 'tv_l2', 'l2', 'competition',
              'teacher_accuracy')
# Keys by purpose, each folded into key(seed): the ADI competitor's init,
# the KD student's run, and the synthetic batches (then by batch index).
_COMPETITOR_KEY, _KD_KEY, _BATCH_KEY = 0, 1, 2

BnPath = tuple[str, ...]


def bn_layer_paths(model: nn.Module, variables: Any,
                   image_shape: Sequence[int]) -> list[BnPath]:
  """The model's BatchNorm layers, in the order its forward pass calls them.

  The call order is recorded while tracing (abstractly: no compute), so it is
  the order of the sown statistics whatever the layers' names; for the
  reference's ResNets it is the torch `named_modules()` order (stem 'bn1'
  first), which is what upstream's hooks iterate.

  Args:
    model: the network.
    variables: its variables (arrays or `jax.ShapeDtypeStruct`s).
    image_shape: (H, W, C) of one input image.

  Returns:
    Each BN layer's module path, e.g. ('layer2', '0', 'shortcut', '1');
    '.'.join(path) is the torch module name.
  """
  order = []

  def record(next_fun, args, kwargs, context):
    if (context.method_name == '__call__'
        and isinstance(context.module, layers.BatchNorm)
        and context.module.path not in order):
      order.append(context.module.path)
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(functools.partial(model.apply, train=False,
                                     mutable=[BN_COLLECTION]), variables, x)
  return order


def _lookup(tree: Mapping[str, Any], path: BnPath) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def bn_statistics(captured: Mapping[str, Any], batch_stats: Mapping[str, Any],
                  paths: Sequence[BnPath]
                  ) -> tuple[list[jax.Array], list[jax.Array],
                             list[jax.Array], list[jax.Array]]:
  """Per BN layer in `paths` order: input batch mean/var, running mean/var.

  Args:
    captured: the 'bn_stats' collection of an apply with it mutable.
    batch_stats: the network's 'batch_stats' collection.
    paths: `bn_layer_paths` of the network.

  Returns:
    (batch means, biased batch variances, running means, running variances).

  Raises:
    ValueError: the captured layers are not exactly `paths`.
  """
  sown = len(jax.tree_util.tree_leaves(captured)) // 2
  if sown != len(paths):
    raise ValueError(f'{sown} BatchNorm layers sowed statistics but '
                     f'{len(paths)} were expected from the call order.')
  means, variances, running_means, running_vars = [], [], [], []
  for path in paths:
    (mean, var), = _lookup(captured, path)['input_stats']
    running = _lookup(batch_stats, path)
    means.append(mean)
    variances.append(var)
    running_means.append(running['mean'])
    running_vars.append(running['var'])
  return means, variances, running_means, running_vars


@flax.struct.dataclass
class InversionState:
  """The optimised image batch and its Adam state."""
  step: jax.Array
  images: jax.Array
  opt_state: optax.OptState


def image_optimizer(lr: float) -> optax.GradientTransformation:
  """torch Adam([x], lr) with default betas/eps, as upstream; no schedule."""
  return optax.adam(float(lr), b1=0.9, b2=0.999, eps=1e-8)


def init_inversion(key: jax.Array, shape: Sequence[int],
                   tx: optax.GradientTransformation) -> InversionState:
  """x ~ N(0, I) of `shape` (B, H, W, C) and a fresh optimiser state."""
  images = jax.random.normal(key, tuple(shape), jnp.float32)
  return InversionState(step=jnp.zeros((), jnp.int32), images=images,
                        opt_state=tx.init(images))


def class_cyclic_targets(batch_size: int, num_classes: int) -> np.ndarray:
  """y_b = b mod C: upstream's [0..9] * 25 + [0..5] for 256 and 10 classes."""
  return (np.arange(batch_size) % num_classes).astype(np.int32)


def inversion_step(state: InversionState, teacher_vars: Any,
                   student_vars: Any, targets: jax.Array, key: jax.Array, *,
                   teacher: nn.Module, bn_paths: Sequence[BnPath],
                   tx: optax.GradientTransformation, r_feature: float,
                   first_bn_multiplier: float, tv_l2: float, l2: float,
                   jitter: int, cig_scale: float = 0.0,
                   adi_temperature: float = 3.0,
                   student: nn.Module | None = None
                   ) -> tuple[InversionState, dict[str, jax.Array]]:
  """One Adam step on the image batch (upstream's `get_images` loop body).

  Args:
    state: the images and their optimiser state.
    teacher_vars: the frozen teacher's variables.
    student_vars: the frozen competition student's variables (None unless
      cig_scale > 0).
    targets: (B,) the fixed class targets.
    key: the batch's key; the step's jitter comes from fold_in(key, step).
    teacher: the teacher, applied in eval mode.
    bn_paths: its `bn_layer_paths`.
    tx: the image optimiser.
    r_feature: weight of the BN-statistics loss (bn_reg_scale).
    first_bn_multiplier: extra weight of the first BN in forward order.
    tv_l2: weight of TV_2.
    l2: weight of the whole-batch L2 norm.
    jitter: maximum roll in pixels along H and along W.
    cig_scale: weight of the ADI competition term (0: off).
    adi_temperature: its temperature (3 upstream).
    student: the competition student, applied in eval mode.

  Returns:
    The new state and this step's loss terms (computed on the rolled batch
    before the update): loss, ce, bn (unweighted sum of R_l with w_0),
    tv_l2, l2, competition and teacher_accuracy.
  """
  offsets = jax.random.randint(jax.random.fold_in(key, state.step), (2,),
                               -jitter, jitter + 1)

  def loss_fn(images):
    x = df_losses.jitter(images, offsets[0], offsets[1])
    logits, captured = teacher.apply(teacher_vars, x, train=False,
                                     mutable=[BN_COLLECTION])
    stats = bn_statistics(captured[BN_COLLECTION],
                          teacher_vars['batch_stats'], bn_paths)
    terms = {
        'ce': losses.cross_entropy(logits, targets),
        'bn': df_losses.bn_feature_loss(
            *stats, first_bn_multiplier=first_bn_multiplier),
        'tv_l2': df_losses.tv_l2(x),
        'l2': df_losses.l2_whole_batch(x),
    }
    total = (terms['ce'] + r_feature * terms['bn'] + tv_l2 * terms['tv_l2']
             + l2 * terms['l2'])
    if cig_scale:
      student_logits = student.apply(student_vars, x, train=False)
      terms['competition'] = df_losses.adi_competition_loss(
          student_logits, logits, adi_temperature)
      total = total + cig_scale * terms['competition']
    else:
      terms['competition'] = jnp.zeros_like(total)
    terms['teacher_accuracy'] = jnp.mean(
        (jnp.argmax(logits, -1) == targets).astype(jnp.float32))
    return total, terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.images)
  updates, opt_state = tx.update(grads, state.opt_state, state.images)
  new_state = InversionState(
      step=state.step + 1, images=optax.apply_updates(state.images, updates),
      opt_state=opt_state)
  return new_state, {'loss': loss, **terms}


class Inverter:
  """One teacher's compiled inversion step and what it runs on.

  Attributes:
    step_fn: the jitted `inversion_step` (donates the state).
    shape: (B, H, W, C) of a batch.
    targets: the batch's class-cyclic targets, on the devices.
    num_iterations: Adam steps per batch.
  """

  def __init__(self, dicfg: ml_collections.ConfigDict, teacher: nn.Module,
               teacher_vars: Any, image_shape: Sequence[int],
               num_classes: int, par: parallel_lib.Parallel,
               student: nn.Module | None = None, student_vars: Any = None):
    """Compiles the step for one teacher (and competitor, if any).

    Args:
      dicfg: config.deepinversion.
      teacher: the frozen teacher.
      teacher_vars: its variables, on the devices.
      image_shape: (H, W, C) of one image.
      num_classes: the targets cycle through 0..num_classes-1.
      par: devices; the step is jitted over the global batch (sharded
        along the batch axis).
      student: the ADI competitor when dicfg.cig_scale > 0.
      student_vars: its variables, on the devices.

    Raises:
      ValueError: bad settings, or a teacher without BatchNorm.
    """
    if dicfg.cig_scale and student is None:
      raise ValueError('deepinversion.cig_scale > 0 needs a competitor '
                       'student.')
    if dicfg.iterations < 1:
      raise ValueError(f'deepinversion.iterations must be >= 1; got '
                       f'{dicfg.iterations}.')
    if dicfg.jitter < 0:
      raise ValueError(f'deepinversion.jitter must be >= 0; got '
                       f'{dicfg.jitter}.')
    par.check_batch_size(dicfg.batch_size, 'deepinversion.batch_size')
    bn_paths = bn_layer_paths(teacher, teacher_vars, image_shape)
    if not bn_paths:
      raise ValueError(
          'DeepInversion matches BatchNorm statistics, but the teacher has no '
          'BatchNorm layer; use a teacher with BN (resnet*, preresnet*, '
          'resnext29, mobilenetv2, shufflenetv2, net).')
    logging.info('DeepInversion over %d BN layers, first %s.', len(bn_paths),
                 '.'.join(bn_paths[0]))
    self.shape = (dicfg.batch_size, *image_shape)
    self.num_iterations = dicfg.iterations
    self.targets = jax.device_put(
        class_cyclic_targets(dicfg.batch_size, num_classes),
        par.batch_sharding)
    self._tx = image_optimizer(dicfg.lr)
    self._par = par
    self._frozen = (teacher_vars, student_vars)
    # Adam's moments have the images' shape: shard them like the images.
    abstract_opt = jax.eval_shape(
        self._tx.init, jax.ShapeDtypeStruct(self.shape, jnp.float32))
    state_shardings = InversionState(
        step=par.replicated, images=par.batch_sharding,
        opt_state=jax.tree_util.tree_map(
            lambda a: par.batch_sharding if a.ndim == 4 else par.replicated,
            abstract_opt))
    self._teacher_logits = jax.jit(functools.partial(teacher.apply,
                                                     train=False))
    self._init = jax.jit(functools.partial(init_inversion, shape=self.shape,
                                           tx=self._tx),
                         out_shardings=state_shardings)
    self.step_fn = jax.jit(
        functools.partial(
            inversion_step, teacher=teacher, bn_paths=tuple(bn_paths),
            tx=self._tx, r_feature=float(dicfg.r_feature),
            first_bn_multiplier=float(dicfg.first_bn_multiplier),
            tv_l2=float(dicfg.tv_l2), l2=float(dicfg.l2),
            jitter=int(dicfg.jitter), cig_scale=float(dicfg.cig_scale),
            adi_temperature=float(dicfg.adi_temperature), student=student),
        donate_argnums=(0,), out_shardings=(state_shardings, par.replicated))

  def teacher_accuracy(self, images: np.ndarray) -> float:
    """The teacher's accuracy (percent) on a batch against its targets."""
    teacher_vars, _ = self._frozen
    logits = self._teacher_logits(
        teacher_vars, jax.device_put(images, self._par.batch_sharding))
    correct = np.argmax(jax.device_get(logits), -1) == jax.device_get(
        self.targets)
    return 100.0 * float(np.mean(correct))

  def invert(self, key: jax.Array, log_every: int = 0, label: str = ''
             ) -> tuple[np.ndarray, dict[str, np.ndarray], int | None]:
    """Synthesises one batch from `key` (the start image and every jitter).

    Args:
      key: the batch's key.
      log_every: iterations between progress logs (0: none).
      label: a name for the log.

    Returns:
      (images (B, H, W, C) float32 normalised, per-iteration loss terms, the
      first iteration with a non-finite loss or None). Upstream returns its
      final iterate in effect
      (docs/data_free.md#optimiser-and-what-is-returned); so does this.
    """
    init_key, step_key = jax.random.split(key)
    state = self._init(init_key)
    teacher_vars, student_vars = self._frozen
    history = []
    for i in range(self.num_iterations):
      state, terms = self.step_fn(state, teacher_vars, student_vars,
                                  self.targets, step_key)
      history.append(terms)
      if log_every and ((i + 1) % log_every == 0
                        or i + 1 == self.num_iterations):
        now = jax.device_get(terms)
        logging.info('DeepInversion %s iteration %d/%d: loss %.4f ce %.4f '
                     'bn %.4f tv %.4f teacher acc %.1f%%', label, i + 1,
                     self.num_iterations, now['loss'], now['ce'], now['bn'],
                     now['tv_l2'], 100.0 * now['teacher_accuracy'])
        if not np.isfinite(now['loss']):
          break
    history = jax.device_get(history)
    curves = {k: np.asarray([h[k] for h in history], np.float32)
              for k in LOSS_TERMS}
    bad = np.flatnonzero(~np.isfinite(curves['loss']))
    return (np.asarray(jax.device_get(state.images), np.float32), curves,
            int(bad[0]) if bad.size else None)


def normalization(dataset_cfg: ml_collections.ConfigDict
                  ) -> tuple[np.ndarray, np.ndarray]:
  """The dataset's (mean, std) per channel, config overrides applied."""
  # Imported here: it can pull in TFDS, which the step code must not need.
  from nasty_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  norm = input_pipeline.dataset_defaults(dataset_cfg.name).norm
  mean = dataset_cfg.mean if dataset_cfg.mean is not None else norm.mean
  std = dataset_cfg.std if dataset_cfg.std is not None else norm.std
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def to_pixels(images: np.ndarray, mean: np.ndarray, std: np.ndarray
              ) -> np.ndarray:
  """Normalised NHWC images back to [0, 1] (x * std + mean, clipped)."""
  return np.clip(images * std + mean, 0.0, 1.0)


def image_grid(pixels: np.ndarray, columns: int, rows: int | None = None,
               pad: int = 2) -> np.ndarray:
  """Tiles (N, H, W, C) images in [0, 1] row-major into a uint8 grid.

  With class-cyclic targets and `columns` = the class count, column c shows
  class c (torchvision `save_image(nrow=10)` upstream). Empty cells and the
  `pad`-pixel borders are white.

  Args:
    pixels: images in [0, 1].
    columns: images per row.
    rows: rows shown (None: all).
    pad: border width.

  Returns:
    A (rows * (H + pad) + pad, columns * (W + pad) + pad, C) uint8 array.
  """
  n, h, w, c = pixels.shape
  rows = -(-n // columns) if rows is None else min(rows, -(-n // columns))
  grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255,
                 np.uint8)
  for i in range(min(n, rows * columns)):
    r, col = divmod(i, columns)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    grid[top:top + h, left:left + w] = np.round(pixels[i] * 255).astype(
        np.uint8)
  return grid


def save_png(path: str, array: np.ndarray, palette: bool = False) -> None:
  """Writes an (H, W, 3) uint8 array as PNG (optionally 256 colours)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.fromarray(array)
  if palette:
    image = image.quantize(256)
  image.save(path, optimize=True)


def write_comparison(grids: Mapping[str, str], out_path: str,
                     rows: int | None = None, columns: int | None = None,
                     palette: bool = False) -> str:
  """Figure 6: the teachers' DeepInversion grids side by side, labelled.

  Args:
    grids: label -> images.npz of a finished DeepInversion stage, in order
      (e.g. {'normal': ..., 'nasty': ...}).
    out_path: the PNG to write.
    rows: grid rows per teacher (None: the whole batch).
    columns: images per row (None: the class count stored with the images).
    palette: store 256 colours (a much smaller file).

  Returns:
    out_path.
  """
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  panels = []
  for label, images_path in grids.items():
    with np.load(images_path) as data:
      pixels = to_pixels(data['images'], data['mean'], data['std'])
      cols = int(data['num_classes']) if columns is None else columns
    grid = image_grid(pixels, cols, rows)
    if grid.shape[-1] == 1:
      grid = np.repeat(grid, 3, axis=-1)
    title = np.full((14, grid.shape[1], 3), 255, np.uint8)
    canvas = Image.fromarray(np.concatenate([title, grid], axis=0))
    ImageDraw.Draw(canvas).text((4, 1), f'{label} teacher', fill=(0, 0, 0))
    panels.append(np.asarray(canvas))
  height = max(p.shape[0] for p in panels)
  gap = np.full((height, 8, 3), 255, np.uint8)
  row = []
  for i, panel in enumerate(panels):
    if panel.shape[0] < height:
      panel = np.concatenate([panel, np.full(
          (height - panel.shape[0], panel.shape[1], 3), 255, np.uint8)])
    row += [gap, panel] if i else [panel]
  save_png(out_path, np.concatenate(row, axis=1), palette=palette)
  return out_path


def _init_key(seed: int, purpose: int) -> jax.Array:
  # 'rbg', as every stage's parameters (programs.init_key).
  return jax.random.fold_in(jax.random.key(seed, impl='rbg'), purpose)


def _batch_key(base_key: jax.Array, index: int) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(base_key, _BATCH_KEY), index)


def _synthesize_pool(inverter: Inverter, base_key: jax.Array, stage_dir: str,
                     first: tuple[np.ndarray, np.ndarray], count: int
                     ) -> tuple[np.ndarray, np.ndarray] | None:
  """KD's synthetic set: batch 0 (the figure's) plus batches 1..count-1.

  Each batch is saved as it finishes, so a killed run keeps them; returns
  None when a pre-emption was requested between batches.
  """
  pool_dir = os.path.join(stage_dir, POOL_DIR)
  os.makedirs(pool_dir, exist_ok=True)
  images, labels = [first[0]], [first[1]]
  for k in range(1, count):
    path = os.path.join(pool_dir, f'batch_{k:05d}.npz')
    if not os.path.exists(path):
      if engine.preemption_requested():
        return None
      x, _, bad = inverter.invert(_batch_key(base_key, k))
      if bad is not None:
        raise engine.NonFiniteLossError(
            f'DeepInversion: synthetic batch {k} went non-finite at '
            f'iteration {bad}; lower deepinversion.lr.')
      tmp = path + '.tmp.npz'
      np.savez(tmp, images=x)
      os.replace(tmp, path)
      logging.info('DeepInversion: synthetic batch %d/%d saved.', k + 1,
                   count)
    with np.load(path) as data:
      images.append(data['images'])
    labels.append(first[1])
  return np.concatenate(images), np.concatenate(labels)


class _Pool:
  """The synthetic set as a program's training data (no augmentation)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int,
               seed: int):
    self.images, self.labels = images, labels
    self.batch_size, self.seed = batch_size, seed
    self.steps_per_epoch = len(images) // batch_size
    if self.steps_per_epoch < 1:
      raise ValueError(
          f'{len(images)} synthetic images make no batch of {batch_size}; '
          'raise deepinversion.kd_batches or lower batch_size.')

  def train_batches(self, epoch: int, start_step: int = 0):
    # Per-epoch shuffles, a function of (seed, epoch).
    order = np.random.default_rng([self.seed, epoch]).permutation(
        len(self.images))
    for i in range(start_step, self.steps_per_epoch):
      rows = order[i * self.batch_size:(i + 1) * self.batch_size]
      yield {'image': self.images[rows], 'label': self.labels[rows]}


def _distil(config: ml_collections.ConfigDict, spec: programs.StageSpec,
            stage_dir: str, pool: tuple[np.ndarray, np.ndarray],
            frozen: programs.Frozen,
            step_hook: Callable[[int], None] | None) -> dict[str, Any]:
  """KD (temperature kd_temperature, no hard labels) on the synthetic pool.

  A KD stage of the engine in `stage_dir/kd`: the config's optimiser for
  the student arch, evaluation on the real test split, best/ and last/.
  """
  dicfg = config.deepinversion
  kd_spec = programs.StageSpec(f'{spec.name}/kd', 'kd', spec.arch,
                               spec.frozen)
  objective = methods.get('kd').objective(ml_collections.ConfigDict(dict(
      temperature=float(dicfg.kd_temperature), alpha=1.0)))
  keys = (jax.random.fold_in(jax.random.key(config.seed), _KD_KEY),
          _init_key(config.seed, _KD_KEY))
  build = lambda ctx: programs.supervised(
      ctx, train_data=_Pool(*pool, config.batch_size, config.seed),
      num_epochs=dicfg.kd_epochs, objective=objective, keys=keys,
      frozen=frozen)
  result = engine.run_stage(config, kd_spec, os.path.join(stage_dir, KD_DIR),
                            build=build, step_hook=step_hook)
  if result.get('status') != 'preempted':
    result['synthetic_images'] = int(len(pool[0]))
  return result


def run_deepinversion(config: ml_collections.ConfigDict,
                      spec: programs.StageSpec, stage_dir: str, *,
                      step_hook: Callable[[int], None] | None = None
                      ) -> dict[str, Any]:
  """Inverts one teacher (or skips a finished stage) and returns the result.

  Writes `images.npz` (the figure's batch: normalised NHWC `images`,
  `targets`, each loss term per iteration, the dataset's `mean`/`std`),
  `grid.png` (one column per class, de-normalised and clipped to [0, 1]) and
  `result.json`. With deepinversion.kd_epochs > 0 it also synthesises
  kd_batches batches in all and distils `spec.arch` from the teacher on them
  (`kd/`), recording the student's real-test accuracy as the stage's
  best/last.

  Args:
    config: the pipeline config; its `deepinversion` group holds the
      settings.
    spec: the stage (method 'deepinversion'; frozen: the teacher; arch: the
      KD student).
    stage_dir: the stage's own folder.
    step_hook: passed to the KD loop (tests).

  Returns:
    The result: the teacher's test accuracy and its accuracy on the
    synthetic batch, the final loss terms, the files, and the KD student's
    accuracy if distilled.

  Raises:
    ValueError: a bad spec, config or teacher.
  """
  dicfg = config.deepinversion
  os.makedirs(stage_dir, exist_ok=True)
  par = parallel_lib.Parallel(config.parallelism, config.num_devices)
  ctx = programs.Context(config, spec, par,
                         programs.open_dataset(config, par))
  frozen = programs.load_frozen_networks(ctx)
  teacher = frozen.models[methods.TEACHER]
  teacher_vars = frozen.variables[methods.TEACHER]
  num_classes = config.dataset.num_classes
  size = config.dataset.image_size
  base_key = jax.random.key(config.seed)
  student = student_vars = None
  if dicfg.cig_scale:
    # Upstream's competitor is its untrained ResNet-18 (eval mode).
    student = programs.create_model(config, spec.arch)
    student_vars = par.replicate(jax.jit(functools.partial(
        student.init, train=False))(
            _init_key(config.seed, _COMPETITOR_KEY),
            jnp.zeros((1, size, size, 3))))
  inverter = Inverter(dicfg, teacher, teacher_vars, (size, size, 3),
                      num_classes, par, student, student_vars)
  mean, std = normalization(config.dataset)

  images_path = os.path.join(stage_dir, IMAGES_FILE)
  seconds = None
  if os.path.exists(images_path):
    with np.load(images_path) as data:
      images, targets = data['images'], data['targets']
      curves = {k: data[f'curve_{k}'] for k in LOSS_TERMS}
  else:
    start = time.perf_counter()
    images, curves, _ = inverter.invert(
        _batch_key(base_key, 0), log_every=config.log_every_steps,
        label=spec.name)
    targets = class_cyclic_targets(dicfg.batch_size, num_classes)
    tmp = images_path + '.tmp.npz'
    np.savez(tmp, images=images, targets=targets, mean=mean, std=std,
             num_classes=num_classes,
             **{f'curve_{k}': v for k, v in curves.items()})
    os.replace(tmp, images_path)
    seconds = time.perf_counter() - start
    if engine.preemption_requested():
      # The batch is saved; a rerun picks up from here.
      engine.acknowledge_preemption()
      return {'status': 'preempted', 'step': 0}
  save_png(os.path.join(stage_dir, GRID_FILE),
           image_grid(to_pixels(images, mean, std), num_classes))
  bad = np.flatnonzero(~np.isfinite(curves['loss']))

  kd = None
  if dicfg.kd_epochs > 0 and not bad.size:
    pool = _synthesize_pool(inverter, base_key, stage_dir,
                            (images, targets), max(1, dicfg.kd_batches))
    if pool is None:
      engine.acknowledge_preemption()
      return {'status': 'preempted', 'step': 0}
    kd = _distil(config, spec, stage_dir, pool, frozen, step_hook)
    if kd.get('status') == 'preempted':
      return kd

  result = {
      'stage': spec.name, 'mode': spec.method,
      'arch': spec.arch if kd is not None else None,
      'frozen_arch': spec.frozen[0].arch,
      'frozen_checkpoint': spec.frozen[0].checkpoint,
      'frozen_accuracy': frozen.accuracy,
      'status': 'nonfinite' if bad.size else 'complete',
      'images': IMAGES_FILE, 'grid': GRID_FILE,
      'iterations': int(len(curves['loss'])),
      'final': {k: float(v[-1]) for k, v in curves.items()},
      # Upstream prints this for the returned (final, un-rolled) batch.
      'synthetic_teacher_accuracy': inverter.teacher_accuracy(images),
      'seconds': seconds,
      'best': kd['best'] if kd else None,
      'best_epoch': kd['best_epoch'] if kd else None,
      'last': kd['last'] if kd else None,
      'kd': kd, 'deepinversion': json.loads(dicfg.to_json()),
      'devices': par.device_count, 'parallelism': par.kind,
  }
  if bad.size:
    result['nonfinite_step'] = int(bad[0])
  engine.write_result(stage_dir, result)
  return result
