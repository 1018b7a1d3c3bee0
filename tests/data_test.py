"""Tests of the input pipelines (nasty_jax.data): both paths, all datasets.

Digits is prepared for real (seconds); CIFAR runs on tfds mock data;
Tiny-ImageNet and image folders are built from small fakes in tmp dirs.
Nothing is downloaded.
"""

import hashlib
import os
import subprocess
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn import datasets as sk_datasets
import tensorflow_datasets as tfds

from nasty_jax.data import augment
from nasty_jax.data import builders
from nasty_jax.data import device_pipeline
from nasty_jax.data import input_pipeline
from nasty_jax.data import prepare
from nasty_jax.data.builders import digits
import fake_data
import tfds_mock


def make_cfg(name='digits', **overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      name=name, data_dir=None, manual_dir=None, image_size=None,
      num_classes=None, subset_percent=1.0, augment='default', mean=None,
      std=None, input='device'))
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  prepare.prepare('digits', data_dir=data_dir)
  return data_dir


def _denormalize(images, norm):
  x = np.asarray(images, np.float32) * np.array(norm.std) + np.array(norm.mean)
  return np.round(x * 255).astype(np.int32)


def _collect(batches, *keys):
  batches = list(batches)
  return [np.concatenate([np.asarray(b[k]) for b in batches]) for k in keys]


# ----------------------------------------------------------------- digits --


def test_digits_prepared_splits_and_format(digits_dir):
  builder = prepare.load_prepared('digits', data_dir=digits_dir)
  assert builder.info.splits['train'].num_examples == 1437
  assert builder.info.splits['test'].num_examples == 360
  images, labels = input_pipeline.read_split(builder.as_data_source('test'))
  assert images.shape == (360, 32, 32, 3) and images.dtype == np.uint8
  # Grey in 3 channels, 4x4 blocks, value = round(v * 255 / 16).
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  small = images[:, ::4, ::4, 0]
  np.testing.assert_array_equal(np.repeat(np.repeat(small, 4, 1), 4, 2),
                                images[..., 1])
  raw = sk_datasets.load_digits()
  want = np.round(raw.images[::5] * 255 / 16).astype(np.uint8)
  # TFDS stores records in a key-hash order: match each image to its source.
  index = {w.tobytes(): i for i, w in enumerate(want)}
  found = [index[s.tobytes()] for s in small]
  assert sorted(found) == list(range(360))
  np.testing.assert_array_equal(labels, raw.target[::5][found])


def test_digits_normalization_constants(digits_dir):
  builder = prepare.load_prepared('digits', data_dir=digits_dir)
  images, _ = input_pipeline.read_split(builder.as_data_source('train'))
  x = images.astype(np.float64) / 255
  np.testing.assert_allclose(augment.DIGITS_NORM.mean,
                             np.round(x.mean((0, 1, 2)), 4), atol=1e-9)
  np.testing.assert_allclose(augment.DIGITS_NORM.std,
                             np.round(x.std((0, 1, 2)), 4), atol=1e-9)


@pytest.mark.parametrize('input_path', ['device', 'stream'])
def test_digits_batches(digits_dir, input_path):
  cfg = make_cfg(data_dir=digits_dir, input=input_path)
  ds = input_pipeline.create_dataset(cfg, 128, seed=0)
  assert (ds.num_classes, ds.image_shape) == (10, (32, 32, 3))
  assert (ds.num_train, ds.num_eval, ds.steps_per_epoch) == (1437, 360, 11)
  batches = list(ds.train_batches(0))
  assert len(batches) == 11
  for batch in batches:
    assert batch['image'].shape == (128, 32, 32, 3)
    assert batch['image'].dtype == jnp.float32
    assert batch['label'].shape == (128,) and batch['label'].dtype == np.int32
  images, labels = _collect(batches, 'image', 'label')
  low = (0 - np.array(augment.DIGITS_NORM.mean)) / augment.DIGITS_NORM.std
  high = (1 - np.array(augment.DIGITS_NORM.mean)) / augment.DIGITS_NORM.std
  assert images.min() >= low.min() - 1e-5 and images.max() <= high.max() + 1e-5
  assert set(labels.tolist()) == set(range(10))


