"""Reads `torch.save` files without torch; tensors come back as numpy arrays.

The reference (VITA-Group/Nasty-Teacher,
docs/reference.md#optimisers-and-schedules) saves `{'epoch',
'state_dict', 'optim_dict'}` with `torch.save` to `*.tar` files. Despite the
name they are not tar archives but one of two formats:

* zip (torch >= 1.6): `<root>/data.pkl` is the object pickle and each storage
  is the raw record `<root>/data/<key>`, in the byte order named by the
  optional `<root>/byteorder` record (little-endian when absent).
* legacy (torch < 1.6; the reference's torch 1.4): a stream of pickles (magic
  number, protocol version, sys_info, the object pickle, the list of storage
  keys), then each storage as an int64 element count and its little-endian
  bytes, in that key order.

Both object pickles name storages by the persistent id `('storage',
storage_class, key, location, numel[, view_metadata])` and rebuild tensors
with `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.
Unpickling can run arbitrary code, so every pickle here goes through an
unpickler that resolves only an allow-list of globals.
"""

import collections
import os
import pickle
import struct
import sys
import zipfile
from typing import Any, BinaryIO, Callable

import numpy as np

_FORMATS = (
    'Accepted: files written by torch.save, in the zip format of torch >= 1.6 '
    '(<root>/data.pkl plus <root>/data/<key> records) or the legacy '
    'pickle-stream format of torch < 1.6, holding tensors, dicts, lists and '
    'numbers.')
_LAYOUTS = (
    'Accepted layouts: a bare state_dict ({name: tensor}), or a dict holding '
    'one under "state_dict" (the reference\'s {"epoch", "state_dict", '
    '"optim_dict"}), "model_state_dict", "model" or "net".')
_STATE_DICT_KEYS = ('state_dict', 'model_state_dict', 'model', 'net')
_DATA_PARALLEL_PREFIX = 'module.'  # What nn.DataParallel adds to every key.

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b'PK\x03\x04'  # torch itself tells the formats apart by this.


class CheckpointFormatError(ValueError):
  """The file is not a readable PyTorch checkpoint; the message says why."""


class _BadFile(Exception):
  """A reason the file cannot be read, wrapped into CheckpointFormatError."""


class _DtypeName(str):
  """A storage class or torch dtype from a pickle, as a numpy dtype name.

  A str without `__dict__`, so a pickle's BUILD opcode cannot alter it.
  """
  __slots__ = ()


# Element type of each legacy storage class. UntypedStorage counts bytes; the
# tensors on it (`_rebuild_tensor_v3`) name their dtype separately.
_STORAGE_DTYPES = {
    'DoubleStorage': 'float64', 'FloatStorage': 'float32',
    'HalfStorage': 'float16', 'BFloat16Storage': 'bfloat16',
    'LongStorage': 'int64', 'IntStorage': 'int32', 'ShortStorage': 'int16',
    'CharStorage': 'int8', 'ByteStorage': 'uint8', 'BoolStorage': 'bool',
    'ComplexFloatStorage': 'complex64', 'ComplexDoubleStorage': 'complex128',
    'UntypedStorage': 'uint8',
}
# torch dtypes pickle as globals named like their numpy counterparts.
_TORCH_DTYPES = (
    'float64', 'float32', 'float16', 'bfloat16', 'int64', 'int32', 'int16',
    'int8', 'uint8', 'uint16', 'uint32', 'uint64', 'bool', 'complex64',
    'complex128', 'float8_e4m3fn', 'float8_e5m2', 'float8_e4m3fnuz',
    'float8_e5m2fnuz')


def _numpy_dtype(name: str) -> np.dtype:
  if name.startswith(('bfloat16', 'float8')):
    try:
      import ml_dtypes  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise _BadFile(f'its {name} tensors need the ml_dtypes package '
                     '(pip install ml_dtypes)') from e
    return np.dtype(getattr(ml_dtypes, name))
  return np.dtype(name)


