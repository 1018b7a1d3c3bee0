"""Datasets for training: `create_dataset` and the streaming (grain) path.

`create_dataset(dataset_cfg, global_batch_size, seed, input=...)` opens a
prepared TFDS dataset with `as_data_source` (array_record, decoded with
numpy/PIL: no TensorFlow at read time), or the `arrays` dataset (`arrays`:
local files decoded into memory), and returns one of two pipelines with
the same interface (see `nasty_jax.data`):

* 'device' (`device_pipeline.DevicePipeline`): the split is read once into
  memory and kept on the accelerators; batches are gathered and augmented
  there.
* 'stream' (`StreamPipeline`, here): grain shuffles record positions and
  batches them; its read threads then read each batch (one batched
  array_record read), draw every record's augmentation from that record's
  own numpy Generator, augment the batch with `augment.apply` (numpy),
  normalise it, and keep a few batches ready ahead. Batches are numpy arrays
  holding this process's rows; make global arrays of them with
  `jax.make_array_from_process_local_data`.

TFDS and grain are imported where they are used, so the device path of
an `arrays` dataset runs where only jax, numpy and PIL are installed.

Determinism: epoch e's order and augmentations are a pure function of
(seed, e) and the record index, so a resumed run sees the batches an
uninterrupted one would.

Multi-host sharding of the stream path: rather than giving each process a
fixed part of the data (`tfds.split_for_jax_process`), every process draws
the same global permutation and takes every process_count-th position of it.
The union of the processes' k-th batches is then exactly the k-th global
batch of a single-process run, so the trained batches do not depend on the
number of hosts; the processes' parts are disjoint.
"""

import concurrent.futures
import functools
import os
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nasty_jax.data import arrays
from nasty_jax.data import augment
from nasty_jax.data import device_pipeline

INPUTS = ('device', 'stream')
# docs/reference.md#data: the reference's (unwired) subset loader re-seeds NumPy
# with 230.
SUBSET_SEED = 230


def subset_indices(num_examples: int, subset_percent: float) -> np.ndarray:
  """Training records kept for a data-fraction run (Fig. 5b).

  The reference's `fetch_subset_dataloader` rule: shuffle 0..N-1 with
  NumPy's legacy RNG seeded 230 (`np.random.seed(230);
  np.random.shuffle(indices)`) and keep the first int(p * N).

  Args:
    num_examples: N, the size of the training split.
    subset_percent: p in (0, 1]; 1 keeps every record, in order.

  Returns:
    int64 record indices.
  """
  if not 0 < subset_percent <= 1:
    raise ValueError(f'dataset.subset_percent must be in (0, 1], got '
                     f'{subset_percent}.')
  index = np.arange(num_examples)
  if subset_percent == 1:
    return index
  np.random.RandomState(SUBSET_SEED).shuffle(index)
  return index[:int(subset_percent * num_examples)]