@pytest.mark.parametrize('input_path', ['device', 'stream'])
def test_eval_covers_split_once_with_labels(digits_dir, input_path):
  cfg = make_cfg(data_dir=digits_dir, input=input_path)
  ds = input_pipeline.create_dataset(cfg, 64, seed=0, eval_batch_size=100)
  batches = list(ds.eval_batches())
  assert len(batches) == 4 and ds.eval_steps == 4  # 360 = 3 * 100 + 60.
  images, labels, masks = _collect(batches, 'image', 'label', 'mask')
  assert images.shape == (400, 32, 32, 3) and masks.dtype == np.float32
  assert masks.sum() == 360 and (masks[:360] == 1).all()
  pixels = _denormalize(images[:360], augment.DIGITS_NORM)[:, ::4, ::4, 0]
  raw = sk_datasets.load_digits()
  want = np.round(raw.images[::5] * 255 / 16).astype(np.int32)
  index = {w.tobytes(): i for i, w in enumerate(want)}
  found = [index[p.tobytes()] for p in pixels]
  assert sorted(found) == list(range(360))  # Every example exactly once.
  np.testing.assert_array_equal(labels[:360], raw.target[::5][found])


@pytest.mark.parametrize('input_path', ['device', 'stream'])
def test_resume_gives_identical_batches(digits_dir, input_path):
  cfg = make_cfg(data_dir=digits_dir, input=input_path)
  first = input_pipeline.create_dataset(cfg, 128, seed=3)
  second = input_pipeline.create_dataset(cfg, 128, seed=3)
  a = _collect(first.train_batches(2), 'image', 'label')
  b = _collect(second.train_batches(2), 'image', 'label')
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  tail = _collect(second.train_batches(2, start_step=7), 'image', 'label')
  for x, y in zip(a, tail):
    np.testing.assert_array_equal(x[7 * 128:], y)
  other_epoch = _collect(first.train_batches(3), 'label')[0]
  other_seed = _collect(input_pipeline.create_dataset(
      cfg, 128, seed=4).train_batches(2), 'label')[0]
  assert (other_epoch != a[1]).any() and (other_seed != a[1]).any()


def test_device_path_compiles_once_and_shards(digits_dir):
  mesh = jax.make_mesh((4,), ('batch',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh,
                                        jax.sharding.PartitionSpec('batch'))
  ds = input_pipeline.create_dataset(make_cfg(data_dir=digits_dir), 64, 0,
                                     sharding=sharding,
                                     image_dtype=jnp.bfloat16)
  for epoch in range(2):
    for batch in ds.train_batches(epoch):
      assert batch['image'].sharding == sharding
      assert batch['image'].dtype == jnp.bfloat16
  for batch in ds.eval_batches():
    assert batch['mask'].sharding == sharding
  # pylint: disable=protected-access
  assert ds._train_fn._cache_size() == 1
  assert ds._epoch_fn._cache_size() == 1
  assert ds._eval_fn._cache_size() == 1
  with pytest.raises(ValueError, match='multiple of 4'):
    input_pipeline.create_dataset(make_cfg(data_dir=digits_dir), 66, 0,
                                  sharding=sharding)


def test_subset_rule_matches_reference():
  for n, p in ((50_000, 0.1), (1437, 0.4), (10, 0.55)):
    state = np.random.get_state()
    try:  # The reference's global-RNG code, on a list.
      np.random.seed(230)
      indices = list(range(n))
      np.random.shuffle(indices)
    finally:
      np.random.set_state(state)
    np.testing.assert_array_equal(input_pipeline.subset_indices(n, p),
                                  indices[:int(p * n)])
  np.testing.assert_array_equal(input_pipeline.subset_indices(7, 1.0),
                                np.arange(7))
  with pytest.raises(ValueError, match='subset_percent'):
    input_pipeline.subset_indices(7, 0.0)


def test_subset_same_records_in_both_paths(digits_dir):
  # int(0.4 * 1437) = 574 = 14 * 41: an epoch sees the whole subset.
  cfg = make_cfg(data_dir=digits_dir, subset_percent=0.4, augment='none')
  source = prepare.load_prepared('digits', data_dir=digits_dir)
  want, _ = input_pipeline.read_split(
      source.as_data_source('train'), input_pipeline.subset_indices(1437, 0.4))
  want = sorted(x.tobytes() for x in want)
  for input_path in input_pipeline.INPUTS:
    ds = input_pipeline.create_dataset(cfg, 41, 0, input=input_path)
    assert (ds.num_train, ds.steps_per_epoch) == (574, 14)
    images = _collect(ds.train_batches(0), 'image')[0]
    pixels = _denormalize(images, augment.DIGITS_NORM).astype(np.uint8)
    assert sorted(x.tobytes() for x in pixels) == want


def test_no_tensorflow_when_reading(digits_dir):
  code = (
      'import sys\n'
      'from nasty_jax import data\n'
      'import ml_collections\n'
      f'cfg = ml_collections.ConfigDict(dict(name="digits", '
      f'data_dir={digits_dir!r}, input="stream"))\n'
      'ds = data.create_dataset(cfg, 32, 0)\n'
      'next(ds.train_batches(0)); next(ds.eval_batches())\n'
      'assert "tensorflow" not in sys.modules, "TF was imported"\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-c', code], check=True, env=env,
                 cwd=root, capture_output=True)


