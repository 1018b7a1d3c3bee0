"""The fixtures' deterministic weight rule, rebuilt in numpy.

Every fixture npz stores only the reference state_dict's key/shape list; its
weights come from a seeded rule (docs/reference.md#fixtures), so tests
regenerate them here.
"""

import collections
import pathlib

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def parse_shape(text: str) -> tuple[int, ...]:
  """'[64,3,3,3]' -> (64, 3, 3, 3); '[]' -> ()."""
  text = text.strip()[1:-1]
  return tuple(int(d) for d in text.split(',')) if text else ()


def rule_tensor(index: int, key: str, shape: tuple[int, ...]) -> np.ndarray:
  """The value of the `index`-th state_dict entry under the fixture rule."""
  if key.endswith('num_batches_tracked'):
    return np.array(0, dtype=np.int64)
  z = np.random.RandomState(1000 + index).standard_normal(shape)
  if key.endswith('running_mean'):
    value = 0.1 * z
  elif key.endswith('running_var'):
    value = np.exp(0.2 * z)
  elif key.endswith('weight') and len(shape) >= 2:
    value = z * np.sqrt(2.0 / np.prod(shape[1:]))
  elif key.endswith('weight'):
    value = 1.0 + 0.1 * z
  elif key.endswith('bias'):
    value = 0.1 * z
  else:
    raise ValueError(f'The fixture rule has no case for key {key!r}.')
  return value.astype(np.float32)


def rule_state_dict(keys, shapes) -> collections.OrderedDict:
  """The rule's state_dict for parallel `keys`/`shapes` arrays of an npz."""
  return collections.OrderedDict(
      (str(k), rule_tensor(i, str(k), parse_shape(str(s))))
      for i, (k, s) in enumerate(zip(keys, shapes)))


def load_fixture(name: str):
  """Opens `tests/fixtures/<name>.npz`."""
  return np.load(FIXTURES / f'{name}.npz')


def fixture_state_dict(fixture) -> collections.OrderedDict:
  """Rule weights for an opened model fixture, checked against its sums."""
  state_dict = rule_state_dict(fixture['keys'], fixture['shapes'])
  sums = np.array([np.sum(v, dtype=np.float64) for v in state_dict.values()])
  firsts = np.array([v.reshape(-1)[0] if v.size else 0.0
                     for v in state_dict.values()], dtype=np.float64)
  # Sums differ from the stored ones only by float64 summation order.
  np.testing.assert_allclose(sums, fixture['param_sum'], rtol=1e-12,
                             atol=1e-12)
  np.testing.assert_array_equal(firsts, fixture['param_first'])
  return state_dict
