"""Tests for nasty_jax.torch_io: real torch.save files, read without torch.

The two fixture files were written by torch itself
(docs/reference.md#optimisers-and-schedules layout, zip and
legacy formats). The synthetic files below are written opcode by opcode in
the shapes torch emits (compare `pickletools.dis` of a fixture's data.pkl),
to reach dtypes, strides and byte orders the fixtures do not use.
"""

import pickle
import struct
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from nasty_jax import torch_io
from tests import reference_weights

FIXTURES = reference_weights.FIXTURES
ZIP_FILE = FIXTURES / 'preresnet20_zipformat.tar'
LEGACY_FILE = FIXTURES / 'preresnet20_legacyformat_dataparallel.tar'
BOTH_FILES = pytest.mark.parametrize('path', [ZIP_FILE, LEGACY_FILE],
                                     ids=['zip', 'legacy'])
_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


def _fixture_keys_and_shapes():
  lines = (FIXTURES / 'keys' / 'preresnet20.txt').read_text().splitlines()
  keys, shapes = zip(*(line.split() for line in lines if line.strip()))
  return list(keys), list(shapes)


# --- Pickle opcodes, protocol 2, as torch.save writes them. ---


def _value(value) -> bytes:
  """Opcodes pushing a str/int/bool/tuple: pickle's own, minus PROTO/STOP."""
  return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
  return f'c{module}\n{name}\n'.encode()


def _call(func: bytes, *args: bytes) -> bytes:
  return func + b'(' + b''.join(args) + b'tR'


def _dict(items: dict[str, bytes]) -> bytes:
  return b'}(' + b''.join(_value(k) + v for k, v in items.items()) + b'u'


def _pickle(body: bytes) -> bytes:
  return b'\x80\x02' + body + b'.'


def _storage(storage_class, key, numel, view=False, module='torch') -> bytes:
  """A BINPERSID storage id; `view` adds the legacy 6th element."""
  fields = [_value('storage'), _global(module, storage_class), _value(key),
            _value('cpu'), _value(numel)]
  if view is not False:
    fields.append(b'N' if view is None else _value(view))
  return b'(' + b''.join(fields) + b'tQ'


def _tensor(storage: bytes, offset, size, stride, *extra: bytes,
            rebuild='_rebuild_tensor_v2') -> bytes:
  return _call(_global('torch._utils', rebuild), storage, _value(offset),
               _value(tuple(size)), _value(tuple(stride)), _value(False),
               _call(_global('collections', 'OrderedDict')), *extra)


def _write_zip(path, data_pkl: bytes, storages: dict[str, bytes],
               byteorder: str | None = 'little'):
  with zipfile.ZipFile(path, 'w') as archive:  # Stored, as torch writes it.
    archive.writestr('archive/data.pkl', data_pkl)
    if byteorder is not None:
      archive.writestr('archive/byteorder', byteorder)
    for key, data in storages.items():
      archive.writestr(f'archive/data/{key}', data)
  return path


def _write_legacy(path, data_pkl: bytes, storages: dict[str, np.ndarray]):
  """Legacy stream; storages are written in the order of `storages`."""
  sys_info = {'protocol_version': 1001, 'little_endian': True,
              'type_sizes': {'short': 2, 'int': 4, 'long': 8}}
  with open(path, 'wb') as file:
    for header in (0x1950a86a20f9469cfc6c, 1001, sys_info):
      file.write(pickle.dumps(header, protocol=2))
    file.write(data_pkl)
    file.write(pickle.dumps(list(storages), protocol=2))
    for values in storages.values():
      little = values.astype(values.dtype.newbyteorder('<'))
      file.write(struct.pack('<q', values.size) + little.tobytes())
  return path


# --- The real fixture files. ---