def _check_storage(storage: Any) -> None:
  # A contiguous 1-D array spans exactly size * itemsize bytes, which the
  # bounds check in _rebuild_tensor relies on.
  if not (isinstance(storage, np.ndarray) and storage.ndim == 1
          and storage.flags.c_contiguous):
    raise _BadFile('its pickle rebuilds a tensor from something that is not '
                   'a storage')


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  """torch._utils._rebuild_tensor(_v2): a strided view of a storage.

  Like torch, tensors on one storage share memory; `size`, `stride` and
  `storage_offset` count elements.
  """
  _check_storage(storage)
  size, stride = tuple(size), tuple(stride)
  numbers = (storage_offset,) + size + stride
  if (len(size) != len(stride)
      or not all(isinstance(n, int) and n >= 0 for n in numbers)):
    raise _BadFile(f'its pickle has a tensor with size {size}, stride '
                   f'{stride} and offset {storage_offset!r}')
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    # Checked because as_strided would otherwise read foreign memory.
    raise _BadFile(f'a tensor with size {size}, stride {stride} and offset '
                   f'{storage_offset} reaches past its storage of '
                   f'{storage.size} elements')
  return np.lib.stride_tricks.as_strided(
      storage[storage_offset:], size, [s * storage.itemsize for s in stride])


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, *unused_args):
  """torch._utils._rebuild_tensor_v3: an untyped (byte) storage plus a dtype.

  torch >= 2.3 writes it for dtypes that have no legacy storage class.
  """
  _check_storage(storage)
  if not isinstance(dtype, _DtypeName):
    raise _BadFile(f'its pickle names {dtype!r} as a tensor dtype')
  return _rebuild_tensor(storage.view(_numpy_dtype(dtype)), storage_offset,
                         size, stride, requires_grad, backward_hooks)


def _parameter_data(data, *unused_args):
  """torch._utils._rebuild_parameter(_with_state): a Parameter is its data."""
  return data


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'slice'): slice,
    ('torch', 'Size'): tuple,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
    ('torch._utils', '_rebuild_parameter'): _parameter_data,
    ('torch._utils', '_rebuild_parameter_with_state'): _parameter_data,
}
# torch.cuda.* classes appear in files saved from GPU tensors by old torch.
_ALLOWED_GLOBALS.update(
    ((module, name), _DtypeName(dtype))
    for module in ('torch', 'torch.cuda', 'torch.storage')
    for name, dtype in _STORAGE_DTYPES.items())
_ALLOWED_GLOBALS.update(
    (('torch', name), _DtypeName(name)) for name in _TORCH_DTYPES)


def _text(value: Any) -> Any:
  return value.decode('ascii') if isinstance(value, bytes) else value


