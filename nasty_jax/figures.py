"""Figures 1 and 2 of the paper from a normal and a nasty teacher.

  python -m nasty_jax.figures fig1 --config=configs/digits.py \\
      --teachers=normal=DIR/normal,nasty=DIR/nasty --out=fig1.png
  python -m nasty_jax.figures fig2 --config=configs/digits.py \\
      --teachers=normal=DIR/normal,nasty=DIR/nasty --out=fig2.png

`--teachers` names any number of teachers (label=folder, e.g. a defense's
stage beside the normal one): finished stage folders (their `best/`
checkpoints, what later stages read) or converted checkpoints. The config
(with the same `--config.x=y` overrides as the main command) names the
dataset; the architecture is read from each checkpoint.

* fig1 (Figure 1): the teachers' softmax responses at temperatures τ
  (default 1 and 4) on the first few test images, side by side.
* fig2 (Figure 2): t-SNE (scikit-learn) of a test subset's penultimate
  features (the classifier's input, `return_features=True`) and of its
  logits, coloured by class, one row per teacher.
"""

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

matplotlib.use('Agg')  # Files only; no display on servers and CI.
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt
from sklearn import manifold
import threadpoolctl

from nasty_jax import checkpointing
from nasty_jax import data as data_lib
from nasty_jax import programs
# pylint: enable=g-import-not-at-top,wrong-import-position

COLORS = ('tab:blue', 'tab:red', 'tab:green', 'tab:purple', 'tab:orange')


