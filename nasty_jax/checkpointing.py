"""Orbax checkpoints: frozen network variables and resumable train states.

Two layouts, both orbax v0 `CheckpointManager` directories:

* a *variables* checkpoint holds `{'params', 'batch_stats'}` plus a JSON
  `meta` item (`arch`, `num_classes`, ...). A stage's `best/` folder, and what
  `python -m nasty_jax.convert` writes from a PyTorch file, use it. Frozen
  networks (KD teacher, nasty adversary) are read from it and never written.
* a *state* checkpoint (a stage's `last/` folder) holds the whole train state,
  so a killed stage resumes bit-for-bit.
"""

import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

VARIABLES_ITEM = 'variables'
META_ITEM = 'meta'


def _manager(directory: str, max_to_keep: int = 1) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           create=True))


def save_variables(directory: str, variables: Mapping[str, Any],
                   meta: Mapping[str, Any], step: int = 0) -> None:
  """Writes a variables checkpoint (`params` and `batch_stats`) at `step`."""
  variables = {k: variables[k] for k in ('params', 'batch_stats')
               if k in variables}
  with _manager(directory) as mngr:
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
  with ocp.CheckpointManager(directory) as mngr:
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(
          f'{directory} holds no finished checkpoint. Pass the folder of a '
          'finished stage, or one written by `python -m nasty_jax.convert`.')
    restored = mngr.restore(step, args=ocp.args.Composite(**{
        VARIABLES_ITEM: ocp.args.StandardRestore(),
        META_ITEM: ocp.args.JsonRestore(),
    }))
  variables = jax.device_get(restored[VARIABLES_ITEM])
  return variables, dict(restored[META_ITEM] or {})


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
    self._last = _manager(os.path.join(self.stage_dir, 'last'), max_to_keep)

  def restore_last(self, abstract_state: Any
                   ) -> tuple[Any, dict[str, Any]] | None:
    """The newest resumable state (on `abstract_state`'s shardings), or None."""
    step = self._last.latest_step()
    if step is None:
      return None
    restored = self._last.restore(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardRestore(abstract_state),
        META_ITEM: ocp.args.JsonRestore(),
    }))
    return restored[STATE_ITEM], dict(restored[META_ITEM])

  def save_last(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
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
    self._last.wait_until_finished()

  def close(self) -> None:
    self._last.wait_until_finished()
    self._last.close()
