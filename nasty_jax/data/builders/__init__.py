"""The datasets nasty_jax trains on, and how to get their TFDS builders.

`digits`, `tiny_imagenet` and `image_folder` are this package's own
GeneratorBasedBuilders (prepared from local files, no network);
`cifar10` and `cifar100` are TFDS's stock builders. Every dataset is written
as array_record, the random-access format `tfds.data_source` reads.
"""

import os
from typing import NamedTuple

from tensorflow_datasets.core import constants
import tensorflow_datasets as tfds

from nasty_jax.data import arrays
from nasty_jax.data import augment
from nasty_jax.data.builders import digits
from nasty_jax.data.builders import image_folder
from nasty_jax.data.builders import tiny_imagenet

FILE_FORMAT = 'array_record'


class DatasetSpec(NamedTuple):
  """Static facts about one dataset (the class count comes from the data).

  Attributes:
    train_split: TFDS split to train on.
    eval_split: TFDS split evaluated on (the reference's test set).
    image_size: height = width; None = `dataset.image_size` decides.
    norm: default normalisation (`dataset.mean` / `dataset.std` override).
    policy: default augmentation policy; None = by image size (image_folder:
      'crop_flip' up to 32 px like CIFAR, else 'rotate_flip' like
      Tiny-ImageNet).
    local: prepared from local files only (no download), so it may be
      prepared on first use.
  """
  train_split: str
  eval_split: str
  image_size: int | None
  norm: augment.Normalization
  policy: str | None
  local: bool


SPECS = {
    'digits': DatasetSpec('train', 'test', digits.IMAGE_SIZE,
                          augment.DIGITS_NORM, 'crop', local=True),
    'cifar10': DatasetSpec('train', 'test', 32, augment.CIFAR10_NORM,
                           'crop_flip', local=False),
    'cifar100': DatasetSpec('train', 'test', 32, augment.CIFAR10_NORM,
                            'crop_flip', local=False),
    'tiny_imagenet': DatasetSpec('train', 'validation',
                                 tiny_imagenet.IMAGE_SIZE,
                                 augment.TINY_IMAGENET_NORM, 'rotate_flip',
                                 local=True),
    'image_folder': DatasetSpec('train', 'test', None, augment.CIFAR10_NORM,
                                None, local=True),
}
DATASET_NAMES = tuple(SPECS)
# Datasets whose preparation reads dataset.manual_dir.
NEEDS_MANUAL_DIR = ('tiny_imagenet', 'image_folder')


def get_spec(name: str) -> DatasetSpec:
  """The spec of dataset `name`; raises listing the valid names."""
  if name not in SPECS:
    raise ValueError(f'Unknown dataset {name!r}; valid datasets: '
                     f'{", ".join(DATASET_NAMES)}, and {arrays.NAME} (local '
                     'files read without TFDS: nasty_jax/data/arrays.py).')
  return SPECS[name]


def resolve_data_dir(data_dir: str | None) -> str:
  """`data_dir`, or TFDS's default ($TFDS_DATA_DIR, ~/tensorflow_datasets)."""
  return os.path.expanduser(data_dir or constants.get_default_data_dir())


def get_builder(name: str, *, data_dir: str | None = None,
                manual_dir: str | None = None,
                image_size: int | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of dataset `name` (nothing is read or downloaded).

  Args:
    name: one of DATASET_NAMES.
    data_dir: TFDS data dir; None = TFDS's default.
    manual_dir: Tiny-ImageNet zip/folder, or the image folder root.
    image_size: image_folder only: the images' size.

  Returns:
    The builder, set to read and write array_record.
  """
  get_spec(name)  # Unknown names raise here.
  kwargs = dict(data_dir=resolve_data_dir(data_dir), file_format=FILE_FORMAT)
  try:
    return _construct(name, manual_dir, image_size, kwargs)
  except ValueError as e:
    # TFDS refuses array_record for data prepared as tfrecord (plain
    # `tfds build`), which tfds.data_source cannot read.
    if 'file format is already set' not in str(e).lower():
      raise
    raise FileNotFoundError(
        f'{name} in {kwargs["data_dir"]} was prepared in a format other than '
        f'array_record ({e}); tfds.data_source needs array_record. Prepare '
        f'it again into a new data dir: python -m nasty_jax.data.prepare '
        f'{name} --data_dir NEW_DIR') from e


def _construct(name, manual_dir, image_size, kwargs):
  if name == 'digits':
    return digits.Digits(**kwargs)
  if name == 'tiny_imagenet':
    return tiny_imagenet.TinyImagenet(source=manual_dir, **kwargs)
  if name == 'image_folder':
    if not manual_dir:
      raise ValueError(
          'dataset.manual_dir must name the image folder root (the folder '
          'holding train/ and test/): e.g. --config.dataset.manual_dir=DIR.')
    if not image_size:
      raise ValueError('dataset.image_size must be set for image_folder.')
    return image_folder.ImageFolder(
        config=image_folder.folder_config(manual_dir, image_size), **kwargs)
  return tfds.builder(name, **kwargs)
