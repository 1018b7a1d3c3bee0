"""Prepares a dataset offline, once, into a TFDS data dir.

  python -m nasty_jax.data.prepare NAME [--data_dir D] [--manual_dir M]
      [--image_size S]

prints the folder the dataset was written to. NAME is one of digits,
cifar10, cifar100, tiny_imagenet, image_folder; D defaults to TFDS's
($TFDS_DATA_DIR or ~/tensorflow_datasets). Nothing is downloaded and nothing
already written is deleted; a prepared dataset is left as it is.

* digits: nothing to fetch (scikit-learn ships it); seconds.
* tiny_imagenet: M = tiny-imagenet-200.zip, its extracted folder, or a folder
  holding either (default: D/downloads/manual).
* image_folder: M = the root holding train/<class>/ and test/<class>/, and
  S = the image size (default 32).
* cifar10 / cifar100: TFDS stock builders fed a copy of the official
  archive; the procedure is CIFAR_OFFLINE_HELP below (the error for an
  unprepared CIFAR prints it too).
"""

import argparse
import os

from absl import logging
import tensorflow_datasets as tfds

from nasty_jax.data import builders
from nasty_jax.data.builders import tiny_imagenet

# The archives TFDS's stock builders download (the *binary* versions; TFDS
# registers their size and sha256, and finds them by file name in the
# manual dir).
CIFAR_ARCHIVES = {
    'cifar10': 'cifar-10-binary.tar.gz',
    'cifar100': 'cifar-100-binary.tar.gz',
}

CIFAR_OFFLINE_HELP = """\
CIFAR-10 and CIFAR-100 are read with TFDS's stock builders. They download
the *binary* archives (not the python ones):
  https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz   (162 MiB)
  https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz  (161 MiB)
Without network, prepare them once from a copy of the archive:
  1. Put the archive, under exactly that file name, in the manual dir:
     DATA_DIR/downloads/manual/ by default, or any folder M.
  2. Run  python -m nasty_jax.data.prepare cifar10 --data_dir DATA_DIR \
[--manual_dir M]
TFDS checks the archive's registered size and sha256, extracts it to
DATA_DIR/downloads/extracted/ and writes array_record files to
DATA_DIR/cifar10/3.0.2/; nothing touches the network. (The `tfds build`
command line needs apache-beam, which the project does not install.) A copy
prepared earlier as tfrecord is not readable: prepare again into a new
DATA_DIR.
Or use any copy of the images as an image folder, no archive needed:
DIR/train/<class>/*.{png,jpg} and DIR/test/<class>/*, then
  --config.dataset.name=image_folder --config.dataset.manual_dir=DIR"""


def default_manual_dir(data_dir: str | None) -> str:
  """TFDS's default manual dir: `<data_dir>/downloads/manual`."""
  return os.path.join(builders.resolve_data_dir(data_dir), 'downloads',
                      'manual')


def prepare_command(name: str, data_dir: str | None = None,
                    manual_dir: str | None = None,
                    image_size: int | None = None) -> str:
  """The command line that prepares `name` with these arguments."""
  command = f'python -m nasty_jax.data.prepare {name}'
  command += f' --data_dir {builders.resolve_data_dir(data_dir)}'
  if name in builders.NEEDS_MANUAL_DIR:
    command += f' --manual_dir {manual_dir or "PATH"}'
  if name == 'image_folder':
    command += f' --image_size {image_size or 32}'
  return command


def _check_source(name: str, data_dir: str | None,
                  manual_dir: str | None) -> None:
  """Fails fast (no download attempt) when the raw data is not there."""
  if name in CIFAR_ARCHIVES:
    archive = os.path.join(manual_dir or default_manual_dir(data_dir),
                           CIFAR_ARCHIVES[name])
    if not os.path.isfile(archive):
      raise FileNotFoundError(
          f'{name} cannot be prepared offline: {archive} is missing.\n'
          f'{CIFAR_OFFLINE_HELP}')
  elif name == 'tiny_imagenet':
    tiny_imagenet.find_source(manual_dir)


