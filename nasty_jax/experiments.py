"""The paper's tables and ablations as runnable experiments.

  python -m nasty_jax.experiments list [NAME]
  python -m nasty_jax.experiments run NAME --workdir DIR [--seeds 0,1,2]
  python -m nasty_jax.experiments report NAME --workdir DIR [--out DIR]
  python -m nasty_jax.experiments report NAME --from_json=FILE... [--out DIR]
  python -m nasty_jax.experiments report NAME --from_json=FILE... --workdir DIR

An entry (`experiments/registry.py`) is a list of runs of the main command
plus the tables and figures its report draws. A run is a config file, its
argument and `--config.x=y` overrides; its folder `DIR/<run name>/seed<S>`
is shared by every entry that names the run, so Table 4 or Figure 4 reuse
the teachers Table 1 trained. An override may point at a stage folder of
another run of the same seed (`StageRef`), e.g. a shared normal teacher
given as `teacher.checkpoint`.

`run` executes each run in process through `pipeline.run`, seed by seed in
dependency order; finished stages are skipped and a killed stage resumes
(the pipeline's behaviour), and a run whose selected stages are all done is
not even opened. `report` (`experiment_report.py`) gathers the runs'
results.json files into markdown tables beside the paper's numbers and
draws the ablation figures. `report --from_json=experiments/results/NAME.json`
redraws a written report (markdown, JSON and plots) from its own JSON, which
keeps every cell's per-seed values, without the run folders: the numbers
stay, the paper's numbers, notes and titles become the registry's current
ones (`experiment_report.results_from_records`; it fails if the entry now
reads a cell the JSON lacks). `--from_json` may be repeated: an entry that
shares runs with another (benchmark_cifar10_cpu with cifar10_cpu) takes
those from the other's record. Given with `--workdir`, the seeds found
there join the records' (a seed in both is the workdir's), so seeds run
later or elsewhere complete a committed report. `list` prints every run as the equivalent
`python -m nasty_jax.main` command line.
"""


from nasty_jax import runtime  # Before jax starts: it sets XLA_FLAGS.

runtime.set_cpu_flags()
runtime.quiet_tensorflow()

import importlib
import os
import shlex
import sys
from typing import Any, Sequence

import ml_collections
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from nasty_jax import cli
from nasty_jax import engine
from nasty_jax import jsonio
from nasty_jax import experiment_report
from nasty_jax import experiment_schema as schema
from nasty_jax import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTRY_MODULE = 'experiments.registry'
RESULTS_FILE = 'results.json'


def load_registry(module: str = REGISTRY_MODULE) -> dict[str, schema.Entry]:
  """Every entry of the registry module (its `ENTRIES`), by name."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  entries = importlib.import_module(module).ENTRIES
  return {entry.name: entry for entry in entries}


def get_entry(name: str, registry: dict[str, schema.Entry]) -> schema.Entry:
  """The entry `name`; raises listing the valid names."""
  if name not in registry:
    raise ValueError(f'Unknown experiment {name!r}. Valid: '
                     f'{", ".join(sorted(registry))}.')
  return registry[name]


def run_dir(workdir: str, run_name: str, seed: int) -> str:
  """Where a run's stages and results.json go for one seed."""
  return os.path.join(workdir, run_name, f'seed{seed}')


def flag_overrides(run: schema.Run, workdir: str, seed: int,
                   extra: Sequence[str] = ()) -> list[str]:
  """The run's `--config.key=value` flags for one seed (refs resolved).

  `extra` ('key=value' items, the command line's `--set`) come last: they
  apply to every run (where the user keeps the data, say).
  """
  out = [f'--config.seed={seed}']
  for key, value in run.overrides:
    if isinstance(value, schema.StageRef):
      value = os.path.join(
          run_dir(workdir, value.run,
                  seed if value.seed is None else value.seed), value.stage)
    out.append(f'--config.{key}={value}')
  if run.stages != 'all':
    out.append(f'--config.stages={run.stages}')
  return out + [f'--config.{item}' for item in extra]


def config_flag(run: schema.Run) -> str:
  path = run.config + (f':{run.arg}' if run.arg else '')
  return f'--config={path}'


