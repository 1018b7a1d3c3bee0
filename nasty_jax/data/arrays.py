"""The `arrays` dataset: local files decoded into memory, without TFDS.

  --config.dataset.name=arrays --config.dataset.manual_dir=PATH

PATH is one of:

* an arrays .npz: `x_train` and `x_test` uint8 (N, H, W, 3), `y_train` and
  `y_test` integer labels, optionally `classes` (names; index = label);
* a JPEG pack .npz: every image a JPEG whose header is shared by all of
  them, stored once, so that `jpeg_header + <split>_scans[<split>_offsets[i]:
  <split>_offsets[i + 1]]` is image i's file, with `<split>_labels` and
  `classes` (CIFAR-10 so packed is 20 MB, small enough to carry to a machine
  that has jax but neither TFDS nor grain);
* an image folder `<root>/{train,test}/<class>/<image>`, listed as the
  `image_folder` dataset lists it (that listing comes with TFDS).

The splits are what the other datasets give the input paths, records of
{'image': uint8 HWC, 'label'}, so they go through the same pipelines
(`device_pipeline.DevicePipeline`: the same augmentation, normalisation and
batching). Images decode with PIL's `.convert('RGB')`, as TFDS decodes the
`image_folder` dataset's files, so a pack or folder gives the pixels that
dataset gives for the same JPEG files. The default normalisation is
CIFAR-10's, the augmentation policy follows the image size; both as
`image_folder`, and `dataset.mean` / `dataset.std` / `dataset.augment`
override them.

Decoding all of CIFAR-10 takes seconds; to decode once for several runs:

  python -m nasty_jax.data.arrays SRC OUT.npz    # SRC: a pack or a folder
"""

import argparse
import concurrent.futures
import io
import os
from typing import Any, NamedTuple, Sequence

import numpy as np
from PIL import Image

from nasty_jax.data import augment

NAME = 'arrays'
NORM = augment.CIFAR10_NORM
SPLITS = ('train', 'test')
_PACK_KEYS = ('jpeg_header', 'train_scans', 'train_offsets', 'train_labels',
              'test_scans', 'test_offsets', 'test_labels')
_ARRAY_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')


class Splits(NamedTuple):
  """A dataset in memory.

  Attributes:
    train: (images (N, H, W, 3) uint8, labels (N,) int32).
    test: the same for the test split.
    classes: class names, index = label.
  """
  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]
  classes: tuple[str, ...]

  @property
  def image_size(self) -> int:
    return self.train[0].shape[1]


class Records:
  """Random-access records {'image', 'label'} of one split, as TFDS's
  data sources give them (`input_pipeline.read_records` reads either)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {'image': self.images[i], 'label': self.labels[i]}

  def __getitems__(self, keys: Sequence[int]) -> list[dict[str, Any]]:
    return [self[k] for k in keys]


def load(path: str | None) -> Splits:
  """Reads an arrays .npz, a JPEG pack or an image folder (see the module).

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: a file of another kind, or arrays that are no dataset; the
      message names the file and what is wrong.
  """
  if not path:
    raise ValueError(
        'dataset.manual_dir must name the arrays .npz, JPEG pack or image '
        f'folder of the {NAME!r} dataset: --config.dataset.manual_dir=PATH.')
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    return _checked(path, *_read_folder(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No {NAME} dataset at {path}: give an arrays '
                            '.npz, a JPEG pack .npz or an image folder.')
  try:
    npz = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f'{path} is not a readable .npz file ({e}).') from None
  if not hasattr(npz, 'files'):
    raise ValueError(f'{path} is a single array, not an .npz of a dataset.')
  with npz:
    keys = set(npz.files)
    if keys.issuperset(_ARRAY_KEYS):
      parts = [(npz[f'x_{s}'], npz[f'y_{s}']) for s in SPLITS]
    elif keys.issuperset(_PACK_KEYS):
      parts = [_decode_pack_split(npz, s, path) for s in SPLITS]
    else:
      raise ValueError(
          f'{path} holds neither the arrays {", ".join(_ARRAY_KEYS)} nor a '
          f'JPEG pack ({", ".join(_PACK_KEYS)}); it has '
          f'{", ".join(sorted(keys)) or "nothing"}.')
    classes = npz['classes'] if 'classes' in keys else None
  return _checked(path, parts[0], parts[1], classes)


def _decode_pack_split(npz, split: str, path: str
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of one split of a JPEG pack: header + scan, decoded."""
  header = npz['jpeg_header'].tobytes()
  scans, offsets = npz[f'{split}_scans'], npz[f'{split}_offsets']
  labels = npz[f'{split}_labels']
  if len(offsets) != len(labels) + 1:
    raise ValueError(f'{path}: {split}_offsets has {len(offsets)} entries '
                     f'for {len(labels)} labels (expected one more).')
  files = [header + scans[offsets[i]:offsets[i + 1]].tobytes()
           for i in range(len(labels))]
  names = [f'{path}:{split}[{i}]' for i in range(len(labels))]
  return _decode(files, names), labels