def test_tfrecord_copy_gives_clear_error(tmp_path):
  builder = digits.Digits(data_dir=str(tmp_path), file_format='tfrecord')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  with pytest.raises(FileNotFoundError, match='format other than array_rec'):
    input_pipeline.create_dataset(make_cfg(data_dir=str(tmp_path)), 32, 0)


def test_prepare_cli_prints_folder(digits_dir, capsys):
  prepare.main(['digits', '--data_dir', digits_dir])
  out = capsys.readouterr().out.strip()
  assert out == os.path.join(digits_dir, 'digits', '1.0.0')
  assert os.path.isfile(os.path.join(out, 'dataset_info.json'))


# --------------------------------------- stream sharding and distributions --


def _id_source(n, size=8):
  """Records whose label is their index; constant images."""
  return [{'image': np.full((size, size, 3), 9, np.uint8), 'label': i}
          for i in range(n)]


def _stream(source, batch_size, **kwargs):
  defaults = dict(num_classes=len(source), image_shape=(8, 8, 3),
                  global_batch_size=batch_size, eval_batch_size=batch_size,
                  seed=0, policy=augment.get_policy('none'),
                  norm=augment.CIFAR10_NORM, num_threads=2)
  defaults.update(kwargs)
  return input_pipeline.StreamPipeline(
      source, np.arange(len(source)), source, **defaults)


def test_stream_processes_get_disjoint_rows_of_each_global_batch():
  source = _id_source(100)
  single = _collect(_stream(source, 24).train_batches(1), 'label')[0]
  parts = [_stream(source, 24, process_index=p, process_count=3)
           for p in range(3)]
  labels = [_collect(p.train_batches(1), 'label')[0] for p in parts]
  assert all(len(x) == 4 * 8 for x in labels)  # 4 steps of 24 / 3 rows.
  for step in range(4):
    rows = [x[step * 8:(step + 1) * 8] for x in labels]
    union = np.concatenate(rows)
    assert len(set(union.tolist())) == 24  # Disjoint.
    assert sorted(union) == sorted(single[step * 24:(step + 1) * 24])
  evals = [_collect(p.eval_batches(), 'label', 'mask') for p in parts]
  real = np.concatenate([lab[m == 1] for lab, m in evals])
  assert sorted(real.tolist()) == list(range(100))


def _coordinate_images(n, size):
  """Images whose pixels name their own (row, col); blue marks real pixels."""
  image = np.zeros((size, size, 3), np.uint8)
  image[..., 0] = np.arange(size)[:, None] * 4
  image[..., 1] = np.arange(size)[None, :] * 4
  image[..., 2] = 255
  return np.repeat(image[None], n, 0)


def _pixel_maps(images, norm):
  """Source (row, col) and validity of each output pixel."""
  x = _denormalize(images, norm)
  return x[..., 0] // 4, x[..., 1] // 4, x[..., 2] > 127


