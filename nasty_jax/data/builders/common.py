"""Helpers shared by the image builders (Tiny-ImageNet, image folders)."""

import io

from PIL import Image
import tensorflow_datasets as tfds

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


def rgb_image_bytes(data: bytes, name: str, image_size: int) -> bytes:
  """Checks one encoded image and returns bytes that decode to its RGB form.

  The reference loads every image with PIL's `.convert('RGB')`. An image that
  already is RGB is stored byte for byte (no re-encoding, so JPEGs decode to
  exactly what the reference saw); grey, palette, RGBA or CMYK images are
  converted and stored as lossless PNG.

  Args:
    data: the encoded file.
    name: the file's name, for error messages.
    image_size: the required height and width.

  Returns:
    Encoded image bytes.

  Raises:
    ValueError: the image is not image_size x image_size, or unreadable.
  """
  try:
    image = Image.open(io.BytesIO(data))
  except OSError as e:
    raise ValueError(f'Cannot read image {name}: {e}') from e
  with image:
    if image.size != (image_size, image_size):
      raise ValueError(
          f'Image {name} is {image.size[0]}x{image.size[1]} (WxH), but the '
          f'dataset needs {image_size}x{image_size}: resize the images, or set '
          f'dataset.image_size to match them.')
    if image.mode == 'RGB':
      return data
    out = io.BytesIO()
    image.convert('RGB').save(out, format='PNG')
    return out.getvalue()


def image_features(
    image_size: int, num_classes: int | None = None
) -> tfds.features.FeaturesDict:
  """Features of a classification image set: image, label, file name.

  Args:
    image_size: height and width.
    num_classes: if known up front; the builders set the label names from
      the data in `_split_generators` (TFDS stores and restores them).

  Returns:
    The features dict.
  """
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(image_size, image_size, 3)),
      'label': tfds.features.ClassLabel(num_classes=num_classes),
      'file_name': tfds.features.Text(),
  })
