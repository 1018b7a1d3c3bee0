"""PyTorch state_dict <-> Flax variables for the reference's architectures.

The mapping is generic, built from the flax model's own variables: a
variable's path inside its collection, joined with '.', is the torch module
path (see `nasty_jax.models.layers`), and the leaf names map as

  params/.../kernel     <-> weight (conv HWIO <-> OIHW; dense
                            (in, out) <-> [out, in])
  params/.../scale      <-> weight (BatchNorm gamma)
  params/.../bias       <-> bias
  batch_stats/.../mean  <-> running_mean
  batch_stats/.../var   <-> running_var

torch's `num_batches_tracked` has no flax leaf: it is accepted and dropped on
the way in, and written as int64 0 on the way out.

Command line (no torch needed):

  python -m nasty_jax.convert --arch resnet18 --num_classes 10 \\
      --torch_checkpoint best_model.tar --out DIR
  python -m nasty_jax.convert --to_torch --variables DIR --out state.npz

The first writes an orbax variables checkpoint
(`checkpointing.save_variables`); the second writes a variables checkpoint
back out as an .npz of the torch state_dict (a torch file would need torch).
"""

import argparse
import dataclasses
import functools
import os
import shutil
import sys
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from nasty_jax import checkpointing
from nasty_jax import cli
from nasty_jax import models
from nasty_jax import torch_io

load_torch_checkpoint = torch_io.load_torch_checkpoint

