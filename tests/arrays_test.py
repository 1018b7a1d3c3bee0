"""The `arrays` dataset (nasty_jax.data.arrays): arrays .npz, JPEG packs and
image folders read without TFDS, through the same device pipeline."""

import io
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from nasty_jax.data import arrays
from nasty_jax.data import augment
from nasty_jax.data import device_pipeline
from nasty_jax.data import input_pipeline
import fake_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _splits(rng, size=8, classes=3):
  def split(n):
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            rng.integers(0, classes, n))
  return split(24), split(10)


def _cfg(path, **overrides):
  cfg = ml_collections.ConfigDict(dict(
      name='arrays', data_dir=None, manual_dir=path, image_size=None,
      num_classes=None, subset_percent=1.0, augment='default', mean=None,
      std=None, input='device'))
  cfg.update(overrides)
  return cfg


def _jpeg(image):
  out = io.BytesIO()
  Image.fromarray(image).save(out, format='JPEG', quality=75)
  return out.getvalue()


def _write_pack(path, train, test, classes):
  """A JPEG pack: the files' common prefix once, each file's rest apart."""
  files = {s: [_jpeg(x) for x in images]
           for s, (images, _) in zip(arrays.SPLITS, (train, test))}
  header = os.path.commonprefix([f for s in files for f in files[s]])
  pack = {'jpeg_header': np.frombuffer(header, np.uint8),
          'classes': np.asarray(classes)}
  for split, (_, labels) in zip(arrays.SPLITS, (train, test)):
    tails = [f[len(header):] for f in files[split]]
    pack[f'{split}_scans'] = np.frombuffer(b''.join(tails), np.uint8)
    pack[f'{split}_offsets'] = np.cumsum([0] + [len(t) for t in tails])
    pack[f'{split}_labels'] = labels
  np.savez(path, **pack)
  return files


def test_arrays_file_round_trip_and_same_batches_as_device_pipeline(
    tmp_path):
  train, test = _splits(np.random.default_rng(0))
  path = str(tmp_path / 'data.npz')
  arrays.save(path, arrays.Splits(train, test, ('a', 'b', 'c')))
  ds = input_pipeline.create_dataset(_cfg(path), 8, seed=3)
  assert isinstance(ds, device_pipeline.DevicePipeline)
  assert (ds.num_classes, ds.steps_per_epoch, ds.eval_steps) == (3, 3, 2)
  # The same data, pipeline, policy (crop_flip at 8 px) and normalisation
  # (CIFAR-10's) as building the pipeline by hand.
  want = device_pipeline.DevicePipeline(
      train, test, num_classes=3, global_batch_size=8, eval_batch_size=8,
      seed=3, policy=augment.get_policy('crop_flip'),
      norm=augment.CIFAR10_NORM)
  for got, ref in zip(ds.train_batches(1), want.train_batches(1)):
    np.testing.assert_array_equal(got['image'], ref['image'])
    np.testing.assert_array_equal(got['label'], ref['label'])
  for got, ref in zip(ds.eval_batches(), want.eval_batches()):
    np.testing.assert_array_equal(got['mask'], ref['mask'])


def test_jpeg_pack_decodes_to_what_pil_decodes(tmp_path):
  train, test = _splits(np.random.default_rng(1))
  path = str(tmp_path / 'pack.npz')
  files = _write_pack(path, train, test, ['a', 'b', 'c'])
  splits = arrays.load(path)
  assert splits.classes == ('a', 'b', 'c') and splits.image_size == 8
  for split, (images, labels) in zip(arrays.SPLITS, splits[:2]):
    want = [np.asarray(Image.open(io.BytesIO(f)).convert('RGB'))
            for f in files[split]]
    np.testing.assert_array_equal(images, np.stack(want))
    assert labels.dtype == np.int32
  np.testing.assert_array_equal(splits.test[1], test[1])


def test_image_folder_as_the_image_folder_dataset_lists_it(tmp_path):
  fake_data.make_image_folder(str(tmp_path), np.random.default_rng(2),
                              size=8)
  splits = arrays.load(str(tmp_path))
  assert splits.classes == ('cat', 'dog')  # Sorted folder names.
  assert len(splits.train[1]) == 6 and len(splits.test[1]) == 4
  np.testing.assert_array_equal(splits.train[1], [0, 0, 0, 1, 1, 1])
  # A PNG decodes exactly; the grey cat/2.jpg became RGB.
  png = np.asarray(Image.open(tmp_path / 'train/dog/1.png').convert('RGB'))
  np.testing.assert_array_equal(splits.train[0][4], png)


