"""A stage's settings fingerprint: a folder is reused only for its settings.

`settings(config, spec, sources)` is everything that decides a stage's
result: the method and its fields, the architecture and model options, the
data, the optimiser and schedule, the batch sizes, the evaluation's extent,
the seed, and, for every frozen network, its architecture and the
fingerprint of what produced it (`sources`: the producing stage's
fingerprint, or for a checkpoint from elsewhere, `checkpoint_identity`).
What cannot change a result does not count: log intervals, paths of the
workdir and of the data, the parallelism and device count (1 device = N
devices holds), checkpoint retention, profiling, the stage selection.

A stage folder records its settings and fingerprint in `settings.json`
when it starts; `engine.run_stage` refuses to reuse or resume a folder
whose fingerprint differs, naming the keys that changed.
"""

import hashlib
import json
import os
from typing import Any, Mapping

import ml_collections

from nasty_jax import jsonio
from nasty_jax import methods
from nasty_jax import models
from nasty_jax import programs

SETTINGS_FILE = 'settings.json'
# config.dataset fields that say where data lives, not what it is.
_DATA_PATHS = ('data_dir', 'manual_dir')


def settings(config: ml_collections.ConfigDict, spec: programs.StageSpec,
             sources: Mapping[str, str]) -> dict[str, Any]:
  """What decides `spec`'s result under `config` (see the module docstring).

  Args:
    config: the pipeline config.
    spec: the stage.
    sources: the fingerprint of each frozen network's producer, by role.
  """
  method = methods.get(spec.method)
  fields = methods.fields(config, method).to_dict()
  # Checkpoint paths name other stages' outputs: `frozen` holds what
  # produced them instead. The teacher group's arch is the stage's arch.
  for key in list(fields):
    if key == 'checkpoint' or key.endswith('_checkpoint') or (
        method.config_group == 'teacher' and key == 'arch'):
      del fields[key]
  arch = models.get_arch(spec.arch)
  out = {
      'method': spec.method,
      'arch': spec.arch,
      'fields': fields,
      'frozen': {f.role: {'arch': f.arch, 'source': sources[f.role],
                          **_transform(config, f.transform)}
                 for f in spec.frozen},
      'dataset': {k: v for k, v in config.dataset.to_dict().items()
                  if k not in _DATA_PATHS},
      'model': {k: config.model[k] for k in
                ('dtype', 'bn_momentum', *arch.options)},
      'optim': programs.optimizer_config(config, spec.arch).to_dict(),
      'num_train_steps': config.num_train_steps,
      'batch_size': config.batch_size,
      'eval_batch_size': config.eval_batch_size,
      'max_eval_batches': config.max_eval_batches,
      'seed': config.seed,
  }
  # As JSON has it (tuples are lists), so it compares with a recorded one.
  return json.loads(json.dumps(out, default=str))


def _transform(config: ml_collections.ConfigDict, spec: str
               ) -> dict[str, Any]:
  """A serving transform's spec and its defenses' fields ({} for none)."""
  if not spec:
    return {}
  fields = {p: methods.fields(config, methods.get(p)).to_dict()
            for p in methods.parse_list(spec) if p in methods.names()}
  return {'transform': spec, 'transform_fields': fields}


def of(settings_: Mapping[str, Any]) -> str:
  """The fingerprint of a settings dict: 16 hex digits of its SHA-256."""
  text = json.dumps(settings_, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_identity(checkpoint: str) -> str:
  """A checkpoint's source fingerprint: its stage's, else its contents'.

  A stage folder (or its best/) carries the fingerprint of the stage that
  wrote it. Another checkpoint (a converted PyTorch file, a teacher from
  elsewhere) is identified by its resolved path and the names, sizes and
  modification times of its files, so replacing it counts as a change.
  """
  path = os.path.abspath(checkpoint)
  stage_dir = path[:-len('/best')] if path.endswith('/best') else path
  recorded = read(stage_dir)
  if recorded is not None:
    return recorded['fingerprint']
  listing = []
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      stat = os.stat(os.path.join(root, name))
      listing.append((os.path.relpath(os.path.join(root, name), path),
                      stat.st_size, int(stat.st_mtime)))
  return of({'path': path, 'files': listing})


def read(stage_dir: str) -> dict[str, Any] | None:
  """A stage folder's recorded {'fingerprint', 'settings'}, or None."""
  return jsonio.read(os.path.join(stage_dir, SETTINGS_FILE))


def record(stage_dir: str, settings_: Mapping[str, Any]) -> None:
  """Writes the folder's settings.json (before a stage trains)."""
  jsonio.write(os.path.join(stage_dir, SETTINGS_FILE),
               {'fingerprint': of(settings_), 'settings': settings_},
               default=str)


def differences(old: Mapping[str, Any], new: Mapping[str, Any],
                prefix: str = '') -> list[str]:
  """'key: old -> new' for every leaf that differs, dotted keys."""
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, '<unset>'), new.get(key, '<unset>')
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, f'{prefix}{key}.')
    elif a != b:
      out.append(f'{prefix}{key}: {a} -> {b}')
  return out