def _crop_flip_draws(images, norm):
  """(dy, dx, flip) recovered from each 32x32 crop_flip output."""
  rows, cols, valid = _pixel_maps(images, norm)
  draws = []
  for r, c, v in zip(rows, cols, valid):
    i, j = np.argwhere(v)[0]  # Top-left corner of the real pixels.
    flip = c[i, j] > c[i, j + 1]
    unflipped = 31 - j if flip else j
    draws.append((r[i, j] - i + 4, c[i, j] - unflipped + 4, flip))
  return np.array(draws)


def _rotation_draws(images, norm, size):
  """(flip, angle in degrees) recovered from each rotated image."""
  rows, cols, valid = _pixel_maps(images, norm)
  centre = size / 2 - 0.5
  out_r, out_c = np.mgrid[:size, :size] - centre
  draws = []
  for r, c, v in zip(rows, cols, valid):
    flip = np.corrcoef(out_c[v], c[v])[0, 1] < 0
    oc = -out_c if flip else out_c
    sr, sc = r[v] - centre, c[v] - centre
    # Pillow maps output offsets (x, y) to source offsets
    # (cos t x + sin t y, -sin t x + cos t y) with t = -angle: fit t.
    cross = np.sum(out_r[v] * sc - oc[v] * sr)
    dot = np.sum(oc[v] * sc + out_r[v] * sr)
    draws.append((flip, -np.degrees(np.arctan2(cross, dot))))
  return np.array(draws)


def _both_paths(images, policy, batch_size, epochs):
  """Training images of both paths over `epochs` epochs."""
  labels = np.zeros(len(images), np.int32)
  kwargs = dict(num_classes=1, global_batch_size=batch_size,
                eval_batch_size=batch_size, seed=0, policy=policy,
                norm=augment.CIFAR10_NORM)
  device = device_pipeline.DevicePipeline((images, labels), (images, labels),
                                          **kwargs)
  source = [{'image': x, 'label': 0} for x in images]
  stream = input_pipeline.StreamPipeline(
      source, np.arange(len(images)), source, image_shape=images.shape[1:],
      num_threads=2, **kwargs)
  return [np.concatenate([_collect(p.train_batches(e), 'image')[0]
                          for e in range(epochs)]) for p in (device, stream)]


def test_crop_flip_same_distribution_in_both_paths():
  """3,072 draws per path; tolerances are > 4 standard deviations."""
  images = _coordinate_images(512, 32)
  for out in _both_paths(images, augment.get_policy('crop_flip'), 256, 6):
    draws = _crop_flip_draws(out, augment.CIFAR10_NORM)
    for axis in range(2):
      freq = np.bincount(draws[:, axis], minlength=9) / len(draws)
      assert len(freq) == 9 and np.abs(freq - 1 / 9).max() < 0.025
    assert abs(draws[:, 2].mean() - 0.5) < 0.04


def test_rotation_same_distribution_in_both_paths():
  """1,024 draws per path; angles recovered to well under a degree."""
  images = _coordinate_images(256, 64)
  norm = augment.CIFAR10_NORM
  policy = augment.get_policy('rotate_flip')
  outs = _both_paths(images, policy, 128, 4)
  for out in outs:
    draws = _rotation_draws(out, norm, 64)
    assert abs(draws[:, 0].mean() - 0.5) < 0.07
    angles = draws[:, 1]
    assert angles.min() > -20.5 and angles.max() < 20.5
    freq = np.histogram(angles, np.linspace(-20, 20, 5))[0] / len(angles)
    assert np.abs(freq - 0.25).max() < 0.06
  # Each image is the numpy rotation of its source by some angle near the
  # recovered one (a grid search: the fit is good to ~0.1 degree).
  for out in outs:
    for k in range(2):
      flip, angle = _rotation_draws(out[k:k + 1], norm, 64)[0]
      got = _denormalize(out[k], norm).astype(np.uint8)
      best = max(
          (got == augment.apply(np, images[:1], np.zeros(1, int), policy,
                                augment.Params(np.zeros((1, 2), int),
                                               np.array([flip]),
                                               np.array([a])))[0]).all(-1)
          .mean()
          for a in angle + np.linspace(-0.3, 0.3, 301))
      assert best > 0.995


# ------------------------------------------------------------ CIFAR (mock) --