def epoch_seed(seed: int, epoch: int) -> int:
  """A 32-bit seed for epoch `epoch`'s shuffle (no collisions across runs)."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _record_rng(seed: int, epoch: int, record: int) -> np.random.Generator:
  return np.random.default_rng([seed, epoch, record])


class StreamPipeline:
  """Batches read, augmented and batched on the host by grain.

  Attributes: as `device_pipeline.DevicePipeline`; batches are numpy arrays
  of `global_batch_size // process_count` rows (this process's part).
  """

  def __init__(self, train_source: Sequence[dict[str, Any]],
               train_index: np.ndarray,
               eval_source: Sequence[dict[str, Any]], *, num_classes: int,
               image_shape: tuple[int, int, int], global_batch_size: int,
               eval_batch_size: int, seed: int, policy: augment.Policy,
               norm: augment.Normalization, image_dtype=jnp.float32,
               process_index: int = 0, process_count: int = 1,
               num_threads: int | None = None):
    """Sets up the pipeline; nothing is read until batches are iterated.

    Args:
      train_source: random-access records {'image': uint8 HWC, 'label'}.
      train_index: records of `train_source` used (see `subset_indices`).
      eval_source: records of the evaluation split.
      num_classes: label count.
      image_shape: (H, W, 3).
      global_batch_size: training batch size over all processes.
      eval_batch_size: evaluation batch size over all processes.
      seed: base seed (>= 0) of shuffling and augmentation.
      policy: training augmentation.
      norm: normalisation constants.
      image_dtype: dtype of the normalised images.
      process_index: this process (jax.process_index()).
      process_count: number of processes (jax.process_count()).
      num_threads: grain read threads; None = 2 per CPU core, at most 16.
    """
    self.num_classes = num_classes
    self.image_shape = tuple(image_shape)
    self.num_train, self.num_eval = len(train_index), len(eval_source)
    self.global_batch_size = global_batch_size
    self.eval_batch_size = eval_batch_size
    self.steps_per_epoch, self.eval_steps = device_pipeline.batch_counts(
        self.num_train, self.num_eval, global_batch_size, eval_batch_size,
        process_count)
    self._train_source, self._eval_source = train_source, eval_source
    self._train_index = np.asarray(train_index)
    self._seed, self._policy, self._norm = seed, policy, norm
    self._dtype = image_dtype
    self._process = (process_index, process_count)
    self._threads = num_threads or min(16, 2 * (os.cpu_count() or 1))

  def _load_train(self, epoch: int,
                  positions: np.ndarray) -> dict[str, np.ndarray]:
    records = self._train_index[positions]
    images, labels = read_records(self._train_source, records)
    # Each record's draws come from its own generator: a pure function of
    # (seed, epoch, record), whatever batch or thread it lands in.
    params = augment.stack_params([
        augment.sample_params_np(_record_rng(self._seed, epoch, r),
                                 self._policy) for r in records])
    images = augment.apply(np, images, np.arange(len(records)), self._policy,
                           params)
    return {'image': augment.normalize(np, images, self._norm, self._dtype),
            'label': labels}

  def _load_eval(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    mask = positions < self.num_eval
    images, labels = read_records(self._eval_source,
                                  np.where(mask, positions, 0))
    return {'image': augment.normalize(np, images, self._norm, self._dtype),
            'label': labels, 'mask': mask.astype(np.float32)}

  def _iterate(self, load, batch_size: int, num_positions: int, *,
               seed: int | None = None, start: int = 0,
               stop: int | None = None):
    """This process's rows of each global batch of positions, loaded.

    The positions are 0..num_positions-1, shuffled by grain with `seed`
    (None: in order), then [start:stop]. grain's read threads load whole
    batches (a batched array_record read, then vectorised augmentation),
    up to `num_threads` batches ahead.
    """
    # Imported here, as TFDS is: the device path runs without either.
    import grain  # pylint: disable=g-import-not-at-top
    positions = grain.MapDataset.range(num_positions)
    if seed is not None:
      positions = positions.shuffle(seed=seed)
    positions = positions[start:stop]
    index, count = self._process
    ds = positions[index::count].batch(batch_size // count,
                                       drop_remainder=True).map(load)
    return iter(ds.to_iter_dataset(grain.ReadOptions(
        num_threads=self._threads,
        prefetch_buffer_size=max(2, self._threads))))

  def train_batches(self, epoch: int,
                    start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Yields epoch `epoch`'s batches from step `start_step` on.

    Args:
      epoch: 0-based epoch; with the seed it fixes order and augmentation.
      start_step: first step within the epoch (to resume mid-epoch).

    Returns:
      Iterator of {'image': (b, H, W, 3) normalised, 'label': (b,) int32},
      b = global_batch_size // process_count.
    """
    size = self.global_batch_size
    return self._iterate(functools.partial(self._load_train, epoch), size,
                         self.num_train, seed=epoch_seed(self._seed, epoch),
                         start=start_step * size,
                         stop=self.steps_per_epoch * size)

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """Yields the whole eval split once, in order, the last batch padded.

    Returns:
      Iterator of {'image', 'label', 'mask'}: mask is float32 1 for real
      examples, 0 for padding.
    """
    size = self.eval_batch_size
    return self._iterate(self._load_eval, size, self.eval_steps * size)


def read_records(source: Sequence[dict[str, Any]],
                 records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Reads and decodes some records of a data source.

  Args:
    source: random-access records {'image': uint8 HWC, 'label'}.
    records: indices of the records to read, in this order.

  Returns:
    (images (n, H, W, 3) uint8, labels (n,) int32).
  """
  keys = [int(r) for r in records]
  # A batched array_record read costs half as much per record.
  getitems = getattr(source, '__getitems__', None)
  examples = getitems(keys) if getitems else [source[k] for k in keys]
  return (np.stack([e['image'] for e in examples]),
          np.asarray([e['label'] for e in examples], np.int32))


def read_split(source: Sequence[dict[str, Any]],
               index: np.ndarray | None = None,
               chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Reads and decodes a whole split (or the records `index`) into memory.

  Args:
    source: random-access records {'image', 'label'}.
    index: records to read, in this order; None = all.
    chunk: records decoded per task (PIL decodes outside the GIL, so a few
      threads help).

  Returns:
    (images (n, H, W, 3) uint8, labels (n,) int32).
  """
  index = np.arange(len(source)) if index is None else np.asarray(index)
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    parts = list(pool.map(
        lambda start: read_records(source, index[start:start + chunk]),
        range(0, len(index), chunk)))
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]))


