"""PyTorch <-> Flax conversion: key layout, round trips, errors, real files.

The numeric proof that the mapping is right is tests/models_test.py (every
fixture goes through `torch_to_flax`); this file checks the layout against the
reference's key lists, exact round trips, the error messages, the real
`torch.save` files and the command line.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nasty_jax import checkpointing
from nasty_jax import cli
from nasty_jax import convert
from nasty_jax import models
from tests import reference_weights

TORCH_FILES = ('preresnet20_zipformat.tar',
               'preresnet20_legacyformat_dataparallel.tar')


def _reference_keys(arch: str) -> list[tuple[str, tuple[int, ...]]]:
  """keys/<arch>.txt: the reference state_dict's (key, shape), 10 classes."""
  path = reference_weights.FIXTURES / 'keys' / f'{arch}.txt'
  rows = [line.split() for line in path.read_text().splitlines() if line]
  return [(key, reference_weights.parse_shape(shape)) for key, shape in rows]


def _random_variables(arch: str, num_classes: int, seed: int = 0):
  """Random float32 numpy variables shaped like `arch`'s init."""
  model = models.get_model(arch, num_classes)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  rng = np.random.RandomState(seed)
  return jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


@functools.cache
def _preresnet20_state_dict():
  return reference_weights.fixture_state_dict(
      reference_weights.load_fixture('preresnet20_10c_32px'))


@pytest.mark.parametrize('arch', models.MODEL_NAMES)
def test_layout_and_round_trip(arch):
  variables = _random_variables(arch, 10)
  state_dict = convert.flax_to_torch(arch, variables)
  # The reference's keys, shapes and even order.
  assert [(k, v.shape) for k, v in state_dict.items()] == _reference_keys(
      arch)
  for key, value in state_dict.items():
    expected = np.int64 if key.endswith('num_batches_tracked') else np.float32
    assert value.dtype == expected, key
  back = convert.torch_to_flax(arch, state_dict, 10)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, back, variables)


@pytest.mark.parametrize('num_classes', [100, 200])
def test_num_classes_is_read_off_the_classifier(num_classes):
  variables = _random_variables('mobilenetv2', num_classes)
  state_dict = convert.flax_to_torch('mobilenetv2', variables)
  assert state_dict['conv2.weight'].shape == (num_classes, 1280, 1, 1)
  np.testing.assert_array_equal(
      state_dict['conv2.weight'][:, :, 0, 0],
      variables['params']['conv2']['kernel'][0, 0].T)