@pytest.mark.parametrize('name,classes', [('cifar10', 10), ('cifar100', 100)])
@pytest.mark.parametrize('input_path', ['device', 'stream'])
def test_cifar_pipelines_on_mock_data(name, classes, input_path):
  with tfds_mock.mock_tfds(96):
    ds = input_pipeline.create_dataset(make_cfg(name, input=input_path), 32, 0)
    assert (ds.num_classes, ds.image_shape) == (classes, (32, 32, 3))
    assert (ds.num_train, ds.steps_per_epoch) == (96, 3)
    batches = list(ds.train_batches(0))
    evals = list(ds.eval_batches())
  assert len(batches) == 3 and len(evals) == 3
  images, labels = _collect(batches, 'image', 'label')
  assert images.shape == (96, 32, 32, 3) and images.dtype == np.float32
  assert labels.min() >= 0 and labels.max() < classes
  norm = augment.CIFAR10_NORM
  assert images.min() >= ((0 - np.array(norm.mean)) / norm.std).min() - 1e-5
  assert images.max() <= ((1 - np.array(norm.mean)) / norm.std).max() + 1e-5
  assert sum(float(np.asarray(e['mask']).sum()) for e in evals) == 96


def test_unprepared_cifar_fails_fast_with_instructions(tmp_path):
  start = time.time()
  with pytest.raises(FileNotFoundError) as error:
    input_pipeline.create_dataset(
        make_cfg('cifar10', data_dir=str(tmp_path)), 128, 0)
  # A download attempt would retry for minutes; reading the metadata of an
  # empty data dir takes well under a second.
  assert time.time() - start < 10
  message = str(error.value)
  assert 'python -m nasty_jax.data.prepare cifar10' in message
  assert 'cifar-10-binary.tar.gz' in message
  with pytest.raises(FileNotFoundError, match='cifar-100-binary.tar.gz'):
    prepare.prepare('cifar100', data_dir=str(tmp_path))
  assert time.time() - start < 10
  assert not os.path.exists(tmp_path / 'downloads')  # No download started.


