"""One 3x3 convolution at a time in PyTorch, for `nasty_jax.bench.convs`.

Run with a PyTorch install (not a dependency of nasty_jax):

  python experiments/torch_conv_bench.py --json=torch_convs.json

Times, per shape, the forward convolution, its input gradient and its
kernel gradient separately (`torch.ops.aten.convolution_backward` with
one output mask each: the oneDNN primitives a training step calls), in
NCHW float32 with `--threads` intra-op threads; the minimum of `--repeats`
calls after one warm-up. Shapes are 'HxCinxCoutsS' (input side, channels
in and out, stride) at batch `--batch_size`: by default every 3x3
convolution shape of PreResNet-20 and of the CIFAR ResNet-18.
`python -m nasty_jax.bench.convs --reference_json=F` times the same
shapes in XLA and prints both side by side (it reads the shapes from F).
"""

import argparse
import json
import os
import platform
import time

import torch

SHAPES = ('32x16x16s1,32x16x32s2,16x32x32s1,16x32x64s2,8x64x64s1,'
          '32x64x64s1,32x64x128s2,16x128x128s1,16x128x256s2,8x256x256s1,'
          '8x256x512s2,4x512x512s1')


def parse(shape: str) -> tuple[int, int, int, int]:
  """'HxCinxCoutsS' -> (H, Cin, Cout, stride), e.g. '32x16x16s1'."""
  dims, stride = shape.split('s')
  size, cin, cout = dims.split('x')
  return int(size), int(cin), int(cout), int(stride)


def _best(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1000 * min(times)


def measure(shape: str, batch: int, repeats: int) -> dict:
  size, cin, cout, stride = parse(shape)
  torch.manual_seed(0)
  x = torch.randn(batch, cin, size, size)
  w = torch.randn(cout, cin, 3, 3) * 0.1
  g = torch.randn(batch, cout, size // stride, size // stride)
  conv = torch.ops.aten.convolution_backward

  def backward(mask):
    return lambda: conv(g, x, w, None, [stride] * 2, [1, 1], [1, 1], False,
                        [0, 0], 1, mask)

  with torch.no_grad():
    row = {
        'shape': shape,
        'forward_ms': _best(lambda: torch.nn.functional.conv2d(
            x, w, stride=stride, padding=1), repeats),
        'input_grad_ms': _best(backward([True, False, False]), repeats),
        'kernel_grad_ms': _best(backward([False, True, False]), repeats),
    }
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--shapes', default=SHAPES)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--json', default=None)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  rows = []
  for shape in args.shapes.split(','):
    rows.append(measure(shape, args.batch_size, args.repeats))
    print(json.dumps(rows[-1]), flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'meta': {'torch': torch.__version__,
                          'threads': torch.get_num_threads(),
                          'batch_size': args.batch_size,
                          'machine': platform.processor() or platform.machine(),
                          'load_average': list(os.getloadavg())},
                 'convs': rows}, f, indent=1)


if __name__ == '__main__':
  main()
