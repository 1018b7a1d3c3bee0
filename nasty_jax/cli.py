"""What the commands (main, experiments, audit) share: exit codes, one line
per error, a quiet console.

Exit codes (README):
  0   everything asked for finished;
  2   bad input: a config key or value, missing data, a checkpoint that does
      not fit or cannot be read, a workdir made with other settings;
  3   a stage stopped at a non-finite loss (its folder is kept);
  74  a checkpoint or result could not be written (disk full, permissions);
  75  pre-empted (SIGTERM or Ctrl-C): state saved, run the same command
      again to resume.

A bad-input error is printed as one line; NASTY_JAX_TRACEBACK=1 shows the
traceback instead. A workdir this command created and that holds no
checkpoint yet is removed when it fails on bad input, so a typo leaves
nothing behind.
"""

import logging as py_logging
import os
import re
import shutil
import sys
from typing import Any, Callable

from absl import logging

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_WRITE_FAILED = 74  # EX_IOERR
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: run the same command again.

# Console noise of libraries, dropped below ERROR: orbax's per-save INFO,
# TFDS's "custom data configuration" / OpenCV / dataset_info warnings, clu's
# work-unit notes.
_NOISY = ('/orbax/', '/grain/', '/tensorflow_datasets/', '/clu/',
          '/etils/')
# INFO only: JAX's "Unable to initialize backend 'tpu'" on a CPU or GPU.
_CHATTY = ('/jax/_src/xla_bridge.py',)


class WriteFailedError(OSError):
  """A checkpoint or result write failed; the message names path and cause."""


class _QuietLibraries(py_logging.Filter):

  def filter(self, record):
    if record.levelno >= py_logging.ERROR:
      return True
    if any(part in record.pathname for part in _NOISY):
      return False
    return record.levelno > py_logging.INFO or not any(
        part in record.pathname for part in _CHATTY)


def quiet_console() -> None:
  """Library chatter off the console (our own lines stay)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  logging.get_absl_handler().addFilter(_QuietLibraries())


def bad_input_errors() -> tuple[type[BaseException], ...]:
  """The exceptions that mean the user's input must change."""
  from nasty_jax import jsonio  # pylint: disable=g-import-not-at-top
  return (ValueError, FileNotFoundError, NotADirectoryError,
          jsonio.UnreadableFileError)


def exit_code(outcome: Any) -> int:
  """The code for a command's outcome dict (see the module docstring)."""
  if not isinstance(outcome, dict):
    return EXIT_OK
  if outcome.get('status') == 'preempted' or outcome.get('preempted'):
    return EXIT_PREEMPTED
  if outcome.get('nonfinite'):
    return EXIT_NONFINITE
  return EXIT_OK


def run_command(body: Callable[[], Any], workdir: str | None = None) -> None:
  """Runs a command's body and exits with its code (never returns).

  Args:
    body: does the work; returns an outcome dict for `exit_code`.
    workdir: the command's workdir, removed after a bad-input failure when
      this call created it and no stage saved a checkpoint in it.
  """
  created = workdir is not None and not os.path.exists(workdir)
  try:
    if workdir is not None and os.path.exists(workdir) and not os.path.isdir(
        workdir):
      raise NotADirectoryError(f'The workdir {workdir} is a file. Give a '
                               'folder (it is created when missing).')
    code = exit_code(body())
  except WriteFailedError as e:
    _one_line(e)
    code = EXIT_WRITE_FAILED
  except bad_input_errors() as e:
    if os.environ.get('NASTY_JAX_TRACEBACK') == '1':
      raise
    _one_line(e)
    if created:
      remove_if_empty(workdir)
    code = EXIT_BAD_INPUT
  except KeyboardInterrupt:
    # A second Ctrl-C while the first one's checkpoint was being written.
    logging.error('Interrupted again; the last saved checkpoint resumes.')
    code = EXIT_PREEMPTED
  logging.flush()
  sys.exit(code)


