"""Small image datasets written by tests (never the real ones)."""

import os

import numpy as np

WNIDS = ('n0300', 'n0100', 'n0200')  # Unsorted on purpose.


def write_image(path, rng, size, grey=False):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  shape = (size, size) if grey else (size, size, 3)
  Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(path)


def make_tiny_imagenet(root, rng):
  """3 wnids x 4 train images, 6 val images (one of them grey)."""
  os.makedirs(root)
  with open(os.path.join(root, 'wnids.txt'), 'w') as f:
    f.write('\n'.join(WNIDS) + '\n')
  for wnid in WNIDS:
    for i in range(4):
      write_image(f'{root}/train/{wnid}/images/{wnid}_{i}.JPEG', rng, 64,
                   grey=(wnid, i) == ('n0200', 1))
    with open(f'{root}/train/{wnid}/{wnid}_boxes.txt', 'w') as f:
      f.write('ignored\n')
  lines = []
  for i in range(6):
    write_image(f'{root}/val/images/val_{i}.JPEG', rng, 64, grey=i == 4)
    lines.append(f'val_{i}.JPEG\t{WNIDS[i % 3]}\t0\t0\t10\t10')
  with open(f'{root}/val/val_annotations.txt', 'w') as f:
    f.write('\n'.join(lines) + '\n')


def make_image_folder(root, rng, size=32, classes=('dog', 'cat')):
  for split, count in (('train', 3), ('test', 2)):
    for c in classes:
      for i in range(count):
        ext = 'png' if i == 1 else 'jpg'
        write_image(f'{root}/{split}/{c}/{i}.{ext}', rng, size,
                     grey=(split, c, i) == ('train', 'cat', 2))
  os.makedirs(f'{root}/train/.hidden')
  with open(f'{root}/train/cat/notes.txt', 'w') as f:
    f.write('not an image\n')
