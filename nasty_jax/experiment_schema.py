"""What an experiment entry is: runs of the main command, tables, plots.

The registry (`experiments/registry.py`) builds its entries from these
classes; `nasty_jax.experiments` runs them and `experiment_report` draws
them. Nothing here imports training code.
"""

import dataclasses
from typing import Any, Iterable


@dataclasses.dataclass(frozen=True)
class StageRef:
  """The folder of stage `stage` of run `run`: a checkpoint.

  Attributes:
    run: the run's name.
    stage: the stage's name.
    seed: the seed folder to read; None = the same seed as the reading run
      (e.g. students of seeds 0, 1, 2 over the teachers of seed 0).
  """
  run: str
  stage: str
  seed: int | None = None


@dataclasses.dataclass(frozen=True)
class Run:
  """One invocation of the main command (one folder per seed).

  Attributes:
    name: folder under the workdir; entries naming the same run share it
      and must define it identically (stages aside).
    config: config file, relative to the repository root.
    arg: the config argument (the text after ':').
    overrides: `(dotted key, value)` pairs, as `--config.key=value`; a
      `StageRef` value becomes that stage's folder.
    stages: `config.stages`: what this entry needs of the run.
    seed: run once, with this seed, whatever seeds the entry runs (shared
      teachers; `StageRef`s to it name the same seed).
  """
  name: str
  config: str
  arg: str = ''
  overrides: tuple[tuple[str, str | StageRef], ...] = ()
  stages: str = 'all'
  seed: int | None = None

  @property
  def refs(self) -> tuple[StageRef, ...]:
    return tuple(v for _, v in self.overrides if isinstance(v, StageRef))

  @property
  def identity(self) -> tuple[Any, ...]:
    """What must agree between entries sharing the run's folder."""
    return (self.config, self.arg, self.overrides, self.seed)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One number of a report: `key` of run `run`'s results.json.

  Attributes:
    run: the run's name.
    key: 'normal' / 'nasty' (teacher accuracy), '<role>/<arch>' (a student:
      baseline, kd_normal, kd_nasty), or any stage name ('dafl/nasty').
    paper: the paper's number (docs/paper.md; None: it prints none).
    versus: the cell this one's change is measured against (a student
      against its baseline, the nasty teacher against the normal one).
  """
  run: str
  key: str
  paper: float | None = None
  versus: 'Cell | None' = None


@dataclasses.dataclass(frozen=True)
class Table:
  """A markdown table: labelled rows of cells (None: an empty cell).

  Attributes:
    title: its heading.
    columns: column labels.
    rows: (label, cells) pairs.
    note: printed under the heading.
    verdict: a defense x attack matrix: every cell measured against an LS
      student (`versus` an `ls/<arch>` cell) is an attack; the report
      gives each row a verdict line and draws the changes as a heatmap.
  """
  title: str
  columns: tuple[str, ...]
  rows: tuple[tuple[str, tuple[Cell | None, ...]], ...]
  note: str = ''
  verdict: bool = False


@dataclasses.dataclass(frozen=True)
class Series:
  """A line of a plot panel: one cell per x value."""
  label: str
  cells: tuple[Cell, ...]


@dataclasses.dataclass(frozen=True)
class Panel:
  """One axes: series over x, and horizontal reference lines."""
  title: str
  series: tuple[Series, ...]
  references: tuple[tuple[str, Cell], ...] = ()


@dataclasses.dataclass(frozen=True)
class Plot:
  """An ablation figure (PNG): panels side by side sharing the x values."""
  name: str
  title: str
  xlabel: str
  xs: tuple[float, ...]
  panels: tuple[Panel, ...]
  log_x: bool = False


@dataclasses.dataclass(frozen=True)
class Entry:
  """A table row group or ablation of the paper.

  Attributes:
    name: what `run NAME` / `report NAME` take.
    title: the paper's table or figure it reproduces.
    runs: the runs, in dependency order.
    tables: what `report` tabulates.
    plots: what `report` draws.
    note: the schedule and anything that differs from the paper.
  """
  name: str
  title: str
  runs: tuple[Run, ...]
  tables: tuple[Table, ...] = ()
  plots: tuple[Plot, ...] = ()
  note: str = ''

  def cells(self) -> Iterable[Cell]:
    for table in self.tables:
      for _, cells in table.rows:
        yield from (c for c in cells if c is not None)
    for plot in self.plots:
      for panel in plot.panels:
        for series in panel.series:
          yield from series.cells
        yield from (cell for _, cell in panel.references)
