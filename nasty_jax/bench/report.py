"""The benchmark's tables: ratios between rows, the reference, output."""

import math
from typing import Any, Sequence

from nasty_jax import jsonio


def write_json(path: str, results: dict[str, Any]) -> None:
  """Writes `results` to `path` atomically (a cut-short run keeps a file)."""
  jsonio.write(path, results, allow_nan=True)


def _key(row: dict[str, Any], **change) -> tuple:
  fields = ('arch', 'mode', 'batch_size', 'dtype', 'parallelism',
            'image_size', 'input')
  merged = {**row, **change}
  return tuple(merged.get(f) for f in fields)


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
  """img/s ratios between rows that differ in one thing.

  Args:
    results: `run`'s results so far.

  Returns:
    Rows {'ratio', the case's fields, 'value', 'value_cpu'}: bf16/fp32,
    pmap/jit, nasty/normal and kd/normal (step-only), epoch/step, and
    stream/device (epochs). 'value' is the wall-clock img/s ratio,
    'value_cpu' the same ratio of process CPU time per image (the one to
    read on a busy CPU).
  """
  out = []
  steps_by_key = {_key(r): r for r in results['steps']}
  epochs_by_key = {_key(r): r for r in results['epochs']}
  comparisons = (
      ('bf16 / fp32 step', steps_by_key, 'dtype', 'bfloat16', 'float32'),
      ('pmap / jit step', steps_by_key, 'parallelism', 'pmap', 'jit'),
      ('nasty / normal step', steps_by_key, 'mode', 'nasty', 'normal'),
      ('kd / normal step', steps_by_key, 'mode', 'kd', 'normal'),
      ('stream / device epoch', epochs_by_key, 'input', 'stream', 'device'),
  )
  for name, table, field, num, den in comparisons:
    for key, row in table.items():
      if row[field] != num:
        continue
      other = table.get(_key(row, **{field: den}))
      if other is not None:
        out.append(_ratio_row(name, row, row['images_per_s']
                              / other['images_per_s'],
                              other['cpu_ms_per_step']
                              / row['cpu_ms_per_step']))
  steps_by_case = {_key(r, input=None): r for r in results['steps']}
  for row in results['epochs']:
    step = steps_by_case[_key(row, input=None)]
    out.append(_ratio_row(f'{row["input"]} epoch / step', row,
                          row['vs_step'], step['cpu_ms_per_step']
                          / row['cpu_ms_per_step']))
  return out


def _ratio_row(name: str, row: dict[str, Any], value: float,
               value_cpu: float) -> dict[str, Any]:
  what = {k: row[k] for k in ('arch', 'mode', 'batch_size', 'dtype',
                              'parallelism', 'image_size')}
  return {'ratio': name, **what, 'value': value, 'value_cpu': value_cpu}


def versus_reference(results: dict[str, Any], reference: dict[str, Any]
                     ) -> list[dict[str, Any]]:
  """Step rows beside `torch_reference_bench.py`'s matching rows.

  Args:
    results: the benchmark's results.
    reference: the reference harness's JSON ({'meta', 'steps'}).

  Returns:
    Rows {'arch', 'mode', 'batch_size', 'torch_images_per_s',
    'images_per_s', 'ratio'} for every fp32 step row the reference has.
  """
  torch_rows = {(r['arch'], r['mode'], r['batch_size']): r
                for r in reference['steps']}
  out = []
  for row in results['steps']:
    other = torch_rows.get((row['arch'], row['mode'], row['batch_size']))
    if other is None or row['dtype'] != 'float32':
      continue
    out.append({'arch': row['arch'], 'mode': row['mode'],
                'batch_size': row['batch_size'],
                'torch_images_per_s': other['images_per_s'],
                'images_per_s': row['images_per_s'],
                'ratio': row['images_per_s'] / other['images_per_s']})
  return out