def test_conv_and_dense_layouts():
  variables = convert.torch_to_flax('preresnet20', _preresnet20_state_dict(),
                                    10)
  state_dict = _preresnet20_state_dict()
  np.testing.assert_array_equal(
      variables['params']['layer2']['0']['downsample']['0']['kernel'],
      state_dict['layer2.0.downsample.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables['params']['fc']['kernel'],
                                state_dict['fc.weight'].T)
  np.testing.assert_array_equal(variables['batch_stats']['bn']['var'],
                                state_dict['bn.running_var'])


def test_data_parallel_prefix_and_missing_num_batches_tracked():
  state_dict = {'module.' + k: v for k, v in _preresnet20_state_dict().items()
                if not k.endswith('num_batches_tracked')}
  variables = convert.torch_to_flax('preresnet20', state_dict, 10)
  np.testing.assert_array_equal(variables['params']['conv1']['kernel'],
                                state_dict['module.conv1.weight'].transpose(
                                    2, 3, 1, 0))


def _error(state_dict, num_classes=10) -> str:
  with pytest.raises(ValueError) as error:
    convert.torch_to_flax('preresnet20', state_dict, num_classes)
  message = str(error.value)
  assert '\n' not in message
  return message


def test_missing_key_is_named_with_its_shape():
  state_dict = dict(_preresnet20_state_dict())
  del state_dict['layer3.2.conv2.weight']
  assert 'missing key(s): layer3.2.conv2.weight [64,64,3,3]' in _error(
      state_dict)


def test_unexpected_key_is_named_with_its_shape():
  state_dict = dict(_preresnet20_state_dict(), **{
      'layer1.0.shortcut.0.weight': np.zeros((16, 16, 1, 1), np.float32)})
  assert ('unexpected key(s): layer1.0.shortcut.0.weight [16,16,1,1]'
          in _error(state_dict))


def test_shape_mismatch_names_both_torch_shapes():
  message = _error(_preresnet20_state_dict(), num_classes=100)
  assert 'fc.weight expects [100,64] but got [10,64]' in message
  assert 'fc.bias expects [100] but got [10]' in message
  assert 'num_classes' in message


def test_flax_side_errors():
  variables = _random_variables('net', 10)
  variables['params']['fc1']['weight'] = variables['params']['fc1'].pop(
      'kernel')
  with pytest.raises(ValueError, match="fc1/weight: no torch counterpart"):
    convert.flax_to_torch('net', variables)
  with pytest.raises(ValueError, match='Unknown variable collection'):
    convert.flax_to_torch('net', {'params': {}, 'opt_state': {}}, 10)
  with pytest.raises(ValueError, match='missing key'):
    convert.flax_to_torch('resnet18', _random_variables('net', 10), 10)
  with pytest.raises(ValueError, match='valid names'):
    convert.torch_to_flax('resnet19', {}, 10)


def _check_preresnet20(variables):
  """Equal to the fixture's rule weights, hence the fixture's logits."""
  expected = convert.torch_to_flax('preresnet20', _preresnet20_state_dict(),
                                   10)
  jax.tree.map(np.testing.assert_array_equal, variables, expected)
  fixture = reference_weights.load_fixture('preresnet20_10c_32px')
  logits = models.get_model('preresnet20', 10).apply(
      variables, fixture['input'].transpose(0, 2, 3, 1))
  ref = fixture['eval_logits']
  assert np.max(np.abs(logits - ref)) / np.max(np.abs(ref)) < 1e-4


@pytest.mark.parametrize('filename', TORCH_FILES)
def test_real_torch_checkpoints(filename):
  state_dict = convert.load_torch_checkpoint(
      reference_weights.FIXTURES / filename)
  _check_preresnet20(convert.torch_to_flax('preresnet20', state_dict, 10))


def test_cli_writes_a_loadable_checkpoint(tmp_path, capsys):
  source = str(reference_weights.FIXTURES / TORCH_FILES[1])
  out = str(tmp_path / 'converted')
  argv = ['--arch', 'preresnet20', '--num_classes', '10',
          '--torch_checkpoint', source, '--out', out]
  convert.main(argv)
  variables, meta = checkpointing.load_variables(out)
  assert meta == {'arch': 'preresnet20', 'num_classes': 10, 'source': source,
                  'epoch': 3}
  _check_preresnet20(variables)

  # A second run refuses to overwrite, in one line, unless told to.
  assert 'exists and is not empty; pass --overwrite' in _error_line(
      capsys, convert.main, argv)
  convert.main(argv + ['--overwrite'])

  # And back to a state_dict .npz equal to the rule's.
  npz = str(tmp_path / 'state.npz')
  convert.main(['--to_torch', '--variables', out, '--out', npz])
  with np.load(npz) as exported:
    assert list(exported.keys()) == list(_preresnet20_state_dict())
    for key, value in _preresnet20_state_dict().items():
      np.testing.assert_array_equal(exported[key], value)
  capsys.readouterr()


@pytest.mark.parametrize('argv,message', [
    (['--arch', 'preresnet20', '--num_classes', '100'],
     'fc.weight expects [100,64] but got [10,64]'),
    (['--arch', 'resnet18', '--num_classes', '10'], 'missing key(s): '),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
  source = str(reference_weights.FIXTURES / TORCH_FILES[0])
  text = _error_line(capsys, convert.main, argv + [
      '--torch_checkpoint', source, '--out', str(tmp_path / 'out')])
  assert message in text
  assert not (tmp_path / 'out').exists()


def test_cli_overwrite_never_deletes_a_foreign_directory(tmp_path, capsys):
  (tmp_path / 'thesis.tex').write_text('precious')
  text = _error_line(capsys, convert.main, [
      '--arch', 'preresnet20', '--num_classes', '10', '--torch_checkpoint',
      str(reference_weights.FIXTURES / TORCH_FILES[0]), '--out',
      str(tmp_path), '--overwrite'])
  assert 'does not look like a checkpoint directory' in text
  assert (tmp_path / 'thesis.tex').read_text() == 'precious'


def test_cli_rejects_a_non_checkpoint(tmp_path, capsys):
  bogus = tmp_path / 'notes.txt'
  bogus.write_text('not a checkpoint')
  text = _error_line(capsys, convert.main, [
      '--arch', 'net', '--num_classes', '10', '--torch_checkpoint',
      str(bogus), '--out', str(tmp_path / 'out')])
  assert 'is not a readable PyTorch checkpoint' in text


def _error_line(capsys, main, argv) -> str:
  """The one stderr line of a command that exits 2 on bad input."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as error:
    main(argv)
  assert error.value.code == cli.EXIT_BAD_INPUT
  text = capsys.readouterr().err
  assert text.startswith('error: ') and text.count('\n') == 1, text
  return text