def prepare(name: str, *, data_dir: str | None = None,
            manual_dir: str | None = None,
            image_size: int | None = None) -> str:
  """Prepares dataset `name` offline unless it already is.

  Args:
    name: one of `builders.DATASET_NAMES`.
    data_dir: TFDS data dir; None = TFDS's default.
    manual_dir: raw data (see the module docstring); None = TFDS's default
      manual dir (image_folder requires it).
    image_size: image_folder only.

  Returns:
    The folder holding the prepared dataset.
  """
  if name in ('tiny_imagenet', 'cifar10', 'cifar100'):
    manual_dir = manual_dir or default_manual_dir(data_dir)
  builder = builders.get_builder(name, data_dir=data_dir,
                                 manual_dir=manual_dir, image_size=image_size)
  if builder.is_prepared():
    logging.info('%s is already prepared in %s.', name, builder.data_dir)
    return os.fspath(builder.data_dir)
  _check_source(name, data_dir, manual_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, try_download_gcs=False))
  return os.fspath(builder.data_dir)


def load_prepared(name: str, *, data_dir: str | None = None,
                  manual_dir: str | None = None,
                  image_size: int | None = None,
                  auto_prepare: bool = True) -> tfds.core.DatasetBuilder:
  """The builder of a prepared dataset, ready for `as_data_source`.

  Local datasets (digits always; tiny_imagenet and image_folder when
  manual_dir is set) are prepared on first use if `auto_prepare`. Otherwise
  an unprepared dataset raises at once, before TFDS could try a download.

  Args:
    name: one of `builders.DATASET_NAMES`.
    data_dir: TFDS data dir; None = TFDS's default.
    manual_dir: raw data for tiny_imagenet / image_folder.
    image_size: image_folder only.
    auto_prepare: allow preparing local datasets here.

  Returns:
    The builder.

  Raises:
    FileNotFoundError: not prepared, with the command that prepares it.
  """
  kwargs = dict(data_dir=data_dir, manual_dir=manual_dir,
                image_size=image_size)
  builder = builders.get_builder(name, **kwargs)
  if builder.is_prepared():
    return builder
  spec = builders.get_spec(name)
  if auto_prepare and spec.local and (
      manual_dir or name not in builders.NEEDS_MANUAL_DIR):
    logging.info('Preparing %s in %s (first use).', name,
                 builders.resolve_data_dir(data_dir))
    prepare(name, **kwargs)
    return builders.get_builder(name, **kwargs)
  message = (f'Dataset {name} is not prepared in '
             f'{builders.resolve_data_dir(data_dir)}. Prepare it once, '
             f'offline, with:\n  {prepare_command(name, **kwargs)}')
  if name in CIFAR_ARCHIVES:
    message += '\n' + CIFAR_OFFLINE_HELP
  raise FileNotFoundError(message)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m nasty_jax.data.prepare',
      description='Prepares a dataset offline into a TFDS data dir.')
  parser.add_argument('name', choices=builders.DATASET_NAMES)
  parser.add_argument('--data_dir', default=None,
                      help='TFDS data dir (default: TFDS default).')
  parser.add_argument('--manual_dir', default=None,
                      help='raw data: Tiny-ImageNet zip/folder, image folder '
                      'root, or the folder holding the CIFAR archive.')
  parser.add_argument('--image_size', type=int, default=32,
                      help='image_folder: the images\' height and width.')
  args = parser.parse_args(argv)
  try:
    path = prepare(args.name, data_dir=args.data_dir,
                   manual_dir=args.manual_dir, image_size=args.image_size)
  except (FileNotFoundError, ValueError) as e:
    parser.exit(1, f'error: {e}\n')
  print(path)  # The command's output: where the data went.


if __name__ == '__main__':
  main()
