"""Datasets and input pipelines.

  ds = data.create_dataset(config.dataset, config.batch_size, config.seed,
                           input='device', sharding=batch_sharding)
  for batch in ds.train_batches(epoch): ...   # steps_per_epoch batches
  for batch in ds.eval_batches(): ...         # whole eval split, with 'mask'

Datasets (`builders.DATASET_NAMES`): digits (embedded, the default),
cifar10, cifar100, tiny_imagenet, image_folder. They are TFDS datasets in
array_record format, prepared once and offline with
`python -m nasty_jax.data.prepare NAME` (see `prepare`); reading them needs
no TensorFlow. One more, `arrays` (`arrays.py`), is local files (an .npz of
arrays, a JPEG pack, an image folder) decoded into memory: no preparation,
and its device path needs neither TFDS nor grain.

Two input paths, the same batches in distribution (same augmentation code,
`augment.py`, and the same random-draw distributions):

* 'device' (`device_pipeline`): for data that fits in accelerator memory
  (every dataset of the paper). The split is decoded once and copied,
  replicated, to the devices; each step is one jitted gather + augment +
  normalise on device, returning arrays laid out with `sharding`. Fast, and
  no host work per step.
* 'stream' (`input_pipeline.StreamPipeline`): for data that does not fit.
  grain reads, decodes and augments records on host threads (numpy), batches
  and normalises them and prefetches two batches; each process gets its
  rows of every global batch as numpy arrays.

Both are deterministic in (seed, epoch): a resumed run sees the same batches.

Attributes are loaded lazily, and `input_pipeline` imports TFDS and grain
only where it uses them, so that `augment`, `device_pipeline` and an
`arrays` dataset's device path run without either.
"""

import importlib

_LAZY = {
    'create_dataset': 'input_pipeline',
    'subset_indices': 'input_pipeline',
    'DATASET_NAMES': 'builders',
}


def __getattr__(name: str):
  if name in _LAZY:
    module = importlib.import_module(f'{__name__}.{_LAZY[name]}')
    return getattr(module, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