def _read_folder(root: str):
  """(train, test, classes) of an image folder, decoded."""
  # Imported here: the `image_folder` dataset's listing rule comes with
  # TFDS; packs and arrays files need neither.
  # pylint: disable=g-import-not-at-top
  try:
    from nasty_jax.data.builders import image_folder
  except ImportError as e:
    raise ValueError(f'Reading the image folder {root} needs TFDS ({e}); '
                     'give a JPEG pack or an arrays .npz instead.') from None
  # pylint: enable=g-import-not-at-top
  splits = {s: image_folder.list_split(root, s) for s in SPLITS}
  classes = list(splits['train'])
  if list(splits['test']) != classes:
    raise ValueError(f'{root}: train/ and test/ must hold the same class '
                     'folders.')
  parts = []
  for split in SPLITS:
    names = [n for files in splits[split].values() for n in files]
    labels = np.repeat(np.arange(len(classes)),
                       [len(files) for files in splits[split].values()])
    files = []
    for name in names:
      with open(os.path.join(root, name), 'rb') as f:
        files.append(f.read())
    parts.append((_decode(files, names), labels))
  return parts[0], parts[1], classes


def _decode(files: Sequence[bytes], names: Sequence[str],
            chunk: int = 2048) -> np.ndarray:
  """RGB uint8 (n, H, W, 3) of encoded images, decoded on a few threads
  (PIL decodes outside the GIL)."""
  def decode_chunk(start):
    out = []
    for data, name in zip(files[start:start + chunk],
                          names[start:start + chunk]):
      try:
        with Image.open(io.BytesIO(data)) as image:
          out.append(np.asarray(image.convert('RGB')))
      except OSError as e:
        raise ValueError(f'Cannot decode image {name}: {e}') from None
    return out
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    chunks = list(pool.map(decode_chunk, range(0, len(files), chunk)))
  images = [image for part in chunks for image in part]
  shapes = {image.shape for image in images}
  if len(shapes) != 1:
    raise ValueError(f'The images are of several sizes ({sorted(shapes)}); '
                     'a dataset needs one.')
  return np.stack(images)


def _checked(path: str, train, test, classes) -> Splits:
  """The splits as int32 labels and a class list, after checking them."""
  parts = []
  for split, (images, labels) in zip(SPLITS, (train, test)):
    images, labels = np.asarray(images), np.asarray(labels)
    if (images.dtype != np.uint8 or images.ndim != 4
        or images.shape[-1] != 3 or images.shape[1] != images.shape[2]):
      raise ValueError(
          f'{path}: {split} images are {images.dtype} {images.shape}; '
          'expected uint8 (N, S, S, 3), square RGB.')
    if (labels.ndim != 1 or len(labels) != len(images)
        or labels.dtype.kind not in 'iu'):
      raise ValueError(
          f'{path}: {split} labels are {labels.dtype} {labels.shape} for '
          f'{len(images)} images; expected one integer label per image.')
    parts.append((images, labels.astype(np.int32)))
  if parts[0][0].shape[1:] != parts[1][0].shape[1:]:
    raise ValueError(f'{path}: train images are {parts[0][0].shape[1:]} but '
                     f'test images {parts[1][0].shape[1:]}.')
  if classes is None:
    count = int(max(p[1].max(initial=-1) for p in parts)) + 1
    classes = [str(c) for c in range(count)]
  classes = tuple(str(c) for c in classes)
  for split, (_, labels) in zip(SPLITS, parts):
    if len(labels) == 0:
      raise ValueError(f'{path}: the {split} split is empty.')
    if labels.min() < 0 or labels.max() >= len(classes):
      raise ValueError(f'{path}: {split} labels span {labels.min()}..'
                       f'{labels.max()}, outside the {len(classes)} classes.')
  return Splits(parts[0], parts[1], classes)


def save(path: str, splits: Splits) -> None:
  """Writes an arrays .npz (uncompressed: it loads in a blink), atomically."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp{os.getpid()}')
  arrays = {'classes': np.asarray(splits.classes)}
  for split, (images, labels) in zip(SPLITS, (splits.train, splits.test)):
    arrays[f'x_{split}'], arrays[f'y_{split}'] = images, labels
  with open(tmp, 'wb') as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def describe(splits: Splits) -> str:
  """'train 50000, test 10000 images of 32x32, 10 classes'."""
  size = splits.image_size
  return (f'train {len(splits.train[1])}, test {len(splits.test[1])} images '
          f'of {size}x{size}, {len(splits.classes)} classes')


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m nasty_jax.data.arrays',
      description='Decodes a JPEG pack or an image folder into an arrays '
      '.npz (the arrays dataset reads any of the three).')
  parser.add_argument('source', help='a JPEG pack .npz, an arrays .npz or '
                      'an image folder')
  parser.add_argument('out', help='the arrays .npz to write')
  args = parser.parse_args(argv)
  try:
    splits = load(args.source)
    save(args.out, splits)
  except (FileNotFoundError, ValueError, OSError) as e:
    parser.exit(2, f'error: {e}\n')
  print(f'{args.out}: {describe(splits)}')


if __name__ == '__main__':
  main()