@BOTH_FILES
def test_state_dict_equals_fixture_rule(path):
  keys, shapes = _fixture_keys_and_shapes()
  expected = reference_weights.rule_state_dict(keys, shapes)
  state_dict, meta = torch_io.load_torch_checkpoint(path, with_meta=True)
  assert list(state_dict) == keys
  assert meta == {'epoch': 3}
  for key, want in expected.items():
    got = state_dict[key]
    assert (got.dtype, got.shape) == (want.dtype, want.shape), key
    np.testing.assert_array_equal(got, want, err_msg=key)
    assert got.flags.c_contiguous


def test_legacy_file_keys_carry_data_parallel_prefix():
  raw = torch_io.load_torch_file(LEGACY_FILE)['state_dict']
  keys, _ = _fixture_keys_and_shapes()
  assert list(raw) == ['module.' + k for k in keys]
  assert list(torch_io.load_torch_checkpoint(LEGACY_FILE)) == keys


def test_optimizer_state_is_sgd_momentum_and_same_in_both_formats():
  keys, shapes = _fixture_keys_and_shapes()
  params = [(k, reference_weights.parse_shape(s)) for k, s in zip(keys, shapes)
            if not k.endswith(_BUFFERS)]
  optims = [torch_io.load_torch_file(p)['optim_dict']
            for p in (ZIP_FILE, LEGACY_FILE)]
  for optim in optims:
    (group,) = optim['param_groups']
    assert group['params'] == list(range(len(params)))
    assert (group['lr'], group['momentum'], group['weight_decay']) == (
        0.1, 0.9, 5e-4)
    assert sorted(optim['state']) == group['params']
    for i, (key, shape) in enumerate(params):
      buf = optim['state'][i]['momentum_buffer']
      assert (buf.dtype, buf.shape) == (np.float32, shape), key
      assert np.all(np.isfinite(buf)) and np.any(buf != 0), key
  for i in range(len(params)):
    np.testing.assert_array_equal(optims[0]['state'][i]['momentum_buffer'],
                                  optims[1]['state'][i]['momentum_buffer'])


# --- Synthetic files: dtypes, strides, views, byte order. ---


def test_strides_offsets_and_shared_storage(tmp_path):
  storage = np.arange(24, dtype=np.float32)
  pid = _storage('FloatStorage', '0', 24)
  body = _dict({
      'transposed': _tensor(pid, 2, (3, 4), (1, 3)),
      'contiguous': _tensor(pid, 0, (2, 3, 4), (12, 4, 1)),
      'expanded': _tensor(pid, 5, (2, 3), (0, 1)),
      'scalar': _tensor(pid, 23, (), ()),
      'empty': _tensor(pid, 0, (0, 3), (3, 1)),
      'parameter': _call(_global('torch._utils', '_rebuild_parameter'),
                         _tensor(pid, 20, (4,), (1,)), _value(True),
                         _call(_global('collections', 'OrderedDict'))),
  })
  path = _write_zip(tmp_path / 'strided.pt', _pickle(body),
                    {'0': storage.tobytes()})
  got = torch_io.load_torch_file(path)
  i, j = np.indices((3, 4))
  np.testing.assert_array_equal(got['transposed'], storage[2 + i + 3 * j])
  np.testing.assert_array_equal(got['contiguous'], storage.reshape(2, 3, 4))
  np.testing.assert_array_equal(got['expanded'], [[5, 6, 7]] * 2)
  assert got['scalar'].shape == () and got['scalar'] == 23
  assert got['empty'].shape == (0, 3)
  np.testing.assert_array_equal(got['parameter'], [20, 21, 22, 23])
  # One storage, as in torch: the tensors alias each other.
  assert np.shares_memory(got['transposed'], got['contiguous'])
  # load_torch_checkpoint hands out independent C-ordered copies instead.
  arrays = torch_io.load_torch_checkpoint(path)
  assert arrays['transposed'].flags.c_contiguous
  assert not np.shares_memory(arrays['transposed'], arrays['contiguous'])