def _get(cfg, name: str, default=None):
  """Optional config field (ConfigDict or any attribute holder)."""
  value = getattr(cfg, name, default)
  return default if value is None else value


class Defaults(NamedTuple):
  """What a dataset defaults to where its config fields are None.

  Attributes:
    image_size: height = width; None = `dataset.image_size` or the data.
    norm: normalisation (`dataset.mean` / `dataset.std` override).
    policy: augmentation policy; None = by image size.
  """
  image_size: int | None
  norm: augment.Normalization
  policy: str | None


def dataset_defaults(name: str) -> Defaults:
  """The defaults of dataset `name`; raises listing the valid names."""
  if name == arrays.NAME:
    return Defaults(None, arrays.NORM, None)
  # Imported here: the TFDS datasets' registry comes with TFDS.
  from nasty_jax.data import builders  # pylint: disable=g-import-not-at-top
  spec = builders.get_spec(name)
  return Defaults(spec.image_size, spec.norm, spec.policy)


class _Opened(NamedTuple):
  """A dataset's splits as random-access records, and what they hold."""
  train: Sequence[dict[str, Any]]
  eval: Sequence[dict[str, Any]]
  num_classes: int
  image_size: int
  where: str  # For messages: '<name> in <folder>' or the file.


def _open_tfds(dataset_cfg, image_size: int | None,
               auto_prepare: bool) -> _Opened:
  """A prepared TFDS dataset (array_record, read without TensorFlow)."""
  # pylint: disable=g-import-not-at-top
  from nasty_jax.data import builders
  from nasty_jax.data import prepare
  # pylint: enable=g-import-not-at-top
  name = dataset_cfg.name
  spec = builders.get_spec(name)
  builder = prepare.load_prepared(
      name, data_dir=_get(dataset_cfg, 'data_dir'),
      manual_dir=_get(dataset_cfg, 'manual_dir'), image_size=image_size,
      auto_prepare=auto_prepare)
  stored_size = builder.info.features['image'].shape[:2]
  if stored_size != (image_size, image_size):
    raise ValueError(f'{name} in {builder.data_dir} holds {stored_size} '
                     f'images; dataset.image_size is {image_size}.')
  return _Opened(builder.as_data_source(spec.train_split),
                 builder.as_data_source(spec.eval_split),
                 builder.info.features['label'].num_classes, image_size,
                 f'{name} in {builder.data_dir}')


def _open_arrays(dataset_cfg, image_size: int | None) -> _Opened:
  """The `arrays` dataset: its files decoded into memory."""
  path = _get(dataset_cfg, 'manual_dir')
  splits = arrays.load(path)
  if image_size is not None and image_size != splits.image_size:
    raise ValueError(f'{path} holds {splits.image_size}x{splits.image_size} '
                     f'images; dataset.image_size is {image_size}.')
  return _Opened(arrays.Records(*splits.train), arrays.Records(*splits.test),
                 len(splits.classes), splits.image_size, path)