class _Storages:
  """The storages of one file, by key: byte buffers viewed as their dtype.

  `read(key, buffer, dtype)`, if given, fills a buffer when it is first named
  (zip); otherwise the caller fills `buffers` after the object pickle (legacy).
  """

  def __init__(self, max_bytes: int,
               read: Callable[[str, np.ndarray, np.dtype], None] | None = None):
    self.buffers: dict[str, tuple[np.ndarray, np.dtype]] = {}
    self._max_bytes = max_bytes
    self._read = read

  def __call__(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
    nbytes = numel * dtype.itemsize
    if key not in self.buffers:
      if nbytes > self._max_bytes:
        raise _BadFile(f'storage {key!r} claims {nbytes} bytes, more than '
                       'the whole file (truncated or corrupt file?)')
      buffer = np.empty(nbytes, np.uint8)
      if self._read is not None:
        self._read(key, buffer, dtype)
      self.buffers[key] = (buffer, dtype)
    buffer = self.buffers[key][0]
    if buffer.size != nbytes:
      raise _BadFile(f'storage {key!r} is named with two different sizes')
    return buffer.view(dtype)


def _fill(buffer: np.ndarray, data: bytes, dtype: np.dtype, byteorder: str,
          what: str) -> None:
  """Copies a storage's raw bytes into `buffer`, in native byte order."""
  if len(data) != buffer.size:
    raise _BadFile(f'{what} has {len(data)} bytes where its tensors need '
                   f'{buffer.size} (truncated or corrupt file?)')
  buffer[:] = np.frombuffer(data, np.uint8)
  if byteorder != sys.byteorder and dtype.itemsize > 1:
    buffer.view(dtype).byteswap(inplace=True)


class _Unpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED_GLOBALS`; storages come from `storages`."""

  def __init__(self, file: BinaryIO, storages: _Storages | None = None):
    # utf-8 as torch.load uses, for strings pickled by Python 2.
    super().__init__(file, encoding='utf-8')
    self._storages = storages

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[module, name]
    except KeyError:
      raise _BadFile(
          f'its pickle references {module}.{name}, which this reader refuses '
          'to load: unpickling it could run arbitrary code. Only tensors, '
          'storages, torch dtypes, OrderedDict and plain Python values are '
          'allowed (save model.state_dict(), not a whole object)') from None

  def persistent_load(self, pid: Any) -> np.ndarray:
    if (self._storages is None or not isinstance(pid, tuple)
        or len(pid) not in (5, 6) or _text(pid[0]) != 'storage'
        or not isinstance(pid[1], _DtypeName)
        or not isinstance(pid[4], int) or pid[4] < 0):
      raise _BadFile(f'its pickle has an unexpected persistent id '
                     f'{str(pid)[:80]}')
    _, storage_class, key, unused_location, numel = pid[:5]
    # The location ('cpu', 'cuda:0') is ignored: everything lands on host.
    storage = self._storages(_text(key), _numpy_dtype(storage_class), numel)
    view = pid[5] if len(pid) == 6 else None
    if view is None:
      return storage
    # Storage views, written by old legacy-format torch: (key, offset, numel).
    _, offset, view_numel = view
    if not 0 <= offset <= offset + view_numel <= storage.size:
      raise _BadFile(f'storage view {view!r} lies outside its storage of '
                     f'{storage.size} elements')
    return storage[offset:offset + view_numel]


def _load_zip(file: BinaryIO, size: int) -> Any:
  try:
    archive = zipfile.ZipFile(file)
  except zipfile.BadZipFile as e:
    raise _BadFile(f'it is a zip archive that cannot be opened, probably '
                   f'truncated or corrupt ({e})') from e
  with archive:
    names = archive.namelist()
    pickles = [n for n in names
               if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      raise _BadFile(f'the zip archive has {len(pickles)} <root>/data.pkl '
                     f'records instead of one; its first entries are '
                     f'{names[:5]}')
    root = pickles[0][:-len('data.pkl')]
    byteorder = 'little'  # Absent in files from torch < 2.0 (all x86).
    if root + 'byteorder' in names:
      byteorder = archive.read(root + 'byteorder').decode('ascii', 'replace')
      if byteorder not in ('little', 'big'):
        raise _BadFile(f'its byteorder record says {byteorder!r}, not '
                       "'little' or 'big'")

    def read(key: str, buffer: np.ndarray, dtype: np.dtype) -> None:
      record = f'{root}data/{key}'
      if record not in names:
        raise _BadFile(f'its pickle names storage {key!r}, but the archive '
                       f'has no {record} record')
      _fill(buffer, archive.read(record), dtype, byteorder, record)

    with archive.open(pickles[0]) as pickled:
      return _Unpickler(pickled, _Storages(size, read)).load()


def _load_legacy(file: BinaryIO, size: int) -> Any:
  if _Unpickler(file).load() != _LEGACY_MAGIC:
    raise _BadFile('it is a pickle without the magic number that '
                   'torch.save puts first')
  protocol = _Unpickler(file).load()
  if protocol != _LEGACY_PROTOCOL:
    raise _BadFile(f'its legacy protocol version is {protocol!r}, not '
                   f'{_LEGACY_PROTOCOL}')
  sys_info = _Unpickler(file).load()
  little_endian = (sys_info.get('little_endian', True)
                   if isinstance(sys_info, dict) else True)
  storages = _Storages(size)
  result = _Unpickler(file, storages).load()
  keys = [_text(k) for k in _Unpickler(file).load()]
  # Element counts are in the writer's byte order, data always little-endian.
  count_format = '<q' if little_endian else '>q'
  for key in keys:
    if key not in storages.buffers:
      raise _BadFile(f'its storage list names {key!r}, which no tensor uses')
    buffer, dtype = storages.buffers[key]
    header = file.read(8)
    if len(header) < 8:
      raise _BadFile(f'it ends before storage {key!r} (truncated file?)')
    count = struct.unpack(count_format, header)[0]
    if count * dtype.itemsize != buffer.size:
      raise _BadFile(f'storage {key!r} holds {count} elements where its '
                     f'tensors need {buffer.size // dtype.itemsize}')
    _fill(buffer, file.read(buffer.size), dtype, 'little', f'storage {key!r}')
  missing = sorted(set(storages.buffers) - set(keys))
  if missing:
    raise _BadFile(f'it has no data for storages {missing[:5]}')
  return result


def load_torch_file(path: str | os.PathLike[str]) -> Any:
  """Unpickles a `torch.save` file (zip or legacy format) without torch.

  Tensors and parameters become numpy arrays with the saved dtype, shape and
  values; tensors that shared a storage share memory, as in torch. Dicts,
  OrderedDicts, lists and Python scalars (e.g. `epoch`) come through as is.

  Args:
    path: the file.

  Returns:
    The saved object.

  Raises:
    FileNotFoundError: `path` is not a file.
    CheckpointFormatError: the file is not a readable `torch.save` file, or
      its pickle references anything but tensors and plain values.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No PyTorch checkpoint at {path}: no such file. '
                            f'{_FORMATS}')
  with open(path, 'rb') as file:
    size = os.fstat(file.fileno()).st_size
    head = file.read(4)
    file.seek(0)
    try:
      if head == _ZIP_MAGIC:
        return _load_zip(file, size)
      if head[:1] == b'\x80':  # The PROTO opcode that starts the magic pickle.
        return _load_legacy(file, size)
      raise _BadFile(f'it starts with {head!r}, neither a zip archive nor a '
                     'pickle stream')
    except _BadFile as e:
      reason = str(e)
    except Exception as e:  # pylint: disable=broad-exception-caught
      # A corrupt pickle or zip raises almost any type of exception.
      reason = (f'it cannot be parsed, probably truncated or corrupt '
                f'({type(e).__name__}: {e})')
  raise CheckpointFormatError(
      f'{path} is not a readable PyTorch checkpoint: {reason}. {_FORMATS}')


def _is_state_dict(value: Any) -> bool:
  return (isinstance(value, dict) and bool(value)
          and all(isinstance(k, str) and isinstance(v, np.ndarray)
                  for k, v in value.items()))


def _describe(value: Any) -> str:
  if isinstance(value, dict):
    return f'a dict with keys {list(value)[:8]}'
  return f'a {type(value).__name__}'


def load_torch_checkpoint(
    path: str | os.PathLike[str], with_meta: bool = False
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], dict[str, Any]]:
  """The model state_dict of a PyTorch checkpoint file, as numpy arrays.

  A leading 'module.' (what nn.DataParallel saves) is stripped when every key
  has it; a model with a submodule named `module` keeps its keys.

  Args:
    path: a `torch.save` file holding a state_dict: bare, or in a dict under
      'state_dict' (the reference's `{'epoch', 'state_dict', 'optim_dict'}`),
      'model_state_dict', 'model' or 'net'.
    with_meta: also return the wrapping dict's scalar entries.

  Returns:
    `{key: array}` in file order, each array C-contiguous and not sharing
    memory with the others. With `with_meta`, a pair of that and the
    wrapper's str/int/float/bool entries, e.g. `{'epoch': 3}` (`{}` for a bare
    state_dict).

  Raises:
    FileNotFoundError: `path` is not a file.
    CheckpointFormatError: the file is not a readable `torch.save` file or
      holds no state_dict.
  """
  saved = load_torch_file(path)
  meta = {}
  if _is_state_dict(saved):
    state_dict = saved
  else:
    key = next((k for k in _STATE_DICT_KEYS
                if isinstance(saved, dict) and _is_state_dict(saved.get(k))),
               None)
    if key is None:
      raise CheckpointFormatError(
          f'{path} is not a readable PyTorch checkpoint: it holds '
          f'{_describe(saved)}, and no state_dict. {_LAYOUTS}')
    state_dict = saved[key]
    meta = {k: v for k, v in saved.items()
            if isinstance(v, (str, int, float, bool))}
  prefix = len(_DATA_PARALLEL_PREFIX) if all(
      k.startswith(_DATA_PARALLEL_PREFIX) for k in state_dict) else 0
  arrays = {k[prefix:]: np.array(v, order='C')
            for k, v in state_dict.items()}
  return (arrays, meta) if with_meta else arrays
