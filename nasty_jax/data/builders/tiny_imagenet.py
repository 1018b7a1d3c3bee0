"""Tiny-ImageNet-200 as a TFDS dataset, built from the official archive.

Reads the layout of the official `tiny-imagenet-200.zip`
(http://cs231n.stanford.edu/tiny-imagenet-200.zip), either the zip itself or
its extracted folder:

  wnids.txt                      the 200 class ids
  train/<wnid>/images/*.JPEG     500 images per class (100,000)
  val/images/*.JPEG              10,000 images
  val/val_annotations.txt        `<file>\\t<wnid>\\t<box>` per val image

Labels are the indices of the *sorted* wnids, as torchvision's ImageFolder
gives the reference (docs/reference.md#data); val labels come from
val_annotations.txt
(the reference needed val/ re-arranged by hand for this). Splits: 'train'
and 'validation' (the reference's test set). 64x64 images; JPEGs are stored
as they are, the few grey ones converted to RGB (PNG), like PIL's
`.convert('RGB')` in the reference.
"""

import os
import zipfile

import tensorflow_datasets as tfds

from nasty_jax.data.builders import common

IMAGE_SIZE = 64
ARCHIVE = 'tiny-imagenet-200.zip'
FOLDER = 'tiny-imagenet-200'


class _Archive:
  """Read access to the dataset files, from the zip or the folder."""

  def __init__(self, path: str):
    self.path = path
    if zipfile.is_zipfile(path):
      self._zip = zipfile.ZipFile(path)
      names = [n for n in self._zip.namelist() if not n.endswith('/')]
      top = [n for n in names if os.path.basename(n) == 'wnids.txt']
      if not top:
        raise FileNotFoundError(f'{path} has no wnids.txt: is it the '
                                f'official {ARCHIVE}?')
      self._prefix = min(top, key=len)[:-len('wnids.txt')]
      self.names = [n[len(self._prefix):] for n in names
                    if n.startswith(self._prefix)]
    else:
      self._zip = None
      self._prefix = path
      self.names = []
      for folder, _, files in os.walk(path):
        rel = os.path.relpath(folder, path)
        self.names += [os.path.normpath(os.path.join(rel, f)).replace(
            os.sep, '/') for f in files]

  def read(self, name: str) -> bytes:
    if self._zip is not None:
      return self._zip.read(self._prefix + name)
    with open(os.path.join(self._prefix, name), 'rb') as f:
      return f.read()


def find_source(path: str) -> str:
  """The zip or folder holding the dataset, from what the user pointed at.

  Args:
    path: the zip, the extracted `tiny-imagenet-200/` folder, or a folder
      that holds either of them.

  Returns:
    Path of the zip or of the folder with `wnids.txt`.

  Raises:
    FileNotFoundError: none of these is there.
  """
  path = os.path.expanduser(path)
  candidates = [path, os.path.join(path, FOLDER), os.path.join(path, ARCHIVE)]
  for candidate in candidates:
    if os.path.isfile(os.path.join(candidate, 'wnids.txt')) or (
        os.path.isfile(candidate) and zipfile.is_zipfile(candidate)):
      return candidate
  raise FileNotFoundError(
      f'No Tiny-ImageNet found at {path}: expected {ARCHIVE}, or its '
      f'extracted {FOLDER}/ folder (with wnids.txt, train/, val/), or a folder '
      f'holding one of them. Download {ARCHIVE} from '
      'http://cs231n.stanford.edu/tiny-imagenet-200.zip and pass its path as '
      '--manual_dir.')


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """Tiny-ImageNet-200 (train 100k, validation 10k), 64x64."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Put {ARCHIVE} (or its extracted {FOLDER}/ folder) in the manual dir.')

  def __init__(self, *, source: str | None = None, **kwargs):
    """Builder; `source` (zip or folder) overrides the TFDS manual dir."""
    self._source = source
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=common.image_features(IMAGE_SIZE),
        supervised_keys=('image', 'label'),
        homepage='http://cs231n.stanford.edu/',
    )

  def _split_generators(self, dl_manager):
    archive = _Archive(find_source(os.fspath(
        self._source or dl_manager.manual_dir)))
    wnids = sorted(archive.read('wnids.txt').decode().split())
    self.info.features['label'].names = wnids
    train = sorted(n for n in archive.names if n.startswith('train/')
                   and n.lower().endswith(common.IMAGE_EXTENSIONS))
    train_wnids = {n.split('/')[1] for n in train}
    if train_wnids != set(wnids):
      raise ValueError(
          f'{archive.path}: the class folders under train/ '
          f'({len(train_wnids)}) differ from wnids.txt ({len(wnids)}), e.g. '
          f'{sorted(train_wnids ^ set(wnids))[:5]}: is the archive complete?')
    if 'val/val_annotations.txt' not in archive.names:
      raise FileNotFoundError(
          f'{archive.path} lacks val/val_annotations.txt: use the official '
          f'{ARCHIVE} layout (val/images/ plus the annotations file).')
    val = []
    for line in archive.read('val/val_annotations.txt').decode().splitlines():
      if line.strip():
        file_name, wnid = line.split('\t')[:2]
        val.append((f'val/images/{file_name}', wnid))
    unknown = {wnid for _, wnid in val} - set(wnids)
    if unknown:
      raise ValueError(f'{archive.path}: val_annotations.txt names wnids that '
                       f'wnids.txt lacks: {sorted(unknown)[:5]}.')
    return {
        'train': self._generate_examples(
            archive, [(n, n.split('/')[1]) for n in train]),
        'validation': self._generate_examples(archive, sorted(val)),
    }

  def _generate_examples(self, archive, files):
    for name, wnid in files:
      image = common.rgb_image_bytes(archive.read(name), name, IMAGE_SIZE)
      yield name, {'image': image, 'label': wnid, 'file_name': name}
