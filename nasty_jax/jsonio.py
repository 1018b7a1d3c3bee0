"""JSON files the project writes: atomically, and read with a clear error.

Every JSON file (a stage's result.json and settings.json, a workdir's
config.json and results.json, audit and benchmark files) is written to a
temporary file beside it and moved into place with `os.replace`, so a kill
leaves the old file or the new one, never half of one.
"""

import json
import os
from typing import Any


class UnreadableFileError(ValueError):
  """A JSON file that exists but cannot be parsed."""


def write(path: str, obj: Any, **kwargs: Any) -> None:
  """Writes `obj` as JSON to `path` atomically (temp file + os.replace)."""
  write_text(path, json.dumps(obj, indent=1, **kwargs))


def write_text(path: str, text: str) -> None:
  """Writes a text file atomically (temp file + os.replace)."""
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def read(path: str, rebuild: str = '') -> Any:
  """The JSON in `path`, or None if there is no such file.

  Args:
    path: the file.
    rebuild: how it is rebuilt, for the error ('' = it is not).

  Raises:
    UnreadableFileError: the file is there but not valid JSON; the message
      names it and says whether (and how) it is rebuilt.
  """
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    fix = (f'It is rebuilt {rebuild}.' if rebuild else
           'Restore it, or remove it to start that part afresh.')
    raise UnreadableFileError(f'{path} is not readable JSON ({e}). '
                              f'{fix}') from None