@pytest.mark.parametrize('storage_class,dtype', [
    ('DoubleStorage', np.float64), ('FloatStorage', np.float32),
    ('HalfStorage', np.float16), ('BFloat16Storage', ml_dtypes.bfloat16),
    ('LongStorage', np.int64), ('IntStorage', np.int32),
    ('ShortStorage', np.int16), ('CharStorage', np.int8),
    ('ByteStorage', np.uint8), ('BoolStorage', np.bool_),
    ('ComplexFloatStorage', np.complex64),
])
@pytest.mark.parametrize('byteorder', ['little', 'big', None])
def test_storage_dtypes_and_byte_orders(tmp_path, storage_class, dtype,
                                        byteorder):
  values = (np.arange(6) * 1.5 - 3).astype(dtype)
  raw = values.astype(np.dtype(dtype).newbyteorder(
      '>' if byteorder == 'big' else '<')).tobytes()
  body = _tensor(_storage(storage_class, 'k', 6), 0, (2, 3), (1, 2))
  got = torch_io.load_torch_file(_write_zip(
      tmp_path / 'dtype.pt', _pickle(body), {'k': raw}, byteorder))
  assert got.dtype == dtype and got.dtype.isnative
  np.testing.assert_array_equal(got, values.reshape(3, 2).T)


def test_rebuild_tensor_v3_on_untyped_storage(tmp_path):
  values = np.array([1, 65535, 300, 7], np.uint16)
  # torch >= 2.3 writes dtypes without a legacy storage class this way: the
  # storage counts bytes, the dtype is the call's 7th argument.
  body = _tensor(_storage('UntypedStorage', '0', 8, module='torch.storage'),
                 1, (2,), (2,), _global('torch', 'uint16'),
                 rebuild='_rebuild_tensor_v3')
  got = torch_io.load_torch_file(_write_zip(
      tmp_path / 'v3.pt', _pickle(body), {'0': values.tobytes()}))
  assert got.dtype == np.uint16
  np.testing.assert_array_equal(got, [65535, 7])


def test_legacy_storage_order_and_views(tmp_path):
  weights = np.arange(10, dtype=np.float32) / 4
  counts = np.array([3, -1], np.int64)
  body = _dict({
      'epoch': _value(7),
      'state_dict': _dict({
          'module.w': _tensor(_storage('FloatStorage', 'w', 10, None), 1,
                              (2, 2), (2, 1)),
          'module.view': _tensor(_storage('FloatStorage', 'w', 10,
                                          ('v', 6, 3)), 0, (3,), (1,)),
          'module.n': _tensor(_storage('LongStorage', 'n', 2, None), 1, (),
                              ()),
      }),
  })
  # Data follows the key list, not the pickle's order of first use.
  path = _write_legacy(tmp_path / 'legacy.tar', _pickle(body),
                       {'n': counts, 'w': weights})
  state_dict, meta = torch_io.load_torch_checkpoint(path, with_meta=True)
  assert list(state_dict) == ['w', 'view', 'n'] and meta == {'epoch': 7}
  np.testing.assert_array_equal(state_dict['w'], weights[1:5].reshape(2, 2))
  np.testing.assert_array_equal(state_dict['view'], weights[6:9])
  assert state_dict['n'].dtype == np.int64 and state_dict['n'] == -1


@pytest.mark.parametrize('layout', ['bare', 'model', 'net'])
def test_other_state_dict_layouts(tmp_path, layout):
  tensor = _tensor(_storage('FloatStorage', '0', 2), 0, (2,), (1,))
  # Only some keys start with 'module.': a submodule's name, kept as is.
  state_dict = _dict({'module.a': tensor, 'b': tensor})
  body = state_dict if layout == 'bare' else _dict({layout: state_dict})
  path = _write_zip(tmp_path / 'layout.pt', _pickle(body),
                    {'0': np.float32([1, 2]).tobytes()})
  state_dict, meta = torch_io.load_torch_checkpoint(path, with_meta=True)
  assert list(state_dict) == ['module.a', 'b'] and meta == {}
  np.testing.assert_array_equal(state_dict['b'], [1, 2])


# --- Bad input. ---