def _one_line(e: BaseException) -> None:
  """The error's own line; lines after it (a how-to) are kept as given."""
  message = str(e).strip().strip('"\'') or type(e).__name__
  logging.error('%s', message)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config key as one line, exit 2
  (`app.run(main, flags_parser=parse_flags)`)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    usage_error(_last_error(str(e)))
  except (AttributeError, KeyError) as e:
    _unknown_key('config', e)


def usage_error(message: str) -> None:
  """Prints a bad command line as one line and exits 2."""
  message = ' '.join(message.split())
  print(f'{os.path.basename(sys.argv[0])}: {message} (--help lists the '
        'flags, config groups, datasets and architectures).',
        file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def _last_error(message: str) -> str:
  """A config file's own error out of ml_collections' quoted traceback."""
  if 'Traceback (most recent call last)' not in message:
    return message
  head = message.split(':', 2)[:2]
  errors = re.findall(r'^\w+(?:Error|Exception): .*$', message, re.M)
  return ':'.join(head) + ': ' + errors[-1] if errors else message


def config_or_exit(name: str = 'config'):
  """The parsed `--config`: a config file that fails to load is one line.

  ml_collections loads the file lazily and keeps its error for the first
  access; this is that access.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    config = getattr(flags.FLAGS, name)
    config.get('seed')  # Raises the kept load error, if any.
    return config
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    detail = next((l for l in reversed(lines) if l.startswith('[Errno')),
                  lines[-1] if lines else '')
    usage_error(f'--{name}: cannot load the config file: {detail}')


def define_config_flag(name: str, default: str, help_text: str) -> None:
  """`config_flags.DEFINE_config_file`, an unknown `--config.KEY` as one
  line (ml_collections applies the overrides while defining the flag)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    config_flags.DEFINE_config_file(name, default, help_text,
                                    lock_config=True)
  except (AttributeError, KeyError) as e:
    _unknown_key(name, e)


def _unknown_key(name: str, error: Exception) -> None:
  """An override of a key the config does not have (ml_collections raises
  it while the flag is defined or parsed, whichever comes first)."""
  key = str(error).strip('\'"')
  given = [a for a in sys.argv[1:] if a.startswith(f'--{name}.')
           and key in a.split('=', 1)[0].split('.')]
  usage_error(f'unknown config key {key!r} in '
              f'{given[0] if given else f"--{name}.*"}')


def help_text() -> str:
  """What --help adds to a command's usage: the choices a config takes."""
  import glob  # pylint: disable=g-import-not-at-top
  from configs import digits  # pylint: disable=g-import-not-at-top
  from nasty_jax import methods  # pylint: disable=g-import-not-at-top
  from nasty_jax import models  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  datasets = sorted(os.path.basename(p)[:-3] for p in glob.glob(
      os.path.join(repo, 'configs', '*.py')) if not p.endswith('common.py'))
  config = digits.get_config()
  groups = sorted(k for k, v in config.items() if hasattr(v, 'items'))
  wrap = lambda items: '\n    '.join(_wrapped(', '.join(items), 72))
  return (f'\nConfig files (configs/NAME.py[:ARCH]):\n    {wrap(datasets)}\n'
          f'Architectures (ARCH, teacher.arch, students.archs):\n'
          f'    {wrap(models.ARCH_NAMES)}\n'
          f'Teacher methods (teachers): {wrap(methods.names(methods.TEACHER))}\n'
          f'Student methods (students.methods):\n'
          f'    {wrap(methods.names(methods.STUDENT))}\n'
          f'Config groups (--config.GROUP.KEY=VALUE):\n    {wrap(groups)}\n'
          'Exit codes: 0 done, 2 bad input, 3 non-finite loss, 74 a write '
          'failed,\n    75 pre-empted (run the same command again).\n')


def _wrapped(text: str, width: int) -> list[str]:
  import textwrap  # pylint: disable=g-import-not-at-top
  return textwrap.wrap(text, width) or ['']


def remove_if_empty(workdir: str) -> bool:
  """Removes `workdir` unless some stage in it saved a checkpoint."""
  if not os.path.isdir(workdir):
    return False
  for _, dirs, _ in os.walk(workdir):
    if 'last' in dirs or 'best' in dirs:
      return False
  shutil.rmtree(workdir, ignore_errors=True)
  return True
