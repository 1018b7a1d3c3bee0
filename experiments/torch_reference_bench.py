"""Train-step img/s of the PyTorch reference's own models, for `bench`.

Run with a PyTorch install (not a dependency of nasty_jax) and a checkout of
the reference repository (VITA-Group/Nasty-Teacher, whose `model/` package
holds the architectures):

  python experiments/torch_reference_bench.py --reference_dir=PATH \\
      --archs=preresnet20,net,resnet18 --modes=normal,nasty --json=torch.json

What is timed matches `python -m nasty_jax.bench` on synthetic data: one
SGD step (momentum 0.9, weight decay 5e-4) of the trained network in train
mode on a resident random batch, plus, in nasty mode, the frozen
adversary's eval-mode forward under `no_grad` and the loss
CE - omega * tau^2 * KL(nasty || adversary). Four resident batches are
rotated; the median of `--repeats` windows of `--steps` steps is reported
after two warm-up steps. `--threads` sets torch's intra-op threads.
`bench --reference_json=FILE` prints the ratio table against this file.
"""

import argparse
import json
import os
import platform
import sys
import time
import types

import torch
import torch.nn.functional as F


def build(arch: str, num_channels: int) -> torch.nn.Module:
  import model as reference  # pylint: disable=g-import-not-at-top,import-error
  if arch == 'preresnet20':
    return reference.PreResNet(depth=20, num_classes=10)
  if arch == 'preresnet32':
    return reference.PreResNet(depth=32, num_classes=10)
  if arch == 'resnet18':
    return reference.ResNet18(num_class=10)
  if arch == 'net':
    return reference.Net(10, types.SimpleNamespace(num_channels=num_channels,
                                                   dropout_rate=0.0))
  raise ValueError(f'No reference constructor for {arch!r} here; valid: '
                   'preresnet20, preresnet32, resnet18, net.')


def measure(arch: str, mode: str, args) -> dict:
  torch.manual_seed(0)
  net = build(arch, args.num_channels).train()
  adversary = build(arch, args.num_channels).eval() if mode == 'nasty' else None
  opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9,
                        weight_decay=5e-4)
  images = [torch.randn(args.batch_size, 3, 32, 32) for _ in range(4)]
  labels = [torch.randint(0, 10, (args.batch_size,)) for _ in range(4)]

  def step(i):
    x, y = images[i % 4], labels[i % 4]
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    if adversary is not None:
      with torch.no_grad():
        adv = adversary(x)
      t = 4.0
      kl = F.kl_div(F.log_softmax(adv / t, 1), F.softmax(logits / t, 1),
                    reduction='batchmean') * t * t
      loss = loss - 0.04 * kl
    opt.zero_grad()
    loss.backward()
    opt.step()

  for i in range(2):
    step(i)
  windows = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for i in range(args.steps):
      step(i)
    windows.append((time.perf_counter() - start) / args.steps)
  windows.sort()
  median = windows[len(windows) // 2]
  return {'impl': 'torch', 'arch': arch, 'mode': mode,
          'batch_size': args.batch_size, 'dtype': 'float32',
          'step_ms': 1000 * median, 'min_ms': 1000 * windows[0],
          'max_ms': 1000 * windows[-1],
          'images_per_s': args.batch_size / median}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reference_dir', required=True,
                      help='checkout holding the reference model/ package')
  parser.add_argument('--archs', default='preresnet20,net,resnet18')
  parser.add_argument('--modes', default='normal,nasty')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--num_channels', type=int, default=32)
  parser.add_argument('--json', default=None)
  args = parser.parse_args()
  if not os.path.isdir(os.path.join(args.reference_dir, 'model')):
    sys.exit(f'{args.reference_dir} has no model/ package: pass a checkout '
             'of the reference repository as --reference_dir.')
  sys.path.insert(0, args.reference_dir)
  torch.set_num_threads(args.threads)
  rows = []
  for arch in args.archs.split(','):
    for mode in args.modes.split(','):
      rows.append(measure(arch, mode, args))
      print(json.dumps(rows[-1]), flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'meta': {'torch': torch.__version__,
                          'threads': torch.get_num_threads(),
                          'allocator': ('tcmalloc' if 'tcmalloc' in
                                        os.environ.get('LD_PRELOAD', '')
                                        else 'glibc'),
                          'machine': platform.processor() or platform.machine(),
                          'load_average': list(os.getloadavg())},
                 'steps': rows}, f, indent=1)


if __name__ == '__main__':
  main()