def _zip_prefix(path):
  path.write_bytes(ZIP_FILE.read_bytes()[:ZIP_FILE.stat().st_size // 2])


def _legacy_prefix(path):
  path.write_bytes(LEGACY_FILE.read_bytes()[:-1000])


def _zip_without_pickle(path):
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data/0', b'\0' * 16)


def _plain_pickle(path):
  path.write_bytes(pickle.dumps({'state_dict': {}}, protocol=2))


def _tensor_past_storage(path):
  body = _tensor(_storage('FloatStorage', '0', 4), 1, (4,), (1,))
  _write_zip(path, _pickle(body), {'0': bytes(16)})


def _short_storage_record(path):
  body = _tensor(_storage('FloatStorage', '0', 4), 0, (4,), (1,))
  _write_zip(path, _pickle(body), {'0': bytes(12)})


@pytest.mark.parametrize('write,reason', [
    (lambda p: p.write_text('epoch,3\nnot a checkpoint\n'), 'starts with'),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
     'starts with'),
    (lambda p: p.write_bytes(b''), 'starts with'),
    (_zip_prefix, 'truncated or corrupt'),
    (_legacy_prefix, 'truncated'),
    (_zip_without_pickle, 'data.pkl'),
    (_plain_pickle, 'magic number'),
    (_tensor_past_storage, 'reaches past its storage'),
    (_short_storage_record, 'has 12 bytes where its tensors need 16'),
], ids=['text', 'random', 'empty', 'truncated_zip', 'truncated_legacy',
        'zip_without_data_pkl', 'plain_pickle', 'tensor_past_storage',
        'short_record'])
def test_bad_files_raise_clear_error(tmp_path, write, reason):
  path = tmp_path / 'bad.tar'
  write(path)
  for load in (torch_io.load_torch_file, torch_io.load_torch_checkpoint):
    with pytest.raises(torch_io.CheckpointFormatError) as error:
      load(path)
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert 'is not a readable PyTorch checkpoint' in message
    assert reason in message
    assert 'zip format of torch >= 1.6' in message and 'legacy' in message


def test_missing_file():
  with pytest.raises(FileNotFoundError, match='no such file'):
    torch_io.load_torch_checkpoint(FIXTURES / 'no_such_checkpoint.tar')


def test_no_state_dict_inside(tmp_path):
  tensor = _tensor(_storage('FloatStorage', '0', 1), 0, (), ())
  path = _write_zip(tmp_path / 'list.pt', _pickle(b']' + tensor + b'a'),
                    {'0': bytes(4)})
  assert isinstance(torch_io.load_torch_file(path), list)
  with pytest.raises(torch_io.CheckpointFormatError,
                     match='holds a list, and no state_dict'):
    torch_io.load_torch_checkpoint(path)


@pytest.mark.parametrize('container', ['zip', 'legacy', 'bare_pickle'])
def test_refuses_pickled_code(tmp_path, container):
  marker = tmp_path / 'pwned'
  evil = _pickle(_call(_global('os', 'system'), _value(f'touch {marker}')))
  path = tmp_path / 'evil.tar'
  if container == 'zip':
    _write_zip(path, evil, {})
  elif container == 'legacy':
    _write_legacy(path, evil, {})
  else:
    path.write_bytes(evil)
  with pytest.raises(torch_io.CheckpointFormatError,
                     match='references os.system, which this reader refuses'):
    torch_io.load_torch_file(path)
  assert not marker.exists()


def test_bfloat16_without_ml_dtypes_says_what_to_install(tmp_path,
                                                         monkeypatch):
  monkeypatch.setitem(sys.modules, 'ml_dtypes', None)  # Import now fails.
  body = _tensor(_storage('BFloat16Storage', '0', 1), 0, (), ())
  path = _write_zip(tmp_path / 'bf16.pt', _pickle(body), {'0': bytes(2)})
  with pytest.raises(torch_io.CheckpointFormatError,
                     match=r'bfloat16 tensors need the ml_dtypes package'):
    torch_io.load_torch_file(path)
