"""Orbax checkpoints: frozen network variables and resumable train states.

Two layouts, both orbax v0 `CheckpointManager` directories:

* a *variables* checkpoint holds `{'params', 'batch_stats'}` plus a JSON
  `meta` item (`arch`, `num_classes`, ...). A stage's `best/` folder, and what
  `python -m nasty_jax.convert` writes from a PyTorch file, use it. Frozen
  networks (KD teacher, nasty adversary) are read from it and never written.
* a *state* checkpoint (a stage's `last/` folder) holds the whole train state,
  so a killed stage resumes bit-for-bit.
"""

import contextlib
import os
import sys
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from nasty_jax import cli

VARIABLES_ITEM = 'variables'
META_ITEM = 'meta'


def _manager(directory: str, max_to_keep: int = 1) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True))


@contextlib.contextmanager
def _writing(directory: str):
  """Turns any failure of a (background) save into one WriteFailedError."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    cause = ' '.join(str(e).split())[:300] or type(e).__name__
    raise cli.WriteFailedError(
        f'Could not write a checkpoint in {directory} ({type(e).__name__}: '
        f'{cause}). Free space or fix the folder, then run the same command '
        'again: it resumes from the last complete checkpoint.') from None


def _drop_closed_loop_callbacks() -> None:
  """Silences the aftermath of a failed orbax read, for this process.

  When one array of a restore fails, orbax closes its event loop while
  tensorstore still has the other reads in flight; each of them completes
  later and calls back into the closed loop, and Python prints every such
  `RuntimeError('Event loop is closed')` as an unraisable exception: dozens
  of tracebacks after our one-line error. Only those are dropped.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop_callbacks', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and
            str(error) == 'Event loop is closed'):
      previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


def save_variables(directory: str, variables: Mapping[str, Any],
                   meta: Mapping[str, Any], step: int = 0) -> None:
  """Writes a variables checkpoint (`params` and `batch_stats`) at `step`."""
  # Host numpy: one replica, written once whatever process holds it (a
  # device array of one local device cannot be saved by a multi-process
  # run, and the reader places it on its own devices anyway).
  variables = jax.device_get({k: variables[k] for k in ('params',
                                                       'batch_stats')
                              if k in variables})
  with _writing(directory), _manager(directory) as mngr:
    mngr.save(step, args=ocp.args.Composite(**{
        VARIABLES_ITEM: ocp.args.StandardSave(variables),
        META_ITEM: ocp.args.JsonSave(dict(meta)),
    }), force=True)
    mngr.wait_until_finished()