def test_images(config: ml_collections.ConfigDict, count: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """The first `count` test images (normalised, NHWC) and their labels."""
  dataset = data_lib.create_dataset(
      config.dataset, config.batch_size, config.seed, input='device',
      eval_batch_size=min(256, max(count, 1)))
  images, labels, found = [], [], 0
  for batch in dataset.eval_batches():
    mask = np.asarray(batch['mask']) > 0
    images.append(np.asarray(batch['image'], np.float32)[mask])
    labels.append(np.asarray(batch['label'])[mask])
    found += int(mask.sum())
    if found >= count:
      break
  return (np.concatenate(images)[:count], np.concatenate(labels)[:count])


def teacher_outputs(config: ml_collections.ConfigDict, stage_dir: str,
                    images: np.ndarray, batch_size: int = 256
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(logits, penultimate features) of a checkpoint on `images`, eval mode.

  Raises:
    ValueError: the checkpoint does not fit the config's dataset.
  """
  _, meta = checkpointing.load_variables(stage_dir)
  arch = meta.get('arch') or config.teacher.arch
  model, variables, _ = programs.load_frozen(config, arch, stage_dir)
  apply = jax.jit(functools.partial(model.apply, train=False,
                                    return_features=True))
  logits, features = [], []
  for start in range(0, len(images), batch_size):
    out = apply(variables, jnp.asarray(images[start:start + batch_size]))
    logits.append(np.asarray(out[0], np.float32))
    features.append(np.asarray(out[1], np.float32).reshape(
        out[1].shape[0], -1))
  return np.concatenate(logits), np.concatenate(features)


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(logits / τ) over the last axis, in float64."""
  z = logits.astype(np.float64) / temperature
  z -= z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _show_image(ax, image: np.ndarray, title: str) -> None:
  # Min-max per image: the normalised input shown as a picture.
  low, high = image.min(), image.max()
  ax.imshow((image - low) / max(high - low, 1e-6))
  ax.set_title(title, fontsize=8)
  ax.axis('off')


def softmax_figure(logits: dict[str, np.ndarray], images: np.ndarray,
                   labels: np.ndarray, temperatures: Sequence[float],
                   path: str) -> None:
  """Figure 1: per image, the two teachers' softmax at each temperature."""
  rows, cols = len(images), 1 + len(temperatures)
  teachers = list(logits)
  num_classes = logits[teachers[0]].shape[-1]
  classes = np.arange(num_classes)
  width = 0.8 / len(teachers)
  fig, axes = plt.subplots(rows, cols, figsize=(2.2 + 3.2 * (cols - 1),
                                                1.9 * rows), squeeze=False)
  for i in range(rows):
    _show_image(axes[i, 0], images[i], f'test image {i}, class {labels[i]}')
    for j, tau in enumerate(temperatures, start=1):
      ax = axes[i, j]
      for k, role in enumerate(teachers):
        probs = softmax(logits[role][i], tau)
        ax.bar(classes + (k - (len(teachers) - 1) / 2) * width, probs, width,
               color=COLORS[k % len(COLORS)], label=f'{role} teacher')
      ax.set_ylim(0, 1)
      ax.tick_params(labelsize=6)
      if num_classes <= 20:
        ax.set_xticks(classes)
      if i == 0:
        ax.set_title(f'softmax, τ = {tau:g}', fontsize=8)
      if i == 0 and j == 1:
        ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def embed(x: np.ndarray, seed: int = 0) -> np.ndarray:
  """2-D t-SNE of the rows of `x` (perplexity capped for small sets)."""
  perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
  tsne = manifold.TSNE(n_components=2, perplexity=perplexity, init='pca',
                       random_state=seed)
  # One OpenMP thread: at a few thousand points it is as fast, and on a
  # shared CPU sklearn's spinning thread pool is 10-50x slower.
  with threadpoolctl.threadpool_limits(1):
    return tsne.fit_transform(x.astype(np.float64))


def tsne_figure(outputs: dict[str, tuple[np.ndarray, np.ndarray]],
                labels: np.ndarray, path: str, seed: int = 0) -> None:
  """Figure 2: t-SNE of features and logits, one row per teacher."""
  num_classes = int(labels.max()) + 1
  cmap = 'tab10' if num_classes <= 10 else 'nipy_spectral'
  fig, axes = plt.subplots(len(outputs), 2, figsize=(7.5, 3.5 * len(outputs)),
                           squeeze=False)
  for i, role in enumerate(outputs):
    logits, features = outputs[role]
    for j, (name, x) in enumerate((('penultimate features', features),
                                   ('logits', logits))):
      points = embed(x, seed)
      ax = axes[i, j]
      scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, s=4,
                           cmap=cmap, vmin=-0.5, vmax=num_classes - 0.5)
      ax.set_title(f'{role} teacher: {name}', fontsize=9)
      ax.set_xticks([])
      ax.set_yticks([])
  if num_classes <= 20:
    fig.colorbar(scatter, ax=axes, ticks=range(num_classes), shrink=0.6,
                 label='class')
  fig.savefig(path, dpi=80)
  plt.close(fig)


def make_figure(which: str, config: ml_collections.ConfigDict,
                checkpoints: dict[str, str], out: str, *,
                num_images: int | None = None,
                temperatures: Sequence[float] = (1.0, 4.0),
                seed: int = 0) -> dict[str, Any]:
  """Draws Figure 1 ('fig1') or Figure 2 ('fig2') into `out`.

  Args:
    which: 'fig1' or 'fig2'.
    config: names the dataset (and model options).
    checkpoints: {label: folder}, in drawing order (e.g. normal, nasty).
    out: the PNG to write.
    num_images: test images used (default: 4 for fig1, 1000 for fig2).
    temperatures: fig1's softmax temperatures.
    seed: fig2's t-SNE seed.

  Returns:
    What was drawn: the images' labels and each teacher's accuracy on them.

  Raises:
    ValueError: an unknown figure name.
  """
  if which not in ('fig1', 'fig2'):
    raise ValueError(f'Unknown figure {which!r}; valid: fig1, fig2.')
  count = num_images or (4 if which == 'fig1' else 1000)
  images, labels = test_images(config, count)
  outputs = {role: teacher_outputs(config, folder, images)
             for role, folder in checkpoints.items()}
  if which == 'fig1':
    softmax_figure({r: o[0] for r, o in outputs.items()}, images, labels,
                   temperatures, out)
  else:
    tsne_figure(outputs, labels, out, seed)
  accuracy = {r: float((o[0].argmax(-1) == labels).mean() * 100)
              for r, o in outputs.items()}
  logging.info('%s: %d test images, accuracy %s -> %s', which, len(labels),
               accuracy, out)
  return {'labels': labels.tolist(), 'accuracy': accuracy, 'path': out}


def define_flags() -> None:
  """The command line's flags (defined only when run as a program)."""
  config_flags.DEFINE_config_file(
      'config', None, 'configs/<dataset>.py[:ARG]: names the dataset.',
      lock_config=True)
  flags.DEFINE_list('teachers', None, 'label=folder pairs, e.g. '
                    'normal=DIR/normal,nasty=DIR/nasty.')
  flags.DEFINE_string('out', None, 'The PNG to write.')
  flags.DEFINE_integer('num_images', None,
                       'Test images (default: fig1 4, fig2 1000).')
  flags.DEFINE_list('temperatures', ['1', '4'], 'fig1: softmax temperatures.')
  flags.DEFINE_integer('seed', 0, 'fig2: the t-SNE seed.')
  flags.mark_flags_as_required(['config', 'teachers', 'out'])


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError('Usage: python -m nasty_jax.figures {fig1,fig2} '
                         '--config=... --teachers=normal=DIR,nasty=DIR '
                         '--out=PNG')
  f = flags.FLAGS
  pairs = [t.partition('=') for t in f.teachers]
  if any(not label or not folder for label, _, folder in pairs):
    raise app.UsageError('--teachers takes label=folder pairs, e.g. '
                         'normal=DIR/normal,nasty=DIR/nasty.')
  make_figure(argv[1], f.config, {label: folder for label, _, folder in pairs},
              f.out, num_images=f.num_images,
              temperatures=[float(t) for t in f.temperatures], seed=f.seed)


if __name__ == '__main__':
  define_flags()
  app.run(main)
