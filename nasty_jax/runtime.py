"""Process set-up shared by every entry point (main, experiments, bench).

Call `configure()` before the first JAX computation (XLA reads its flags
when the backend starts):

* XLA:CPU's plain thunk scheduler instead of its concurrency-optimised one,
  which on a few cores runs independent convolutions side by side and
  makes each slower (a train step 6% faster here, docs/performance.md).
  Only the order of the same operations changes, not what they compute.
  It names an `xla_cpu_*` option, so GPU and TPU runs are unaffected.
  `NASTY_JAX_CPU_FLAGS=0` leaves XLA_FLAGS alone; a flag already in
  XLA_FLAGS wins.
* TensorFlow (imported by clu's writers) is kept off the accelerators.
* A persistent compilation cache (~/.cache/nasty_jax/xla unless
  JAX_COMPILATION_CACHE_DIR is set): reruns and the stages of one run reuse
  compiled programs.

The memory allocator matters as much on a CPU (glibc returns a step's
large temporaries to the kernel and takes them back as fresh zeroed pages
every step); `run.sh` preloads tcmalloc when it is installed, and
`allocator()` says which one this process has.
"""

import os
import platform

CPU_XLA_FLAGS = ('--xla_cpu_enable_concurrency_optimized_scheduler=false',)


def cpu_xla_flags(current: str) -> str:
  """`current` XLA_FLAGS plus each CPU flag it does not set itself."""
  present = {f.split('=', 1)[0] for f in current.split()}
  extra = [f for f in CPU_XLA_FLAGS if f.split('=', 1)[0] not in present]
  return ' '.join([current.strip()] + extra).strip()


def set_cpu_flags() -> None:
  """Adds `CPU_XLA_FLAGS` to the environment's XLA_FLAGS (see the module)."""
  if os.environ.get('NASTY_JAX_CPU_FLAGS', '1') != '0':
    os.environ['XLA_FLAGS'] = cpu_xla_flags(os.environ.get('XLA_FLAGS', ''))


def host() -> dict[str, str]:
  """What a stage's numbers depend on besides its config and seed.

  The backend, its first device, the CPU model with its widest vector ISA,
  and the jax version. XLA:CPU's convolution and matmul libraries pick
  their kernels for the CPU they run on, so the same command can round
  float sums differently on another host: on the small digits set that
  moves test accuracies by an image or two (experiments/results/README.md).
  """
  import jax  # pylint: disable=g-import-not-at-top
  return {'backend': jax.default_backend(),
          'device_kind': jax.devices()[0].device_kind,
          'cpu': cpu_model(), 'jax': jax.__version__}


def chip(host_info: dict[str, str]) -> str:
  """What does a stage's arithmetic: the CPU model on the CPU backend (the
  host's ISA picks XLA:CPU's kernels), the accelerator's kind elsewhere."""
  if host_info['backend'] == 'cpu':
    return host_info['cpu']
  return host_info['device_kind']


def cpu_model(cpuinfo: str = '/proc/cpuinfo') -> str:
  """'<model name> (<widest x86 SIMD>)' on Linux; the platform's words
  elsewhere."""
  try:
    with open(cpuinfo) as f:
      lines = f.read().splitlines()
  except OSError:
    return platform.processor() or platform.machine()
  fields = {}
  for line in lines:
    key, _, value = line.partition(':')
    fields.setdefault(key.strip(), value.strip())
  model = fields.get('model name') or platform.machine()
  flags = set(fields.get('flags', '').split())
  isa = next((name for flag, name in (('avx512f', 'AVX-512'), ('avx2', 'AVX2'),
                                      ('avx', 'AVX')) if flag in flags), None)
  return f'{model} ({isa})' if isa else model


def allocator() -> str:
  """The malloc this process preloads ('tcmalloc', 'jemalloc' or 'glibc')."""
  preload = os.environ.get('LD_PRELOAD', '')
  for name in ('tcmalloc', 'jemalloc'):
    if name in preload:
      return name
  return 'glibc'


def configure(compilation_cache: bool = True) -> None:
  """Everything above, in order; safe to call more than once."""
  set_cpu_flags()
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
  except ImportError:
    pass
  import jax  # pylint: disable=g-import-not-at-top
  if compilation_cache and not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', os.path.join(
        os.path.expanduser('~'), '.cache', 'nasty_jax', 'xla'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def quiet_tensorflow() -> None:
  """TensorFlow's start-up chatter off (call before anything imports it).

  TensorFlow only reads files here (TFDS, clu's TensorBoard writer): its
  oneDNN kernels never touch a number we compute, so turning them off loses
  nothing and drops the "oneDNN custom operations are on" lines.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')


def initialize_distributed(coordinator: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """`jax.distributed.initialize`, with CPU collectives over gloo.

  On Cloud TPU and managed GPU clusters every argument is detected; on
  plain machines (or several processes of one machine) give all three.
  CPU-only processes exchange gradients through gloo: XLA:CPU has no
  cross-process collectives of its own.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if os.environ.get('JAX_PLATFORMS', '').startswith('cpu') or (
      coordinator and coordinator.startswith(('localhost', '127.'))):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    # A program with gloo collectives read back from the persistent
    # compilation cache deadlocks in its first all-reduce (jax 0.12: every
    # rerun of a 2-process CPU job hung, resumes included); compile afresh.
    jax.config.update('jax_enable_compilation_cache', False)
  # A dead peer stops the others after this many seconds without a
  # heartbeat (JAX's default 100; NASTY_JAX_HEARTBEAT_TIMEOUT changes it).
  heartbeat = int(os.environ.get('NASTY_JAX_HEARTBEAT_TIMEOUT', '100'))
  jax.distributed.initialize(coordinator_address=coordinator,
                             num_processes=num_processes,
                             process_id=process_id,
                             heartbeat_timeout_seconds=heartbeat)
