"""Markdown tables and figures of an experiment entry, over seeds.

`write_report(entry, results, out_dir)` reads the numbers an entry's tables
and plots name (`experiment_schema.Cell`: a run's results.json key) for every
seed, and writes `<entry>.md` (tables beside the paper's numbers, for the
best and for the last epoch), `<entry>.json` (the same numbers with the
per-seed values) and one PNG per plot, with mean ± standard deviation over
seeds. Missing runs or stages leave their cells empty, so a partial report
can be drawn while runs are going. `results_from_records(entry, records)`
turns written `<entry>.json` files back into `write_report`'s input, to
redraw a report (with the registry's current paper numbers and notes)
without its runs.
"""

import os
import textwrap
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')  # Files only; no display on servers and CI.
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt
import numpy as np
# pylint: enable=g-import-not-at-top,wrong-import-position

from nasty_jax import jsonio
from nasty_jax import results as results_lib

KINDS = results_lib.KINDS
# {run name: {seed: results.json}}.
Results = Mapping[str, Mapping[int, Mapping[str, Any]]]


def lookup(results: Mapping[str, Any], key: str, kind: str) -> float | None:
  """Accuracy `key` ('normal', 'kd_nasty/net', 'dafl/nasty', ...) of kind
  'best' or 'last' in one results.json, or None if it is not there.

  A key is a teacher's name, a student's '<role>/<arch>' or a stage name.
  """
  role, _, arch = key.partition('/')
  if key in results.get('teachers', {}):
    found = results['teachers'][key]
  elif role in results.get('students', {}).get(arch, {}):
    found = results['students'][arch][role]
  else:
    found = results.get('stages', {}).get(key)
  value = None if found is None else found.get(kind)
  return None if value is None else float(value)


def cell_values(cell, results: Results, kind: str) -> dict[int, float]:
  """{seed: value} of a cell over the seeds its run has finished."""
  out = {}
  for seed, run_results in results.get(cell.run, {}).items():
    value = lookup(run_results, cell.key, kind)
    if value is not None:
      out[seed] = value
  return out


def summarize(values: Mapping[int, float]) -> dict[str, Any]:
  """Mean, sample standard deviation (ddof=1; 0 for one seed), count."""
  array = np.asarray(list(values.values()), np.float64)
  if not array.size:
    return {'mean': None, 'std': None, 'n': 0, 'values': {}}
  std = float(array.std(ddof=1)) if array.size > 1 else 0.0
  return {'mean': float(array.mean()), 'std': std, 'n': int(array.size),
          'values': {str(k): v for k, v in sorted(values.items())}}


def _cell_summary(cell, results: Results, kind: str) -> dict[str, Any]:
  summary = summarize(cell_values(cell, results, kind))
  summary.update(run=cell.run, key=cell.key, paper=cell.paper, delta=None)
  if cell.versus is None:
    return summary
  reference = cell_values(cell.versus, results, kind)
  # The reference's values too: a cell measured against one the tables do
  # not show (an LS bar) still redraws from the record alone.
  summary['versus'] = {'run': cell.versus.run, 'key': cell.versus.key,
                       'values': {str(k): v for k, v in
                                  sorted(reference.items())}}
  if summary['mean'] is not None:
    # Over the seeds both cells have: a partial report compares like runs.
    values = cell_values(cell, results, kind)
    common = sorted(values.keys() & reference.keys())
    if common:
      summary['delta'] = float(np.mean([values[s] - reference[s]
                                        for s in common]))
  return summary


def _format(summary: dict[str, Any], seeds: int, with_paper: bool) -> str:
  if summary['mean'] is None:
    text = '–'
  else:
    text = f'{summary["mean"]:.2f}'
    if summary['n'] > 1:
      text += f' ± {summary["std"]:.2f}'
    if summary['delta'] is not None:
      text += f' ({summary["delta"]:+.2f})'
    if summary['n'] < seeds:
      text += f' (n={summary["n"]})'
  if with_paper:
    paper = summary['paper']
    text += ' · paper ' + ('n/a' if paper is None else f'{paper:.2f}')
  return text


def table_summaries(table, results: Results, kind: str
                    ) -> list[tuple[str, list[dict[str, Any] | None]]]:
  """Every row's cell summaries (None for an empty cell)."""
  return [(label, [None if c is None else _cell_summary(c, results, kind)
                   for c in cells]) for label, cells in table.rows]


