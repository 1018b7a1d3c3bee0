"""One 3x3 convolution at a time in XLA, beside PyTorch's oneDNN.

  python experiments/torch_conv_bench.py --json=torch_convs.json  # torch
  python -m nasty_jax.bench.convs --reference_json=torch_convs.json

A train step's convolutions are three programs each: the forward, the
input gradient and the kernel gradient. This times each alone, per shape,
as the models run them (NHWC x HWIO, torch's padding 1; the kernel
gradient through `layers.conv2d`, batch-chunked on a CPU, and also as one
call), and prints ms and GFLOP/s beside the reference's NCHW times with
the torch/XLA time ratio (> 1: XLA is faster). It says whether a step's
gap to PyTorch is in the convolutions themselves or in the rest of the
step (the step-level side-by-side is `python -m nasty_jax.bench
--preset=reference`). Shapes are 'HxCinxCoutsS' (input side, channels in
and out, stride): the reference JSON's, or the same defaults.
"""

from nasty_jax import runtime  # Before jax starts: it sets XLA_FLAGS.

runtime.set_cpu_flags()

# pylint: disable=g-import-not-at-top,wrong-import-position
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from nasty_jax import jsonio
from nasty_jax.bench import report
from nasty_jax.models import layers
# pylint: enable=g-import-not-at-top,wrong-import-position

# Every 3x3 convolution shape of PreResNet-20 and of the CIFAR ResNet-18.
SHAPES = ('32x16x16s1', '32x16x32s2', '16x32x32s1', '16x32x64s2',
          '8x64x64s1', '32x64x64s1', '32x64x128s2', '16x128x128s1',
          '16x128x256s2', '8x256x256s1', '8x256x512s2', '4x512x512s1')
PARTS = ('forward', 'input_grad', 'kernel_grad')


def parse(shape: str) -> tuple[int, int, int, int]:
  """'HxCinxCoutsS' -> (H, Cin, Cout, stride), e.g. '32x16x16s1'."""
  try:
    dims, stride = shape.split('s')
    size, cin, cout = dims.split('x')
    return int(size), int(cin), int(cout), int(stride)
  except ValueError:
    raise ValueError(f'A shape is HxCinxCoutsS, e.g. 32x16x16s1; got '
                     f'{shape!r}.') from None


def programs(stride: int) -> dict[str, Callable]:
  """The jitted programs a train step runs for one convolution."""
  def conv(x, k):
    return layers.conv2d(x, k, stride, 1, 1)

  def kernel_grad_one_call(x, k, g):
    return jax.vjp(lambda k: layers._conv(x, k, stride, 1, 1), k)[1](g)[0]  # pylint: disable=protected-access

  return {
      'forward': jax.jit(conv),
      'input_grad': jax.jit(
          lambda x, k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0]),
      'kernel_grad': jax.jit(
          lambda x, k, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0]),
      'kernel_grad_one_call': jax.jit(kernel_grad_one_call),
  }


def _best_ms(fn: Callable, args: Sequence[Any], repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # Compiles.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * min(times)


def measure(shape: str, batch: int, repeats: int) -> dict[str, Any]:
  """ms of each program, and the convolution's GFLOP (multiply-adds x 2)."""
  size, cin, cout, stride = parse(shape)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, cin), np.float32))
  k = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * 0.1)
  out = size // stride
  g = jnp.asarray(rng.standard_normal((batch, out, out, cout), np.float32))
  row = {'shape': shape,
         'gflop': 2 * batch * out * out * cin * cout * 9 / 1e9}
  for name, fn in programs(stride).items():
    args = (x, k) if name == 'forward' else (x, k, g)
    row[f'{name}_ms'] = _best_ms(fn, args, repeats)
  return row


def side_by_side(rows: Sequence[dict[str, Any]],
                 reference: dict[str, Any] | None) -> list[dict[str, Any]]:
  """`rows` with GFLOP/s per part and, given the reference, torch's ms and
  the torch/XLA ratio per part (> 1: XLA is faster)."""
  torch_rows = {r['shape']: r for r in (reference or {}).get('convs', [])}
  out = []
  for row in rows:
    merged = dict(row)
    for part in PARTS + ('kernel_grad_one_call',):
      merged[f'{part}_gflops'] = row['gflop'] / row[f'{part}_ms'] * 1e3
    theirs = torch_rows.get(row['shape'])
    if theirs:
      for part in PARTS:
        merged[f'torch_{part}_ms'] = theirs[f'{part}_ms']
        merged[f'{part}_ratio'] = theirs[f'{part}_ms'] / row[f'{part}_ms']
      merged['torch_ms'] = sum(theirs[f'{p}_ms'] for p in PARTS)
    merged['xla_ms'] = sum(row[f'{p}_ms'] for p in PARTS)
    if theirs:
      merged['ratio'] = merged['torch_ms'] / merged['xla_ms']
    out.append(merged)
  return out


COLUMNS = (('shape', 'shape'), ('GFLOP', 'gflop'),
           ('fwd ms', 'forward_ms'), ('torch', 'torch_forward_ms'),
           ('ratio', 'forward_ratio'),
           ('dX ms', 'input_grad_ms'), ('torch', 'torch_input_grad_ms'),
           ('ratio', 'input_grad_ratio'),
           ('dW ms', 'kernel_grad_ms'), ('torch', 'torch_kernel_grad_ms'),
           ('ratio', 'kernel_grad_ratio'),
           ('dW 1 call', 'kernel_grad_one_call_ms'),
           ('fwd GF/s', 'forward_gflops'), ('dW GF/s', 'kernel_grad_gflops'),
           ('all ratio', 'ratio'))


def define_flags() -> None:
  """The command line's flags; only when run as a program, so importing
  this module beside `nasty_jax.bench`'s own flags defines nothing."""
  flags.DEFINE_list('shapes', list(SHAPES), 'HxCinxCoutsS shapes.')
  flags.DEFINE_integer('batch_size', 128, 'Batch size.')
  flags.DEFINE_integer('repeats', 5, 'Timed calls (the minimum).')
  flags.DEFINE_string(
      'reference_json', None, 'experiments/torch_conv_bench.py output: its '
      'shapes and times.')
  flags.DEFINE_string('json', None, 'Write the results here.')


def main(argv: Sequence[str]) -> None:
  f = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  reference = jsonio.read(f.reference_json) if f.reference_json else None
  shapes = ([r['shape'] for r in reference['convs']] if reference
            else f.shapes)
  batch = reference['meta']['batch_size'] if reference else f.batch_size
  rows = []
  for shape in shapes:
    rows.append(measure(shape, batch, f.repeats))
    print(f'{shape}: ' + ', '.join(
        f'{p} {rows[-1][p + "_ms"]:.1f} ms' for p in PARTS), flush=True)
  table = side_by_side(rows, reference)
  print(f'\nOne convolution, batch {batch}, float32, {jax.default_backend()} '
        f'(load {os.getloadavg()[0]:.2f}); torch/XLA time ratio > 1: XLA '
        'faster. dW is the batch-chunked kernel gradient the models use.\n')
  print(report.format_table(table, COLUMNS))
  if f.json:
    jsonio.write(f.json, {'meta': {'batch_size': batch,
                                        'backend': jax.default_backend(),
                                        'jax': jax.__version__},
                               'convs': table})


if __name__ == '__main__':
  define_flags()
  app.run(main)