_TO_TORCH_LEAF = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}
COLLECTIONS = ('params', 'batch_stats')
NUM_BATCHES_TRACKED = 'num_batches_tracked'
_DATA_PARALLEL_PREFIX = 'module.'
_MAX_LISTED = 8


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One state_dict entry and, unless num_batches_tracked, its flax leaf."""
  torch_key: str
  torch_shape: tuple[int, ...]
  collection: str | None = None
  path: tuple[str, ...] = ()


# Kernel axis permutations by rank: conv HWIO <-> OIHW, dense (in,out) <->
# [out,in]. Every other leaf keeps its layout.
_TO_TORCH_AXES = {4: (3, 2, 0, 1), 2: (1, 0)}
_TO_FLAX_AXES = {4: (2, 3, 1, 0), 2: (1, 0)}


def _relayout(leaf: str, value: np.ndarray,
              axes: Mapping[int, tuple[int, ...]]) -> np.ndarray:
  if leaf == 'kernel' and value.ndim in axes:
    return value.transpose(axes[value.ndim])
  return value


def _torch_shape(leaf: str, shape: Sequence[int]) -> tuple[int, ...]:
  shape = tuple(shape)
  if leaf == 'kernel' and len(shape) in _TO_TORCH_AXES:
    return tuple(shape[i] for i in _TO_TORCH_AXES[len(shape)])
  return shape


def _walk(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
  """Yields (path, leaf) of a nested mapping in insertion order."""
  for key, child in tree.items():
    if isinstance(child, Mapping):
      yield from _walk(child, prefix + (key,))
    else:
      yield prefix + (key,), child


def _torch_entries(variables: Mapping[str, Any]) -> list[_Entry]:
  """state_dict entries for flax variables (or their shapes), torch-ordered.

  Entries are grouped per module in order of first appearance, each module's
  tensors in torch's order (weight, bias, running_mean, running_var,
  num_batches_tracked): with flax's creation order this is the reference's
  registration order.

  Raises:
    ValueError: an unknown collection or leaf name.
  """
  unknown = sorted(set(variables) - set(COLLECTIONS))
  if unknown:
    raise ValueError(f'Unknown variable collection(s) {", ".join(unknown)}; '
                     f'expected only {", ".join(COLLECTIONS)}.')
  modules: dict[tuple[str, ...], list[_Entry]] = {}
  for collection in COLLECTIONS:
    for path, leaf in _walk(variables.get(collection, {})):
      torch_leaf = _TO_TORCH_LEAF.get((collection, path[-1]))
      if torch_leaf is None:
        raise ValueError(
            f'{collection}/{"/".join(path)}: no torch counterpart for leaf '
            f'{path[-1]!r}; {collection} leaves are '
            f'{", ".join(l for c, l in _TO_TORCH_LEAF if c == collection)}.')
      key = '.'.join(path[:-1] + (torch_leaf,))
      modules.setdefault(path[:-1], []).append(_Entry(
          key, _torch_shape(path[-1], np.shape(leaf)), collection, path))
  entries = []
  for module, group in modules.items():
    entries.extend(group)
    if any(e.collection == 'batch_stats' for e in group):
      entries.append(_Entry('.'.join(module + (NUM_BATCHES_TRACKED,)), ()))
  return entries


@functools.lru_cache(maxsize=64)
def _layout(arch: str, num_classes: int, **model_kwargs) -> tuple[_Entry, ...]:
  """The reference state_dict entries of `arch`, from abstract variables."""
  model = models.get_model(arch, num_classes, **model_kwargs)
  entries = []

  def init(x):
    variables = model.init(jax.random.key(0), x)
    # Recorded while tracing: jax's pytree outputs sort dict keys, flax's
    # dicts keep creation order (= torch registration order).
    entries.extend(_torch_entries(variables))
    return variables

  # Every architecture takes 32x32 and parameter shapes do not depend on it.
  jax.eval_shape(init, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  return tuple(entries)


def _shape_text(shape: Sequence[int]) -> str:
  return '[' + ','.join(str(d) for d in shape) + ']'


def _listed(items: list[str]) -> str:
  more = len(items) - _MAX_LISTED
  return ', '.join(items[:_MAX_LISTED]) + (f' and {more} more' if more > 0
                                            else '')


def _check_against_layout(arch: str, num_classes: int,
                          layout: Sequence[_Entry],
                          shapes: Mapping[str, tuple[int, ...]]) -> None:
  """Raises one ValueError naming every missing/unexpected/mis-shaped key."""
  expected = {e.torch_key: e.torch_shape for e in layout}
  problems = []
  missing = [f'{k} {_shape_text(s)}' for k, s in expected.items()
             if k not in shapes and not k.endswith(NUM_BATCHES_TRACKED)]
  if missing:
    problems.append(f'missing key(s): {_listed(missing)}')
  unexpected = [f'{k} {_shape_text(s)}' for k, s in shapes.items()
                if k not in expected]
  if unexpected:
    problems.append(f'unexpected key(s): {_listed(unexpected)}')
  mismatched = [
      f'{k} expects {_shape_text(expected[k])} but got {_shape_text(s)}'
      for k, s in shapes.items()
      if k in expected and tuple(s) != tuple(expected[k])]
  if mismatched:
    problems.append(f'shape mismatch (torch layout): {_listed(mismatched)}')
  if problems:
    raise ValueError(
        f'The weights do not fit {arch} with num_classes={num_classes}: '
        + '; '.join(problems) + '. Check --arch and --num_classes (a '
        'classifier shape mismatch usually means a wrong num_classes).')


def strip_data_parallel_prefix(state_dict: Mapping[str, Any]
                               ) -> dict[str, Any]:
  """Drops the 'module.' prefix that `nn.DataParallel` adds to every key.

  Only when every key has it, as `torch_io.load_torch_checkpoint` does.
  """
  if not all(k.startswith(_DATA_PARALLEL_PREFIX) for k in state_dict):
    return dict(state_dict)
  return {k[len(_DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}


def _set_leaf(tree: dict[str, Any], path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def torch_to_flax(arch: str, state_dict: Mapping[str, Any], num_classes: int,
                  **model_kwargs) -> dict[str, Any]:
  """Maps a reference state_dict onto `arch`'s flax variables.

  Args:
    arch: a `models.MODEL_NAMES` name (or a test-only tiny one).
    state_dict: torch key -> array (numpy or array-like), as the reference
      saves it; a DataParallel 'module.' prefix is stripped.
    num_classes: classifier outputs.
    **model_kwargs: architecture options that change shapes (net's
      `num_channels`).

  Returns:
    {'params', 'batch_stats'} of float32 numpy arrays, shaped like
    `model.init`'s (no 'batch_stats' for the BN-free mlp).

  Raises:
    ValueError: missing, unexpected or mis-shaped keys, all named with both
      shapes in torch layout.
  """
  state_dict = strip_data_parallel_prefix(state_dict)
  layout = _layout(arch, num_classes, **model_kwargs)
  _check_against_layout(arch, num_classes, layout,
                        {k: np.shape(v) for k, v in state_dict.items()})
  variables: dict[str, Any] = {}
  for entry in layout:
    if entry.collection is None:
      continue
    value = np.asarray(state_dict[entry.torch_key], dtype=np.float32)
    _set_leaf(variables.setdefault(entry.collection, {}), entry.path,
              _relayout(entry.path[-1], value, _TO_FLAX_AXES))
  return variables


def _infer_num_classes(arch: str, variables: Mapping[str, Any],
                       **model_kwargs) -> int:
  """Reads the class count off the leaf whose shape moves with it."""
  one, two = (_layout(arch, c, **model_kwargs) for c in (1, 2))
  for a, b in zip(one, two):
    if a.torch_shape != b.torch_shape:
      axis = next(i for i, (p, q) in enumerate(zip(a.torch_shape,
                                                   b.torch_shape)) if p != q)
      tree = variables.get(a.collection, {})
      for key in a.path:
        if not isinstance(tree, Mapping) or key not in tree:
          raise ValueError(
              f'{arch} variables lack the classifier leaf '
              f'{a.collection}/{"/".join(a.path)}; are they for {arch}?')
        tree = tree[key]
      return int(_torch_shape(a.path[-1], np.shape(tree))[axis])
  raise ValueError(f'{arch} has no classifier whose shape depends on '
                   'num_classes; pass num_classes explicitly.')


def flax_to_torch(arch: str, variables: Mapping[str, Any],
                  num_classes: int | None = None,
                  **model_kwargs) -> dict[str, np.ndarray]:
  """Maps `arch`'s flax variables to the reference's state_dict.

  Args:
    arch: a `models.MODEL_NAMES` name (or a test-only tiny one).
    variables: {'params', 'batch_stats'} (jax or numpy arrays).
    num_classes: classifier outputs; read off the classifier when None.
    **model_kwargs: architecture options that change shapes.

  Returns:
    torch key -> numpy array in the reference's key order and torch layout,
    float32, with `num_batches_tracked` int64 0 for every BatchNorm: the same
    key set as the reference's state_dict.

  Raises:
    ValueError: the variables do not fit `arch`, naming each key.
  """
  variables = {k: v for k, v in variables.items()}
  if num_classes is None:
    num_classes = _infer_num_classes(arch, variables, **model_kwargs)
  layout = _layout(arch, num_classes, **model_kwargs)
  _check_against_layout(
      arch, num_classes, layout,
      {e.torch_key: e.torch_shape for e in _torch_entries(variables)})
  state_dict = {}
  for entry in layout:
    if entry.collection is None:
      state_dict[entry.torch_key] = np.array(0, dtype=np.int64)
      continue
    tree = variables[entry.collection]
    for key in entry.path:
      tree = tree[key]
    state_dict[entry.torch_key] = _relayout(
        entry.path[-1], np.asarray(tree, dtype=np.float32), _TO_TORCH_AXES)
  return state_dict


def _prepare_output(path: str, overwrite: bool) -> None:
  """Refuses to clobber a non-empty `path` unless `overwrite`."""
  if not os.path.exists(path):
    return
  if os.path.isdir(path) and not os.listdir(path):
    return
  if not overwrite:
    raise FileExistsError(f'{path} exists and is not empty; pass --overwrite '
                          'to replace it, or choose another --out.')
  if os.path.isdir(path):
    # Only ever delete what looks like a checkpoint: orbax step folders.
    foreign = [e for e in sorted(os.listdir(path))
               if not (e.split('.')[0].isdigit()
                       and os.path.isdir(os.path.join(path, e)))]
    if foreign:
      raise FileExistsError(
          f'Refusing to replace {path}: it does not look like a checkpoint '
          f'directory (it holds {", ".join(foreign[:5])}). Choose another '
          '--out.')
    shutil.rmtree(path)
  else:
    os.remove(path)


def convert_checkpoint(arch: str, num_classes: int, torch_checkpoint: str,
                       out_dir: str, overwrite: bool = False) -> None:
  """Converts a reference `.tar` checkpoint into an orbax variables dir.

  Args:
    arch: a `models.MODEL_NAMES` name.
    num_classes: classifier outputs of the checkpoint.
    torch_checkpoint: a file written by the reference's `torch.save`.
    out_dir: the checkpoint directory to write.
    overwrite: replace a non-empty `out_dir`.
  """
  state_dict, saved_meta = load_torch_checkpoint(torch_checkpoint,
                                                 with_meta=True)
  variables = torch_to_flax(arch, state_dict, num_classes)
  meta = {'arch': arch, 'num_classes': num_classes,
          'source': os.path.abspath(torch_checkpoint)}
  if isinstance(saved_meta.get('epoch'), int):
    meta['epoch'] = saved_meta['epoch']
  _prepare_output(out_dir, overwrite)
  checkpointing.save_variables(out_dir, variables, meta)
  logging.info('Wrote %s (%s, %d classes) from %s.', out_dir, arch,
               num_classes, torch_checkpoint)


def export_state_dict(variables_dir: str, out_path: str,
                      overwrite: bool = False) -> None:
  """Writes a variables checkpoint as an .npz of the reference state_dict."""
  variables, meta = checkpointing.load_variables(variables_dir)
  if 'arch' not in meta:
    raise ValueError(f'{variables_dir} has no "arch" in its metadata; it was '
                     'not written by a nasty_jax stage or this converter.')
  state_dict = flax_to_torch(meta['arch'], variables,
                             meta.get('num_classes'))
  _prepare_output(out_path, overwrite)
  np.savez(out_path, **state_dict)
  logging.info('Wrote %d tensors of %s to %s.', len(state_dict),
               meta['arch'], out_path)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m nasty_jax.convert',
      description='Convert reference PyTorch checkpoints to orbax variables '
      'checkpoints, or (--to_torch) variables back to a state_dict .npz.')
  parser.add_argument('--arch', choices=models.MODEL_NAMES)
  parser.add_argument('--num_classes', type=int)
  parser.add_argument('--torch_checkpoint',
                      help='reference checkpoint (.tar / .pth.tar).')
  parser.add_argument('--to_torch', action='store_true',
                      help='export --variables to an .npz state_dict.')
  parser.add_argument('--variables', help='variables checkpoint directory '
                      '(with --to_torch).')
  parser.add_argument('--out', required=True,
                      help='output directory (or .npz with --to_torch).')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace a non-empty --out.')
  args = parser.parse_args(argv)
  needed = (('variables',) if args.to_torch
            else ('arch', 'num_classes', 'torch_checkpoint'))
  absent = [f'--{name}' for name in needed if getattr(args, name) is None]
  if absent:
    parser.error(f'{" ".join(absent)} required'
                 + (' with --to_torch' if args.to_torch else ''))
  return args


def main(argv: Sequence[str] | None = None) -> None:
  """Command-line entry; exits with one error line on bad input."""
  args = _parse_args(argv)
  try:
    if args.to_torch:
      export_state_dict(args.variables, args.out, args.overwrite)
    else:
      convert_checkpoint(args.arch, args.num_classes, args.torch_checkpoint,
                         args.out, args.overwrite)
  except (ValueError, OSError) as e:
    # One line and exit 2, as argparse's own usage errors and the other
    # commands' bad input.
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    sys.exit(cli.EXIT_BAD_INPUT)


if __name__ == '__main__':
  main()