def _fmt(value: Any) -> str:
  if value is None:
    return '-'
  if isinstance(value, bool):
    return 'yes' if value else 'NO'
  if isinstance(value, float):
    if math.isnan(value):
      return 'nan'
    if abs(value) >= 100:
      return f'{value:,.0f}'
    return f'{value:.3g}' if abs(value) < 10 else f'{value:.1f}'
  return str(value)


def format_table(rows: Sequence[dict[str, Any]],
                 columns: Sequence[tuple[str, str]]) -> str:
  """Aligned text table of `rows` with (header, field) columns."""
  cells = [[header for header, _ in columns]]
  cells += [[_fmt(row.get(field)) for _, field in columns] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  lines = ['  '.join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)


_CASE_COLUMNS = (('arch', 'arch'), ('px', 'image_size'), ('mode', 'mode'),
                 ('dtype', 'dtype'), ('batch', 'batch_size'),
                 ('par', 'parallelism'), ('dev', 'devices'))


def report(results: dict[str, Any]) -> str:
  """The printed summary of `run`'s results."""
  meta = results['meta']
  parts = [f'nasty_jax.bench on {meta["backend"]} ({meta["device_kind"]} x'
           f'{meta["devices"]}), jax {meta["versions"]["jax"]}, load '
           f'{meta["load_average"][0]:.2f} -> '
           f'{meta.get("load_average_end", [float("nan")])[0]:.2f}']
  parts += ['', 'Train steps (step-only, data on device):', format_table(
      results['steps'], _CASE_COLUMNS + (
          ('compile s', 'compile_s'), ('step ms', 'step_ms'),
          ('min', 'step_ms_min'), ('max', 'step_ms_max'),
          ('host ms', 'host_ms_per_step'), ('cpu ms', 'cpu_ms_per_step'),
          ('img/s', 'images_per_s'),
          ('TFLOP/s', 'tflops_per_s'), ('donated', 'donated'),
          ('loss', 'loss')) + (
              (('x ref', 'vs_reference'),) if results['targets'] else ()))]
  if results['epochs']:
    parts += ['', 'Full epochs (input pipeline + step):', format_table(
        results['epochs'], _CASE_COLUMNS + (
            ('input', 'input'), ('data', 'dataset'), ('steps', 'steps'),
            ('setup s', 'setup_s'), ('epoch s', 'epoch_s'),
            ('img/s', 'images_per_s'), ('step img/s', 'step_images_per_s'),
            ('epoch/step', 'vs_step'), ('cpu ms', 'cpu_ms_per_step')))]
  if results['breakdown']:
    parts += ['', 'Where a step goes (jit):', format_table(
        results['breakdown'], _CASE_COLUMNS[:-1] + (
            ('part', 'part'), ('ms', 'ms'),
            ('of step', 'fraction_of_step'), ('cpu ms', 'cpu_ms')))]
  if results['ratios']:
    parts += ['', 'Ratios (img/s):', format_table(
        results['ratios'], (('ratio', 'ratio'),) + _CASE_COLUMNS[:-1] + (
            ('wall', 'value'), ('cpu time', 'value_cpu')))]
  if results['targets']:
    parts += ['', 'Targets:', format_table(
        results['targets'], (('target', 'target'), ('value', 'value'),
                             ('minimum', 'minimum'), ('met', 'met')))]
  if results.get('versus_reference'):
    meta = results['reference_meta']
    parts += ['', f'Side by side with the PyTorch reference (torch '
              f'{meta.get("torch")}, {meta.get("threads")} threads, '
              f'allocator {meta.get("allocator", "?")}):', format_table(
                  results['versus_reference'], (
                      ('arch', 'arch'), ('mode', 'mode'),
                      ('batch', 'batch_size'),
                      ('torch img/s', 'torch_images_per_s'),
                      ('nasty_jax img/s', 'images_per_s'),
                      ('ratio', 'ratio')))]
  return '\n'.join(parts)