def table_markdown(table, rows, seeds: int, with_paper: bool) -> str:
  """A markdown table from `table_summaries` rows."""
  lines = ['| | ' + ' | '.join(table.columns) + ' |',
           '|---' * (len(table.columns) + 1) + '|']
  for label, cells in rows:
    texts = ['' if s is None else _format(s, seeds, with_paper)
             for s in cells]
    lines.append(f'| {label} | ' + ' | '.join(texts) + ' |')
  return '\n'.join(lines)


def plot_png(plot, results: Results, path: str, kind: str = 'best') -> None:
  """Draws an ablation figure: mean ± std error bars per series."""
  n = len(plot.panels)
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
  xs = np.asarray(plot.xs, np.float64)
  for ax, panel in zip(axes[0], plot.panels):
    for series in panel.series:
      stats = [summarize(cell_values(c, results, kind)) for c in series.cells]
      keep = [i for i, s in enumerate(stats) if s['mean'] is not None]
      if keep:
        ax.errorbar(xs[keep], [stats[i]['mean'] for i in keep],
                    yerr=[stats[i]['std'] for i in keep], marker='o',
                    markersize=4, capsize=3, label=series.label)
    for label, cell in panel.references:
      stats = summarize(cell_values(cell, results, kind))
      if stats['mean'] is None:
        continue
      line = ax.axhline(stats['mean'], linestyle='--', linewidth=1,
                        label=label)
      ax.axhspan(stats['mean'] - stats['std'], stats['mean'] + stats['std'],
                 color=line.get_color(), alpha=0.12, linewidth=0)
    if plot.log_x:
      ax.set_xscale('log')
    ax.set_xticks(xs)
    ax.set_xticklabels([f'{x:g}' for x in xs], fontsize=7)
    ax.set_title(panel.title, fontsize=9)
    ax.set_xlabel(plot.xlabel, fontsize=8)
    ax.set_ylabel(f'test accuracy (%, {kind} epoch)', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=6)
  # ~12 characters of a 10-point title per inch: a one-panel figure wraps
  # what two panels' width would hold on one line.
  fig.suptitle(textwrap.fill(plot.title, int(12 * 4.2 * n)), fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _recorded_values(record: Mapping[str, Any]):
  """(run, key, kind, {seed: value}) of every cell a record holds and of
  every reference a cell is measured against."""
  for table in record['tables']:
    for row in table['rows']:
      for cell in row['cells']:
        if cell is None:
          continue
        yield cell['run'], cell['key'], table['kind'], cell['values']
        if cell.get('versus') is not None:
          versus = cell['versus']
          yield versus['run'], versus['key'], table['kind'], versus['values']


def results_from_records(entry, records: Sequence[Mapping[str, Any]]
                         ) -> dict[str, dict[int, dict[str, Any]]]:
  """{run name: {seed: results.json-like}} rebuilt from written
  `<entry>.json` records, to redraw a report without the run folders.

  Every cell's per-seed `values` (and those of the cell it is measured
  against) go back under its run, seed and key (in `stages`, where `lookup`
  finds any key) as its table's kind ('best' or 'last'), and every run of a
  record's `seeds` keeps its seeds, so `write_report(entry,
  results_from_records(entry, [record]), out)` gives the same numbers with
  the entry's current paper numbers, notes and titles. The plots are
  redrawn too: every plotted cell is a table cell.

  A record of another entry gives the runs the two entries share (as
  benchmark_cifar10_cpu shares cifar10_cpu's teachers and students), and
  nothing else; the rest comes from the entry's own record, a workdir, or
  stays empty.

  Args:
    entry: the `experiment_schema.Entry` to report.
    records: parsed `<entry>.json` files: the entry's own, or of entries
      sharing runs with it.

  Raises:
    ValueError: a record of another entry that shares no run; the entry's
      own record given but the records lacking a cell the entry now reads
      (its numbers need the runs: report from --workdir); or two records or
      cells giving one run, seed, key and kind different values.
  """
  out: dict[str, dict[int, dict[str, Any]]] = {}
  recorded, own = set(), False
  for record in records:
    runs = set(record['seeds'])
    if record.get('entry') == entry.name:
      own = True
    else:
      runs &= {run.name for run in entry.runs}
      if not runs:
        raise ValueError(f'The record is of entry {record.get("entry")!r}, '
                         f'which shares no run with {entry.name!r}.')
    for run in runs:
      for seed in record['seeds'][run]:
        out.setdefault(run, {}).setdefault(int(seed), {'stages': {}})
    for run, key, kind, values in _recorded_values(record):
      if run not in runs:
        continue
      recorded.add((run, key))
      for seed, value in values.items():
        stages = out.setdefault(run, {}).setdefault(int(seed),
                                                    {'stages': {}})
        found = stages['stages'].setdefault(key, {})
        if found.setdefault(kind, value) != value:
          raise ValueError(
              f'{entry.name}: two {kind} values of {key} in run {run}, '
              f'seed {seed}: {found[kind]} and {value}.')
  needed = {(c.run, c.key) for c in entry.cells()}
  needed |= {(c.versus.run, c.versus.key) for c in entry.cells()
             if c.versus is not None}
  missing = sorted(needed - recorded)
  if missing and own:
    raise ValueError(
        f'{entry.name}: the records have no values for {missing}; add the '
        'record of an entry that has them (another --from_json) or report '
        'from the runs (--workdir).')
  return out


def results_from_record(entry, record: Mapping[str, Any]
                        ) -> dict[str, dict[int, dict[str, Any]]]:
  """`results_from_records` of one record."""
  return results_from_records(entry, [record])


def _seed_counts(entry, results: Results) -> dict[str, list[int]]:
  return {run.name: sorted(results.get(run.name, {})) for run in entry.runs}


def _references(entry) -> str:
  """What this entry's changes are measured against, in words."""
  kinds = {'ls': 'a student against the same student trained with label '
                 'smoothing',
           'baseline': 'a student against the same student trained alone'}
  found = []
  for cell in entry.cells():
    if cell.versus is None:
      continue
    role, _, rest = cell.versus.key.partition('/')
    if role in kinds:
      text = kinds[role]
    elif not rest:
      text = f'a teacher against the {role} one'
    elif role.startswith('kd_'):  # 'kd_normal/net': the arch's KD student.
      text = (f'a distilled student against the same student distilled '
              f'from the {role[3:]} teacher')
    else:  # A data-free student ('dafl/normal'): against the same method's.
      text = f'a {role} student against the one from the {rest} teacher'
    if text not in found:
      found.append(text)
  return ', '.join(found) or 'none in this entry'


def write_report(entry, results: Results, out_dir: str) -> list[str]:
  """Writes `<name>.md`, `<name>.json` and `<name>_<plot>.png`.

  Args:
    entry: an `experiment_schema.Entry`.
    results: {run name: {seed: results.json}} (`experiments.gather_results`).
    out_dir: the output folder (created if needed).

  Returns:
    The paths written.
  """
  os.makedirs(out_dir, exist_ok=True)
  seeds = _seed_counts(entry, results)
  max_seeds = max([len(s) for s in seeds.values()] + [0])
  parts = [f'# {entry.title}', '']
  if entry.note:
    parts += [entry.note, '']
  parts += [
      'Test accuracy (%): mean ± sample standard deviation over seeds '
      f'(up to {max_seeds}; fewer are marked n=). In parentheses: the change '
      f'of the mean against its reference ({_references(entry)}). '
      '"paper": the number the paper prints for the cell (best epoch; '
      'docs/paper.md); n/a where it prints none.', '']
  record = {'entry': entry.name, 'title': entry.title, 'note': entry.note,
            'seeds': seeds, 'tables': [], 'plots': []}
  written_heatmaps = []
  for table in entry.tables:
    for kind in KINDS:
      rows = table_summaries(table, results, kind)
      heading = ('best epoch (what the paper reports)' if kind == 'best'
                 else 'last epoch')
      parts += [f'## {table.title}: {heading}', '']
      if table.note:
        parts += [table.note, '']
      with_paper = kind == 'best' and any(
          c is not None and c.paper is not None
          for _, cells in table.rows for c in cells)
      if kind == 'best' and not with_paper:
        parts += ['The paper\'s numbers for this table: n/a (the paper '
                  'prints none for its cells; see the notes).', '']
      parts += [table_markdown(table, rows, max_seeds, with_paper), '']
      if table.verdict and kind == 'best':
        lines = verdict_lines(table, rows)
        parts += ['Verdicts (mean change against the LS student over the '
                  'seeds both have):', ''] + [f'* {l}' for l in lines] + ['']
        name = f'{entry.name}_{_slug(table.title)}_heatmap.png'
        heatmap_png(table, rows, os.path.join(out_dir, name))
        written_heatmaps.append(os.path.join(out_dir, name))
        parts += [f'![{table.title}: change against the LS student]'
                  f'({name})', '']
      record['tables'].append({
          'title': table.title, 'kind': kind, 'columns': list(table.columns),
          'rows': [{'label': label, 'cells': cells} for label, cells in rows]})
  written = []
  for plot in entry.plots:
    name = f'{entry.name}_{plot.name}.png'
    path = os.path.join(out_dir, name)
    plot_png(plot, results, path)
    written.append(path)
    record['plots'].append(name)
    parts += [f'## {plot.title}', '', f'![{plot.title}]({name})', '']
  parts += ['## Seeds per run', '', '| run | seeds |', '|---|---|']
  parts += [f'| {run} | {", ".join(map(str, s)) or "none"} |'
            for run, s in seeds.items()]
  md_path = os.path.join(out_dir, f'{entry.name}.md')
  jsonio.write_text(md_path, '\n'.join(parts) + '\n')
  json_path = os.path.join(out_dir, f'{entry.name}.json')
  jsonio.write(json_path, record)
  return [md_path, json_path] + written + written_heatmaps


def _slug(text: str) -> str:
  return ''.join(c if c.isalnum() else '_' for c in text.lower()).strip('_')


def _is_attack(cell) -> bool:
  return (cell is not None and cell.versus is not None
          and cell.versus.key.split('/')[0] == 'ls')


def verdict_lines(table, rows) -> list[str]:
  """One verdict per row of a defense x attack table (see Table.verdict)."""
  lines = []
  for (label, cells), (_, summaries) in zip(table.rows, rows):
    attacks = [(column, s) for column, c, s in zip(table.columns, cells,
                                                   summaries)
               if _is_attack(c)]
    known = [(column, s['delta']) for column, s in attacks
             if s is not None and s['delta'] is not None]
    if len(known) < len(attacks) or not known:
      lines.append(f'{label}: incomplete ({len(known)} of {len(attacks)} '
                   'attacks measured).')
      continue
    column, margin = max(known, key=lambda kv: kv[1])
    if margin > 0:
      lines.append(f'{label}: distillable: {column} beats the LS student by '
                   f'{margin:.2f} points.')
    else:
      lines.append(f'{label}: undistillable under all {len(known)} attacks '
                   f'(closest: {column}, {margin:+.2f}).')
  return lines


def heatmap_cells(table, rows) -> tuple[list[int], np.ndarray, np.ndarray]:
  """The attack columns, their changes (NaN where none) and cell texts."""
  columns = [i for i, c in enumerate(table.rows[0][1]) if _is_attack(c)]
  matrix = np.full((len(rows), len(columns)), np.nan)
  texts = np.full(matrix.shape, 'not run', dtype=object)
  for r, (_, summaries) in enumerate(rows):
    for j, i in enumerate(columns):
      s = summaries[i]
      if s is None or s['mean'] is None:
        continue
      if s['delta'] is None:  # Measured, but its LS bar was not.
        texts[r, j] = f'{s["mean"]:.1f}\nno bar'
      else:
        matrix[r, j] = s['delta']
        texts[r, j] = f'{s["delta"]:+.1f}'
  return columns, matrix, texts


def heatmap_png(table, rows, path: str) -> None:
  """The attack cells' mean change against the LS student, as a heatmap."""
  columns, matrix, texts = heatmap_cells(table, rows)
  bound = max(1.0, float(np.nanmax(np.abs(matrix))) if np.isfinite(
      matrix).any() else 1.0)
  # Wide enough for the row labels and colour bar; the title wraps to fit.
  width = max(4.0, 2.5 + 0.9 * len(columns))
  fig, ax = plt.subplots(figsize=(width, 1.6 + 0.5 * len(rows)))
  image = ax.imshow(matrix, cmap='RdBu_r', vmin=-bound, vmax=bound,
                    aspect='auto')
  for r in range(matrix.shape[0]):
    for j in range(matrix.shape[1]):
      dark = np.isfinite(matrix[r, j]) and abs(matrix[r, j]) > bound / 2
      ax.text(j, r, texts[r, j], ha='center', va='center', fontsize=7,
              color='white' if dark else 'black')
  ax.set_xticks(range(len(columns)))
  ax.set_xticklabels([table.columns[i] for i in columns], rotation=45,
                     ha='right', fontsize=7)
  ax.set_yticks(range(len(rows)))
  ax.set_yticklabels([label for label, _ in rows], fontsize=8)
  fig.colorbar(image, ax=ax, label='knockoff - LS student (points)')
  ax.set_title(textwrap.fill(table.title, width=int(width * 9)), fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90, bbox_inches='tight')  # Keeps the bar label.
  plt.close(fig)