def _fake_cifar_archive(path, per_file=3):
  """A cifar-10-binary.tar.gz laid out like the real one, with few images."""
  import io  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  names = [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin']
  os.makedirs(os.path.dirname(path), exist_ok=True)
  records = {}
  with tarfile.open(path, 'w:gz') as tar:
    def add(name, payload):
      info = tarfile.TarInfo('cifar-10-batches-bin/' + name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
    add('batches.meta.txt', '\n'.join(
        ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
         'horse', 'ship', 'truck']).encode() + b'\n')
    for name in names:
      rows = np.concatenate([rng.integers(0, 10, (per_file, 1)),
                             rng.integers(0, 256, (per_file, 3072))], 1)
      records[name] = rows.astype(np.uint8)
      add(name, records[name].tobytes())
  return records


def test_cifar_offline_procedure(tmp_path):
  """The documented procedure: archive in <data_dir>/downloads/manual."""
  archive = tmp_path / 'downloads' / 'manual' / 'cifar-10-binary.tar.gz'
  records = _fake_cifar_archive(str(archive))
  # Only the registered checksum is faked (the real archive is 162 MiB).
  with open(archive, 'rb') as f:
    info = tfds.core.download.checksums.UrlInfo(
        size=os.path.getsize(archive),
        checksum=hashlib.sha256(f.read()).hexdigest(),
        filename='cifar-10-binary.tar.gz')
  url = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'
  with mock.patch.object(tfds.builder_cls('cifar10'), 'url_infos',
                         {url: info}):
    path = prepare.prepare('cifar10', data_dir=str(tmp_path))
  assert path == str(tmp_path / 'cifar10' / '3.0.2')
  test = records['test_batch.bin']
  ds = input_pipeline.create_dataset(
      make_cfg('cifar10', data_dir=str(tmp_path)), 3, 0, eval_batch_size=3)
  assert (ds.num_train, ds.num_eval) == (15, 3)
  got = _collect(ds.eval_batches(), 'image', 'label')
  pixels = _denormalize(got[0], augment.CIFAR10_NORM)
  want = test[:, 1:].reshape(3, 3, 32, 32).transpose(0, 2, 3, 1)
  order = [int(np.argmin(np.abs(want - p).sum((1, 2, 3)))) for p in pixels]
  assert sorted(order) == [0, 1, 2]
  np.testing.assert_array_equal(pixels, want[order])
  np.testing.assert_array_equal(got[1], test[order, 0])


# ------------------------------------------------------ Tiny-ImageNet fake --


def _records(builder, split):
  source = builder.as_data_source(split)
  return {r['file_name'].decode(): r for r in source}


def test_tiny_imagenet_from_folder_and_zip(tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / 'raw' / 'tiny-imagenet-200')
  fake_data.make_tiny_imagenet(root, np.random.default_rng(0))
  archive = shutil.make_archive(str(tmp_path / 'zip' / 'tiny-imagenet-200'),
                                'zip', str(tmp_path / 'raw'))
  by_source = []
  # The folder's parent, and the zip itself.
  for i, manual in enumerate((str(tmp_path / 'raw'), archive)):
    data_dir = str(tmp_path / f'tfds{i}')
    prepare.prepare('tiny_imagenet', data_dir=data_dir, manual_dir=manual)
    builder = prepare.load_prepared('tiny_imagenet', data_dir=data_dir)
    assert builder.info.features['label'].names == sorted(fake_data.WNIDS)
    by_source.append((_records(builder, 'train'),
                      _records(builder, 'validation')))
  for records in by_source:
    train, val = records
    assert len(train) == 12 and len(val) == 6
    for name, r in train.items():
      assert r['label'] == sorted(fake_data.WNIDS).index(name.split('/')[1])
      want = np.asarray(Image.open(os.path.join(root, name)).convert('RGB'))
      np.testing.assert_array_equal(r['image'], want)
    for i in range(6):
      r = val[f'val/images/val_{i}.JPEG']
      assert r['label'] == sorted(fake_data.WNIDS).index(fake_data.WNIDS[i % 3])
      assert r['image'].shape == (64, 64, 3)
  cfg = make_cfg('tiny_imagenet', data_dir=str(tmp_path / 'tfds0'),
                 num_classes=3)
  for input_path in input_pipeline.INPUTS:
    ds = input_pipeline.create_dataset(cfg, 4, 0, input=input_path)
    assert (ds.num_classes, ds.image_shape) == (3, (64, 64, 3))
    assert (ds.num_train, ds.num_eval, ds.steps_per_epoch) == (12, 6, 3)
    batch = next(iter(ds.train_batches(0)))
    assert batch['image'].shape == (4, 64, 64, 3)
    masks = _collect(ds.eval_batches(), 'mask')[0]
    assert masks.tolist() == [1] * 6 + [0] * 2


def test_tiny_imagenet_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='tiny-imagenet-200.zip'):
    prepare.prepare('tiny_imagenet', data_dir=str(tmp_path / 'tfds'),
                    manual_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError,
                     match='nasty_jax.data.prepare tiny_imagenet'):
    input_pipeline.create_dataset(
        make_cfg('tiny_imagenet', data_dir=str(tmp_path / 'tfds')), 4, 0)
  with pytest.raises(ValueError, match='3 classes'):
    root = str(tmp_path / 'raw')
    fake_data.make_tiny_imagenet(root, np.random.default_rng(1))
    input_pipeline.create_dataset(
        make_cfg('tiny_imagenet', data_dir=str(tmp_path / 'tfds'),
                 manual_dir=root, num_classes=200), 4, 0)


# ------------------------------------------------------------ image folder --


