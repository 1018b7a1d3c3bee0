"""Any `<root>/{train,test}/<class>/<image>` folder as a TFDS dataset.

torchvision ImageFolder semantics, as the reference uses for Tiny-ImageNet:
classes are the sorted sub-folder names of `train/` (`test/` must have the
same ones), images are found recursively below each class folder
(`.jpg`, `.jpeg`, `.png`, any case; other files and names starting with '.'
are skipped), and every image must be image_size x image_size. RGB images
are stored byte for byte (no re-encoding), others converted with PIL's
`.convert('RGB')` and stored as PNG.

Each root gets its own BuilderConfig, named after the folder plus a short
hash of its absolute path, so several folders share one data_dir without
colliding: `<data_dir>/image_folder/<folder>_<hash>/1.0.0/`.

Any copy of CIFAR-10 saved as images (for example the JPEG copies that
circulate, one file per image) is such a folder once its files sit under
`train/<class>/` and `test/<class>/`.
"""

import dataclasses
import hashlib
import os
import re

import tensorflow_datasets as tfds

from nasty_jax.data.builders import common

SPLITS = ('train', 'test')


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """One image folder: its absolute root and its image size."""
  root: str = ''
  image_size: int = 32


def folder_config(root: str, image_size: int) -> ImageFolderConfig:
  """The BuilderConfig of the folder at `root` (need not exist to read)."""
  root = os.path.abspath(os.path.expanduser(root))
  digest = hashlib.sha256(root.encode()).hexdigest()[:8]
  stem = re.sub(r'[^a-z0-9_]+', '_', os.path.basename(root).lower()).strip('_')
  return ImageFolderConfig(
      name=f'{stem or "root"}_{digest}', root=root, image_size=image_size,
      description=f'Images of {root}, {image_size}x{image_size}.')


def _visible(name: str) -> bool:
  return not name.startswith('.')


def list_split(root: str, split: str) -> dict[str, list[str]]:
  """{class name: sorted image paths relative to root} of one split.

  Raises:
    FileNotFoundError: the split folder is missing or holds no image.
  """
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(
        f'{split_dir} does not exist: an image folder dataset needs '
        f'{root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg.')
  classes = {}
  for name in sorted(filter(_visible, os.listdir(split_dir))):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue
    files = []
    for folder, dirs, names in os.walk(class_dir):
      dirs[:] = sorted(filter(_visible, dirs))
      files += [os.path.relpath(os.path.join(folder, n), root)
                for n in names if _visible(n)
                and n.lower().endswith(common.IMAGE_EXTENSIONS)]
    classes[name] = sorted(files)
  if not any(classes.values()):
    raise FileNotFoundError(
        f'{split_dir} holds no images: expected {split_dir}/<class>/<image> '
        f'with extensions {", ".join(common.IMAGE_EXTENSIONS)}.')
  return classes


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """Images in `<root>/{train,test}/<class>/`; one config per root."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=common.image_features(self.builder_config.image_size),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local data only.
    root = self.builder_config.root
    splits = {split: list_split(root, split) for split in SPLITS}
    train_classes, test_classes = (list(splits[s]) for s in SPLITS)
    if train_classes != test_classes:
      raise ValueError(
          f'{root}: train/ and test/ must hold the same class folders; only '
          f'in train/: {sorted(set(train_classes) - set(test_classes))}, only '
          f'in test/: {sorted(set(test_classes) - set(train_classes))}.')
    self.info.features['label'].names = train_classes
    return {split: self._generate_examples(files)
            for split, files in splits.items()}

  def _generate_examples(self, classes):
    root, size = self.builder_config.root, self.builder_config.image_size
    for label, files in classes.items():
      for name in files:
        with open(os.path.join(root, name), 'rb') as f:
          image = common.rgb_image_bytes(f.read(), name, size)
        yield name, {'image': image, 'label': label, 'file_name': name}
