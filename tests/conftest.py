"""Test set-up: 4 fake CPU devices and strict rank promotion, before jax loads.

Many tests compile the same small programs (a tiny model's steps in several
stages); a persistent compilation cache shared by the session turns the
repeats into cache hits.
"""

import os
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_NUMPY_RANK_PROMOTION', 'raise')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'nasty_jax_test_xla'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

# The CPU flags every entry point sets: tests run what users run.
from nasty_jax import runtime  # pylint: disable=g-import-not-at-top

runtime.set_cpu_flags()

import pathlib  # pylint: disable=g-import-not-at-top

import pytest  # pylint: disable=g-import-not-at-top

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


@pytest.fixture(scope='session')
def fixtures_dir() -> pathlib.Path:
  return FIXTURES
