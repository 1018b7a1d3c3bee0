"""UCI handwritten digits (shipped inside scikit-learn) as a TFDS dataset.

The project's embedded default dataset: it needs no download, prepares in
seconds and trains on a CPU in minutes, yet exercises every 32x32 model.

Source: `sklearn.datasets.load_digits()`, 1797 grey 8x8 images with integer
values 0..16, labels 0..9. Each image is stored as 32x32x3 uint8:

* value -> round(value * 255 / 16) (only value 8 lands on .5, and both round
  half-to-even and half-up give 128);
* nearest-neighbour 4x upsampling (every pixel becomes a 4x4 block: lossless,
  and 32x32 inputs let every CIFAR architecture run unchanged);
* the grey value copied to R, G and B.

Splits are fixed and deterministic: 'test' = samples whose index in
`load_digits()` order is a multiple of 5 (360 images), 'train' = the other
1437. Record keys are those indices.
"""

import numpy as np
from PIL import Image
from sklearn import datasets as sk_datasets
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
_UPSAMPLE = 4
_TEST_EVERY = 5


def digits_images() -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits as (N, 32, 32, 3) uint8 images and (N,) int64 labels."""
  raw = sk_datasets.load_digits()
  grey = np.round(raw.images * (255 / 16)).astype(np.uint8)
  grey = np.repeat(np.repeat(grey, _UPSAMPLE, axis=1), _UPSAMPLE, axis=2)
  return np.repeat(grey[..., None], 3, axis=-1), raw.target.astype(np.int64)


def split_indices(split: str, num_examples: int) -> np.ndarray:
  """Indices of `split` ('train' or 'test') in `load_digits()` order."""
  index = np.arange(num_examples)
  is_test = index % _TEST_EVERY == 0
  return index[is_test] if split == 'test' else index[~is_test]


class Digits(tfds.core.GeneratorBasedBuilder):
  """sklearn's 8x8 handwritten digits, upsampled to 32x32 RGB."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(
                names=[str(d) for d in range(10)]),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    images, labels = digits_images()
    return {
        split: self._generate_examples(images, labels,
                                       split_indices(split, len(labels)))
        for split in ('train', 'test')
    }

  def _generate_examples(self, images, labels, indices):
    # PIL images are PNG-encoded by PIL, so preparing never imports TF.
    for i in indices:
      yield int(i), {'image': Image.fromarray(images[i]), 'label': labels[i]}