def create_dataset(  # pylint: disable=redefined-builtin
    dataset_cfg, global_batch_size: int, seed: int, *,
    input: str | None = None,
    sharding: jax.sharding.NamedSharding | None = None,
    image_dtype=jnp.float32, eval_batch_size: int | None = None,
    process_index: int | None = None, process_count: int | None = None,
) -> device_pipeline.DevicePipeline | StreamPipeline:
  """Opens the configured dataset as a training / evaluation pipeline.

  Args:
    dataset_cfg: the `dataset` config group: name, data_dir, manual_dir,
      image_size, num_classes, subset_percent, augment, mean, std, input
      (missing or None fields take the dataset's defaults).
    global_batch_size: training batch size over all devices and processes.
    seed: base seed (>= 0) of shuffling and augmentation.
    input: 'device' or 'stream'; None = dataset_cfg.input, else 'device'.
    sharding: device path: layout of the batches (a NamedSharding over a 1-D
      mesh axis, spec P('batch')); None = default device. Unused by 'stream'.
    image_dtype: dtype of the normalised images (e.g. jnp.bfloat16).
    eval_batch_size: None = global_batch_size.
    process_index: None = jax.process_index() (tests fake it).
    process_count: None = jax.process_count().

  Returns:
    A `device_pipeline.DevicePipeline` or a `StreamPipeline`.
  """
  name = dataset_cfg.name
  defaults = dataset_defaults(name)
  input = input or _get(dataset_cfg, 'input', 'device')
  if input not in INPUTS:
    raise ValueError(f'Unknown dataset input {input!r}; valid: '
                     f'{", ".join(INPUTS)}.')
  if seed < 0:
    raise ValueError(f'seed must be >= 0, got {seed}.')
  process_index = (jax.process_index() if process_index is None
                   else process_index)
  process_count = (jax.process_count() if process_count is None
                   else process_count)
  image_size = _get(dataset_cfg, 'image_size', defaults.image_size)
  if defaults.image_size and image_size != defaults.image_size:
    raise ValueError(f'{name} images are {defaults.image_size}x'
                     f'{defaults.image_size}; dataset.image_size is '
                     f'{image_size}.')
  if name == arrays.NAME:
    opened = _open_arrays(dataset_cfg, image_size)
  else:
    opened = _open_tfds(dataset_cfg, image_size, process_count == 1)
  image_size = opened.image_size
  policy_name = _get(dataset_cfg, 'augment', 'default')
  if policy_name == 'default':
    policy_name = defaults.policy or ('crop_flip' if image_size <= 32
                                      else 'rotate_flip')
  policy = augment.get_policy(policy_name)
  norm = augment.Normalization(
      tuple(_get(dataset_cfg, 'mean', defaults.norm.mean)),
      tuple(_get(dataset_cfg, 'std', defaults.norm.std)))
  num_classes = opened.num_classes
  wanted = _get(dataset_cfg, 'num_classes', num_classes)
  if wanted != num_classes:
    raise ValueError(f'{opened.where} has {num_classes} classes but '
                     f'dataset.num_classes is {wanted}.')
  train_index = subset_indices(len(opened.train),
                               _get(dataset_cfg, 'subset_percent', 1.0))
  kwargs = dict(
      num_classes=num_classes, global_batch_size=global_batch_size,
      eval_batch_size=eval_batch_size or global_batch_size, seed=seed,
      policy=policy, norm=norm, image_dtype=image_dtype)
  if input == 'stream':
    return StreamPipeline(
        opened.train, train_index, opened.eval,
        image_shape=(image_size, image_size, 3), process_index=process_index,
        process_count=process_count, **kwargs)
  return device_pipeline.DevicePipeline(
      read_split(opened.train, train_index), read_split(opened.eval),
      sharding=sharding, **kwargs)