def load_variables(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads the newest variables checkpoint under `directory`.

  Args:
    directory: a variables checkpoint directory, or a stage directory that
      holds one in `best/`.

  Returns:
    (variables, meta): host-side arrays and the JSON metadata.

  Raises:
    FileNotFoundError: no checkpoint there; the message says what to pass.
  """
  directory = os.path.abspath(directory)
  if os.path.isdir(os.path.join(directory, 'best')):
    directory = os.path.join(directory, 'best')
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f'No checkpoint directory at {directory}. Pass the folder of a '
        'finished stage, or one written by `python -m nasty_jax.convert`.')
  with ocp.CheckpointManager(directory,
                             item_handlers=_item_handlers()) as mngr:
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(
          f'{directory} holds no finished checkpoint. Pass the folder of a '
          'finished stage, or one written by `python -m nasty_jax.convert`.')
    try:
      # A target on this host's first device: the checkpoint may come from
      # any device count or topology (a TPU slice, 4 GPUs).
      target = _on_first_device(mngr.item_metadata(step)[VARIABLES_ITEM])
      restored = mngr.restore(step, args=ocp.args.Composite(**{
          VARIABLES_ITEM: ocp.args.StandardRestore(target),
          META_ITEM: ocp.args.JsonRestore(),
      }))
    except (ValueError, KeyError, OSError, TypeError) as e:
      _drop_closed_loop_callbacks()
      raise UnreadableCheckpointError(
          f'{directory} step {step} is not a readable checkpoint '
          f'({type(e).__name__}: {str(e)[:200]}). Point at another one; a '
          'stage\'s own is rebuilt by --config.retrain=<stage>.') from None
  variables = jax.device_get(restored[VARIABLES_ITEM])
  return variables, dict(restored[META_ITEM] or {})


class UnreadableCheckpointError(ValueError):
  """A checkpoint folder whose files or metadata cannot be read."""


def _item_handlers():
  return {VARIABLES_ITEM: ocp.StandardCheckpointHandler(),
          META_ITEM: ocp.JsonCheckpointHandler()}


def _on_first_device(metadata) -> Any:
  """Abstract arrays of a checkpoint's tree, placed on one local device."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  tree = getattr(metadata, 'tree', metadata)
  return jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
      tree, is_leaf=lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype'))


STATE_ITEM = 'state'


class StageCheckpoints:
  """A stage's `last/` (resumable state) and `best/` (variables) folders.

  `best/` is written before `last/` at each epoch end. A kill between the two
  resumes from the previous `last/`, replays the epoch bit-for-bit, and finds
  that epoch's `best/` already written.
  """

  def __init__(self, stage_dir: str, max_to_keep: int = 1):
    self.stage_dir = os.path.abspath(stage_dir)
    self.best_dir = os.path.join(self.stage_dir, 'best')
    self._max_to_keep = max_to_keep
    self._last = _manager(os.path.join(self.stage_dir, 'last'), max_to_keep)

  def restore_last(self, abstract_state: Any
                   ) -> tuple[Any, dict[str, Any]] | None:
    """The newest resumable state (on `abstract_state`'s shardings), or None."""
    step = self._last.latest_step()
    if step is None:
      return None
    target = abstract_state
    if jax.process_count() > 1:
      # Saved as host numpy (`save_last`): read it so, place it below.
      target = jax.tree_util.tree_map(
          lambda x: np.empty(x.shape, x.dtype), abstract_state)
    try:
      restored = self._last.restore(step, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.StandardRestore(target),
          META_ITEM: ocp.args.JsonRestore(),
      }))
    except (ValueError, KeyError, OSError, TypeError) as e:
      _drop_closed_loop_callbacks()
      self._set_aside(step, e)
      return None
    state = restored[STATE_ITEM]
    if jax.process_count() > 1:
      state = jax.tree_util.tree_map(
          lambda x, a: jax.device_put(x, a.sharding), state, abstract_state)
    return state, dict(restored[META_ITEM] or {})

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves an unreadable `last/` aside; the stage restarts from step 0."""
    last = os.fspath(self._last.directory)
    self._last.close()
    n = 1
    while os.path.exists(f'{last}.unreadable-{n}'):
      n += 1
    os.replace(last, f'{last}.unreadable-{n}')
    logging.warning(
        '%s/%d is not a readable checkpoint (%s: %s); kept as %s, the stage '
        'starts again from step 0.', last, step, type(error).__name__,
        ' '.join(str(error).split())[:200], f'{last}.unreadable-{n}')
    self._last = _manager(last, self._max_to_keep)

  def save_last(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
    """Starts an asynchronous save; a failed earlier one raises here."""
    if jax.process_count() > 1:
      # Every process holds the whole replicated state on its own devices
      # (arrays orbax cannot write across processes): save it as host numpy.
      state = jax.device_get(state)
    with _writing(self._last.directory):
      self._last.save(step, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.StandardSave(state),
          META_ITEM: ocp.args.JsonSave(dict(meta)),
      }), force=True)

  def save_best(self, step: int, variables: Mapping[str, Any],
                meta: Mapping[str, Any]) -> None:
    """Writes `best/` unless a replayed epoch already wrote this step."""
    with _manager(self.best_dir) as mngr:
      latest = mngr.latest_step()
      if latest is not None and latest >= step:
        return
    save_variables(self.best_dir, variables, meta, step=step)

  def has_best(self) -> bool:
    with _manager(self.best_dir) as mngr:
      return mngr.latest_step() is not None

  def wait_until_finished(self) -> None:
    with _writing(self._last.directory):
      self._last.wait_until_finished()

  def close(self) -> None:
    self.wait_until_finished()
    self._last.close()