def test_image_folder_records_and_pipelines(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / 'pets')
  fake_data.make_image_folder(root, np.random.default_rng(0))
  data_dir = str(tmp_path / 'tfds')
  path = prepare.prepare('image_folder', data_dir=data_dir, manual_dir=root,
                         image_size=32)
  assert os.path.basename(os.path.dirname(path)).startswith('pets_')
  builder = prepare.load_prepared('image_folder', data_dir=data_dir,
                                  manual_dir=root, image_size=32)
  assert builder.info.features['label'].names == ['cat', 'dog']
  train = _records(builder, 'train')
  assert sorted(train) == sorted(
      f'train/{c}/{i}.{"png" if i == 1 else "jpg"}'
      for c in ('cat', 'dog') for i in range(3))
  for name, r in train.items():
    assert r['label'] == ['cat', 'dog'].index(name.split('/')[1])
    want = np.asarray(Image.open(os.path.join(root, name)).convert('RGB'))
    np.testing.assert_array_equal(r['image'], want)
  # RGB JPEGs are stored byte for byte, not re-encoded.
  raw = builder.as_data_source(
      'train', decoders={'image': tfds.decode.SkipDecoding()})
  stored = {r['file_name'].decode(): r['image'] for r in raw}
  with open(os.path.join(root, 'train/dog/0.jpg'), 'rb') as f:
    assert stored['train/dog/0.jpg'] == f.read()
  cfg = make_cfg('image_folder', data_dir=data_dir, manual_dir=root,
                 image_size=32, num_classes=2, mean=(0.5, 0.5, 0.5),
                 std=(0.25, 0.25, 0.25))
  for input_path in input_pipeline.INPUTS:
    ds = input_pipeline.create_dataset(cfg, 2, 0, input=input_path,
                                       eval_batch_size=3)
    assert (ds.num_train, ds.num_eval, ds.steps_per_epoch) == (6, 4, 3)
    images = _collect(ds.eval_batches(), 'image')[0]
    assert images.min() >= -2 - 1e-6 and images.max() <= 2 + 1e-6
    assert np.isclose(images.min(), -2, atol=0.05)


def test_image_folder_config_per_root(tmp_path):
  a = builders.image_folder.folder_config(str(tmp_path / 'x' / 'data'), 32)
  b = builders.image_folder.folder_config(str(tmp_path / 'y' / 'data'), 32)
  assert a.name != b.name and a.name.startswith('data_')
  assert a.name == builders.image_folder.folder_config(
      str(tmp_path / 'x' / '.' / 'data'), 32).name


def test_image_folder_errors(tmp_path):
  rng = np.random.default_rng(0)
  data_dir = str(tmp_path / 'tfds')

  def build(root, size=32):
    prepare.prepare('image_folder', data_dir=data_dir, manual_dir=root,
                    image_size=size)

  fake_data.make_image_folder(str(tmp_path / 'a'), rng)
  with pytest.raises(ValueError, match=r'train/cat/0.jpg is 32x32.*64x64'):
    build(str(tmp_path / 'a'), 64)
  fake_data.make_image_folder(str(tmp_path / 'b'), rng)
  os.makedirs(tmp_path / 'b' / 'train' / 'bird')
  fake_data.write_image(str(tmp_path / 'b' / 'train' / 'bird' / '0.png'), rng, 32)
  with pytest.raises(ValueError, match=r"only in train/: \['bird'\]"):
    build(str(tmp_path / 'b'))
  os.makedirs(tmp_path / 'c' / 'train' / 'cat')
  os.makedirs(tmp_path / 'c' / 'test' / 'cat')
  with pytest.raises(FileNotFoundError, match='holds no images'):
    build(str(tmp_path / 'c'))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    build(str(tmp_path / 'missing'))
  with pytest.raises(ValueError, match='manual_dir must name'):
    input_pipeline.create_dataset(make_cfg('image_folder', image_size=32),
                                  2, 0)
  # Failed builds wrote nothing that a later good build would trip over.
  build(str(tmp_path / 'a'))


def test_bad_names_list_the_valid_choices(digits_dir):
  with pytest.raises(ValueError, match='digits, cifar10, cifar100'):
    input_pipeline.create_dataset(make_cfg('mnist'), 32, 0)
  with pytest.raises(ValueError, match='device, stream'):
    input_pipeline.create_dataset(make_cfg(data_dir=digits_dir), 32, 0,
                                  input='disk')
  with pytest.raises(ValueError, match='rotate_flip'):
    input_pipeline.create_dataset(
        make_cfg(data_dir=digits_dir, augment='cutout'), 32, 0)
  with pytest.raises(ValueError, match='exceeds the 1437'):
    input_pipeline.create_dataset(make_cfg(data_dir=digits_dir), 2048, 0)
  with pytest.raises(SystemExit):
    prepare.main(['mnist'])