def test_decode_command_writes_an_arrays_file(tmp_path, capsys):
  train, test = _splits(np.random.default_rng(3))
  _write_pack(str(tmp_path / 'pack.npz'), train, test, ['a', 'b', 'c'])
  arrays.main([str(tmp_path / 'pack.npz'), str(tmp_path / 'out.npz')])
  assert 'train 24, test 10 images of 8x8, 3 classes' in (
      capsys.readouterr().out)
  again = arrays.load(str(tmp_path / 'out.npz'))
  np.testing.assert_array_equal(
      again.train[0], arrays.load(str(tmp_path / 'pack.npz')).train[0])


@pytest.mark.parametrize('arrays_kw, match', [
    (dict(x_train=np.zeros((4, 8, 8, 3), np.float32)), 'expected uint8'),
    (dict(y_train=np.zeros((3,), np.int64)), 'one integer label per image'),
    (dict(y_test=np.full((2,), 7)), r'labels span 7\.\.7, outside the 3'),
    (dict(x_test=np.zeros((2, 4, 4, 3), np.uint8)), 'train images are'),
])
def test_bad_arrays_are_one_clear_error(tmp_path, arrays_kw, match):
  good = dict(x_train=np.zeros((4, 8, 8, 3), np.uint8),
              y_train=np.arange(4) % 3, x_test=np.zeros((2, 8, 8, 3),
                                                        np.uint8),
              y_test=np.arange(2), classes=np.asarray(['a', 'b', 'c']))
  np.savez(tmp_path / 'bad.npz', **{**good, **arrays_kw})
  with pytest.raises(ValueError, match=match) as e:
    arrays.load(str(tmp_path / 'bad.npz'))
  assert '\n' not in str(e.value)


def test_bad_paths_and_config_are_clear_errors(tmp_path, capsys):
  with pytest.raises(FileNotFoundError, match='No arrays dataset at'):
    arrays.load(str(tmp_path / 'missing.npz'))
  with pytest.raises(ValueError, match='dataset.manual_dir must name'):
    input_pipeline.create_dataset(_cfg(None), 8, 0)
  np.savez(tmp_path / 'other.npz', weights=np.zeros(3))
  with pytest.raises(ValueError, match='holds neither .* it has weights'):
    arrays.load(str(tmp_path / 'other.npz'))
  (tmp_path / 'text.npz').write_text('not an npz')
  with pytest.raises(ValueError, match='not a readable .npz'):
    arrays.load(str(tmp_path / 'text.npz'))
  train, test = _splits(np.random.default_rng(4))
  path = str(tmp_path / 'data.npz')
  arrays.save(path, arrays.Splits(train, test, ('a', 'b', 'c')))
  with pytest.raises(ValueError, match=r'holds 8x8 images; dataset.image_s'):
    input_pipeline.create_dataset(_cfg(path, image_size=32), 8, 0)
  with pytest.raises(ValueError, match='has 3 classes but dataset.num_cl'):
    input_pipeline.create_dataset(_cfg(path, num_classes=10), 8, 0)
  with pytest.raises(SystemExit) as e:
    arrays.main([str(tmp_path / 'other.npz'), str(tmp_path / 'o.npz')])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1


def test_device_path_runs_without_tensorflow_tfds_or_grain(tmp_path):
  """The GPU machine's package set: none of the three can be imported."""
  train, test = _splits(np.random.default_rng(5))
  path = str(tmp_path / 'data.npz')
  arrays.save(path, arrays.Splits(train, test, ('a', 'b', 'c')))
  code = (
      'import importlib.abc, sys\n'
      'class Block(importlib.abc.MetaPathFinder):\n'
      '  def find_spec(self, name, path=None, target=None):\n'
      '    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets",\n'
      '                              "grain"):\n'
      '      raise ImportError(f"{name} is blocked")\n'
      'sys.meta_path.insert(0, Block())\n'
      'import ml_collections\n'
      'from nasty_jax import data, engine\n'
      f'cfg = ml_collections.ConfigDict(dict(name="arrays", '
      f'manual_dir={path!r}, input="device"))\n'
      'ds = data.create_dataset(cfg, 8, 0)\n'
      'next(ds.train_batches(0)); next(ds.eval_batches())\n'
      f'writer = engine.create_writer({str(tmp_path / "stage")!r})\n'
      'writer.write_scalars(1, {"train/loss": 0.5}); writer.close()\n'
      'print(type(writer).__name__)\n')
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], check=True, env=env,
                       cwd=ROOT, capture_output=True, text=True)
  assert out.stdout.strip() == 'EventWriter'
  assert os.listdir(tmp_path / 'stage')