def load_config(config_arg: str, overrides: Sequence[str] = ()
                ) -> ml_collections.ConfigDict:
  """A config exactly as the main command builds it from its flags.

  Args:
    config_arg: `path[:arg]`; a relative path is taken from the repository
      root.
    overrides: `--config.key=value` flags.

  Returns:
    The locked config.

  Raises:
    ValueError: a missing config file, an unknown key or a bad value.
  """
  path, sep, arg = config_arg.partition(':')
  if not os.path.isabs(path):
    path = os.path.join(REPO, path)
  if not os.path.exists(path):
    raise ValueError(f'No config file {path}; config files live in '
                     f'{os.path.join(REPO, "configs")}.')
  if REPO not in sys.path:
    sys.path.insert(0, REPO)  # Config files import `configs.common`.
  argv = ['experiments', f'--config={path}{sep}{arg}', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    raise ValueError(f'Bad override for {config_arg} in {overrides}: '
                     f'{e!r}.') from None
  config = flag_values.config
  if not isinstance(config, ml_collections.ConfigDict):
    # config_flags defers a failed load to the first attribute access.
    try:
      config.seed  # pylint: disable=pointless-statement
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'Cannot load {config_arg}: {e}') from e
  return config


def run_config(run: schema.Run, workdir: str, seed: int,
               extra: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config of `run` for `seed`, stage references resolved."""
  return load_config(config_flag(run)[len('--config='):],
                     flag_overrides(run, workdir, seed, extra))


def command(run: schema.Run, workdir: str, seed: int,
            extra: Sequence[str] = ()) -> str:
  """The main command line equivalent to running `run` for `seed`."""
  args = ['python', '-m', 'nasty_jax.main', config_flag(run),
          *flag_overrides(run, workdir, seed, extra),
          f'--workdir={run_dir(workdir, run.name, seed)}']
  return ' '.join(shlex.quote(a) for a in args)


def check_entry(entry: schema.Entry, workdir: str = 'DIR',
                extra: Sequence[str] = ()) -> None:
  """Loads every run's config and checks the entry hangs together.

  Raises:
    ValueError: a run that is defined twice, a reference to a run that
      comes later or not at all, a referenced stage the referenced run does
      not select, a report cell naming an unknown run, or a config that does
      not load.
  """
  runs, selected = {}, {}
  for run in entry.runs:
    if run.name in runs:
      raise ValueError(f'{entry.name}: run {run.name!r} is listed twice.')
    for ref in run.refs:
      if ref.run not in selected:
        raise ValueError(
            f'{entry.name}: run {run.name!r} reads {ref.run!r}, which is '
            'not listed before it.')
      if ref.seed != runs[ref.run].seed:
        raise ValueError(
            f'{entry.name}: run {run.name!r} reads {ref.run!r} at seed '
            f'{ref.seed}, but that run has seed {runs[ref.run].seed}.')
      if ref.stage not in selected[ref.run]:
        raise ValueError(
            f'{entry.name}: run {run.name!r} reads stage {ref.stage!r} of '
            f'{ref.run!r}, which selects only {sorted(selected[ref.run])}.')
    config = run_config(run, workdir, 0, extra)
    stages = pipeline.plan(config, run_dir(workdir, run.name, 0))
    selected[run.name] = {s.spec.name
                          for s in pipeline.select(stages, config.stages)}
    runs[run.name] = run
  for cell in entry.cells():
    if cell.run not in runs:
      raise ValueError(f'{entry.name}: a report cell reads run {cell.run!r}, '
                       f'which the entry does not list.')


def check_registry(registry: dict[str, schema.Entry]) -> None:
  """`check_entry` for every entry, and shared runs defined identically.

  Raises:
    ValueError: see `check_entry`; or two entries that define one run
      folder differently.
  """
  seen = {}
  for entry in registry.values():
    check_entry(entry)
    for run in entry.runs:
      other = seen.setdefault(run.name, (entry.name, run))
      if other[1].identity != run.identity:
        raise ValueError(
            f'Run {run.name!r} differs between {other[0]} and {entry.name}: '
            f'{other[1].identity} vs {run.identity}. A shared folder needs '
            'one definition.')


def _selected_done(config: ml_collections.ConfigDict, directory: str) -> bool:
  """Whether results.json exists and every selected stage is complete."""
  path = os.path.join(directory, RESULTS_FILE)
  if not os.path.exists(path):
    return False
  stages = pipeline.select(pipeline.plan(config, directory), config.stages)
  try:
    # Written by an earlier subset of stages, or before the last finished.
    incomplete = set(jsonio.read(path).get('incomplete', []))
  except jsonio.UnreadableFileError:
    return False  # Rebuilt by the run.
  return not incomplete & {s.spec.name for s in stages} and all(
      engine.read_result(s.directory) is not None for s in stages)


def run_entry(entry: schema.Entry, workdir: str, seeds: Sequence[int],
              extra: Sequence[str] = ()) -> dict[str, Any]:
  """Runs (or resumes, or skips) every run of `entry` for every seed.

  Returns:
    {'ran': [(run, seed)], 'skipped': [(run, seed)], 'preempted': bool},
    plus 'nonfinite': [(run, seed, stage)] when a stage stopped there.
  """
  check_entry(entry, workdir, extra)
  outcome = {'ran': [], 'skipped': [], 'preempted': False}
  for run, seed in run_seeds(entry, seeds):
    directory = run_dir(workdir, run.name, seed)
    config = run_config(run, workdir, seed, extra)
    if _selected_done(config, directory):
      logging.info('%s seed %d: %s is complete; skipping.', entry.name,
                   seed, directory)
      outcome['skipped'].append((run.name, seed))
      continue
    logging.info('%s seed %d: %s', entry.name, seed,
                 command(run, workdir, seed, extra))
    result = pipeline.run(config, directory)
    outcome['ran'].append((run.name, seed))
    if result.get('nonfinite'):
      outcome['nonfinite'] = outcome.get('nonfinite', []) + [
          (run.name, seed, name) for name in result['nonfinite']]
    if result.get('status') == 'preempted':
      logging.warning('Pre-empted in %s; run the same command again to '
                      'resume.', directory)
      outcome['preempted'] = True
      return outcome
  return outcome


def run_seeds(entry: schema.Entry, seeds: Sequence[int]
              ) -> list[tuple[schema.Run, int]]:
  """(run, seed) in execution order: seed by seed, a fixed-seed run once."""
  out = []
  for requested in seeds:
    for run in entry.runs:
      pair = (run, requested if run.seed is None else run.seed)
      if pair not in out:
        out.append(pair)
  return out


def describe(entry: schema.Entry, workdir: str = 'DIR',
             seeds: Sequence[int] = (0,), extra: Sequence[str] = ()) -> str:
  """The entry's title, note and every run as a main command line."""
  lines = [f'{entry.name}: {entry.title}']
  if entry.note:
    lines.append(f'  {entry.note}')
  for run, seed in run_seeds(entry, seeds):
    lines.append('  ' + command(run, workdir, seed, extra))
  return '\n'.join(lines)


def parse_seeds(text: str) -> list[int]:
  """'0,1,2' -> [0, 1, 2]; raises on anything else."""
  try:
    seeds = [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    raise ValueError(f'--seeds takes comma-separated integers, e.g. 0,1,2; '
                     f'got {text!r}.') from None
  if not seeds or any(s < 0 for s in seeds):
    raise ValueError(f'--seeds needs at least one seed >= 0; got {text!r}.')
  return seeds


def gather_results(entry: schema.Entry, workdir: str,
                   seeds: Sequence[int] | None = None
                   ) -> dict[str, dict[int, dict[str, Any]]]:
  """{run name: {seed: results.json}} of the entry's finished runs.

  Args:
    entry: the entry.
    workdir: the workdir it ran in.
    seeds: the seeds to read; None = every `seed<S>` folder found.
  """
  out = {}
  for run in entry.runs:
    base = os.path.join(workdir, run.name)
    found = seeds if run.seed is None else [run.seed]
    if found is None:
      names = os.listdir(base) if os.path.isdir(base) else []
      found = sorted(int(n[4:]) for n in names
                     if n.startswith('seed') and n[4:].isdigit())
    out[run.name] = {}
    for seed in found:
      path = os.path.join(run_dir(workdir, run.name, seed), RESULTS_FILE)
      results = jsonio.read(path, rebuild=f'by `experiments run` '
                            f'(its run {run.name}, seed {seed})')
      if results is not None:
        out[run.name][seed] = results
  return out


def merge_results(base: dict[str, dict[int, dict[str, Any]]],
                  newer: dict[str, dict[int, dict[str, Any]]]
                  ) -> dict[str, dict[int, dict[str, Any]]]:
  """`base` with `newer`'s seeds added; a seed in both is `newer`'s.

  Lets seeds run on another machine (or later) join a committed report:
  `report NAME --from_json=<NAME>.json --workdir=DIR`.
  """
  merged = {run: dict(by_seed) for run, by_seed in base.items()}
  for run, by_seed in newer.items():
    merged.setdefault(run, {}).update(by_seed)
  return merged


def define_flags() -> None:
  """The command line's flags (only when run as a program: the main
  command defines `workdir` too, and both may be imported together)."""
  flags.DEFINE_string('workdir', None,
                      'Root of the runs (each under <run name>/seed<S>).')
  flags.DEFINE_string('seeds', None, 'Comma-separated seeds. run: default 0; '
                      'report: default every seed folder found.')
  flags.DEFINE_multi_string(
      'set', [], 'run: key=value overrides for every run of the entry, e.g. '
      '--set=dataset.manual_dir=/data/cifar10_images.')
  flags.DEFINE_multi_string(
      'from_json', [], 'report: redraw from this <NAME>.json a report '
      'wrote (its per-seed values); repeat it for the records of entries '
      'sharing runs with NAME; with --workdir, the seeds found there are '
      'added to (or replace) the records\'.')
  flags.DEFINE_string('out', os.path.join(REPO, 'experiments', 'results'),
                      'report: where <NAME>.md, <NAME>.json and the PNGs '
                      'go.')


USAGE = """\
Usage:
  python -m nasty_jax.experiments list [NAME]
  python -m nasty_jax.experiments run NAME --workdir DIR [--seeds 0,1,2]
  python -m nasty_jax.experiments report NAME --workdir DIR [--out DIR]
  python -m nasty_jax.experiments report NAME --from_json=FILE... [--out DIR]
  python -m nasty_jax.experiments report NAME --from_json=FILE... --workdir DIR
(--from_json may be given once per record.)"""


def main(argv: Sequence[str]) -> None:
  args = list(argv[1:])
  if not args or args[0] not in ('list', 'run', 'report'):
    raise app.UsageError(USAGE)
  verb, names = args[0], args[1:]
  workdir = None
  if verb != 'list':
    workdir, from_json = flags.FLAGS.workdir, flags.FLAGS.from_json
    if from_json and verb != 'report':
      raise app.UsageError('--from_json is for `report` alone.\n' + USAGE)
    if len(names) != 1 or (workdir is None and not from_json):
      raise app.UsageError(USAGE)
  if verb == 'run':
    cli.quiet_console()
    runtime.configure()
    engine.install_preemption_handler()
  # Bad input (an unknown entry, a missing or unreadable record) is one
  # line and exit 2, as in the main command.
  cli.run_command(lambda: _command(verb, names),
                  workdir if verb == 'run' else None)


def _command(verb: str, names: Sequence[str]) -> dict[str, Any] | None:
  registry = load_registry()
  if verb == 'list':
    for name in names or sorted(registry):
      print(describe(get_entry(name, registry)))  # The command's output.
    return None
  entry = get_entry(names[0], registry)
  seeds = parse_seeds(flags.FLAGS.seeds) if flags.FLAGS.seeds else None
  if verb == 'run':
    return run_entry(entry, flags.FLAGS.workdir, seeds or [0],
                     flags.FLAGS.set)
  _report(entry, seeds)
  return None


def _report(entry: schema.Entry, seeds: Sequence[int] | None) -> None:
  """`report`: from the records given, the workdir's seeds, or both."""
  workdir, results = flags.FLAGS.workdir, {}
  if flags.FLAGS.from_json:
    records = []
    for path in flags.FLAGS.from_json:
      record = jsonio.read(path)
      if record is None:
        raise FileNotFoundError(f'No file {path}: give the <NAME>.json a '
                                'report wrote (experiments/results/).')
      records.append(record)
    results = experiment_report.results_from_records(entry, records)
  if workdir is not None:
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f'No workdir {workdir}: give the --workdir '
                              f'that `run {entry.name}` used.')
    results = merge_results(results, gather_results(entry, workdir, seeds))
  try:
    written = experiment_report.write_report(entry, results, flags.FLAGS.out)
  except OSError as e:
    raise cli.WriteFailedError(
        f'Could not write the report in {flags.FLAGS.out} ('
        f'{type(e).__name__}: {e}). Give a writable --out folder.') from None
  for path in written:
    print(path)  # The command's output: the files written.


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
