"""The model zoo against the PyTorch reference's fixtures
(docs/reference.md#architectures, §9).

Each fixture's rule weights go through `convert.torch_to_flax`; eval logits
and features, train-mode logits and the running statistics after one
train-mode forward must match to the fixtures README's float32 tolerances
(relative to max|reference|). Run with `-s` to see the error table.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nasty_jax import convert
from nasty_jax import models
from nasty_jax.models import layers
from tests import reference_weights

FIXTURES = [
    f'{arch}_10c_32px' for arch in models.MODEL_NAMES
] + [f'{arch}_200c_64px' for arch in ('resnet18', 'resnet50', 'resnext29',
                                      'mobilenetv2', 'shufflenetv2')]
# fixtures README, float32 column.
LOGITS_TOL = 1e-4
BN_TOL = 5e-5
# docs/reference.md#architectures table: trainable parameters for C = 10 / 100 /
# 200.
PARAM_COUNTS = {
    'resnet18': (11_173_962, 11_220_132, 11_271_432),
    'resnet34': (21_282_122, 21_328_292, 21_379_592),
    'resnet50': (23_520_842, 23_705_252, 23_910_152),
    'preresnet20': (272_282, 278_132, 284_632),
    'preresnet32': (466_714, 472_564, 479_064),
    'resnext29': (34_426_698, 34_518_948, 34_621_448),
    'mobilenetv2': (2_254_090, 2_369_380, 2_497_480),
    'shufflenetv2': (1_268_646, 1_360_896, 1_463_396),
    'net': (357_514, 369_124, 382_024),
    'mlp': (1_841_162, 1_887_332, 1_938_632),
}
# fixtures README: the classifier's input width D.
FEATURE_DIMS = {'resnet18': 512, 'resnet34': 512, 'resnet50': 2048,
                'preresnet20': 64, 'preresnet32': 64, 'resnext29': 1024,
                'mobilenetv2': 1280, 'shufflenetv2': 1024, 'net': 128,
                'mlp': 512}
_ERRORS = {}


def _key(seed: int) -> jax.Array:
  """An init key. Threefry bit generation compiles very slowly on XLA:CPU
  (seconds per parameter shape); 'rbg' draws the same distributions."""
  return jax.random.key(seed, impl='rbg')


def _rel(ours, ref) -> float:
  ref = np.asarray(ref, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref))
               / np.max(np.abs(ref)))


def _at(tree, dotted: str):
  for key in dotted.split('.'):
    tree = tree[key]
  return tree


def _parse(name: str) -> tuple[str, int]:
  arch, classes, _ = name.split('_')
  return arch, int(classes[:-1])


@functools.cache
def _fixture(name: str):
  """(fixture, model, converted variables, NHWC input)."""
  arch, num_classes = _parse(name)
  fixture = reference_weights.load_fixture(name)
  variables = convert.torch_to_flax(
      arch, reference_weights.fixture_state_dict(fixture), num_classes)
  return (fixture, models.get_model(arch, num_classes), variables,
          fixture['input'].transpose(0, 2, 3, 1))


def _eval_and_train(model, variables, x):
  """Both forwards in one compiled call (one compile per fixture)."""

  def run(variables, x):
    logits, features = model.apply(variables, x, train=False,
                                   return_features=True)
    train_logits, updates = model.apply(variables, x, train=True,
                                        mutable=['batch_stats'])
    return logits, features, train_logits, updates

  return jax.device_get(jax.jit(run)(variables, x))


@pytest.fixture(scope='module', autouse=True)
def _error_table():
  yield
  if _ERRORS:
    print('\nmax |ours - ref| / max|ref| (float32, CPU)')
    print(f'{"fixture":24s} {"eval":>9s} {"features":>9s} {"train":>9s} '
          f'{"BN stats":>9s}')
    for name, e in _ERRORS.items():
      print(f'{name:24s} ' + ' '.join(
          f'{e[k]:9.2e}' if k in e else f'{"-":>9s}'
          for k in ('eval', 'features', 'train', 'bn')))


@pytest.mark.parametrize('name', FIXTURES)
def test_matches_reference(name):
  fixture, model, variables, x = _fixture(name)
  logits, features, train_logits, updates = _eval_and_train(model, variables,
                                                            x)
  assert logits.dtype == np.float32 and logits.shape == (
      x.shape[0], _parse(name)[1])
  errors = {'eval': _rel(logits, fixture['eval_logits']),
            'features': _rel(features, fixture['eval_features']),
            'train': _rel(train_logits, fixture['train_logits'])}
  if 'bn_names' in fixture:
    stats = updates['batch_stats']
    compared = []
    for which in ('first', 'last'):
      bn = _at(stats, str(fixture[f'bn_{which}_name']))
      compared += [(bn['mean'], fixture[f'bn_{which}_running_mean_after']),
                   (bn['var'], fixture[f'bn_{which}_running_var_after'])]
    for moment, leaf in (('mean', 'mean'), ('var', 'var')):
      chanmean = [np.mean(_at(stats, str(n))[leaf])
                  for n in fixture['bn_names']]
      compared.append(
          (chanmean, fixture[f'bn_all_running_{moment}_after_chanmean']))
    errors['bn'] = max(_rel(ours, ref) for ours, ref in compared)
  _ERRORS[name] = errors
  assert errors['eval'] < LOGITS_TOL, errors
  assert errors['features'] < LOGITS_TOL, errors
  assert errors['train'] < LOGITS_TOL, errors
  assert errors.get('bn', 0.0) < BN_TOL, errors


@pytest.mark.parametrize('name', ['net_10c_32px', 'preresnet20_10c_32px',
                                  'mobilenetv2_10c_32px'])
def test_float64_matches_reference_beyond_float32_noise(name):
  """The float32 errors above are rounding: in float64 they vanish (the
  references are float64 results stored as float32)."""
  fixture, _, variables, x = _fixture(name)
  arch, num_classes = _parse(name)
  with jax.enable_x64(True):
    model = models.get_model(arch, num_classes, dtype=jnp.float64)
    variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
    logits, _, train_logits, updates = _eval_and_train(
        model, variables, jnp.asarray(x, jnp.float64))
  first = _at(updates['batch_stats'], str(fixture['bn_first_name']))
  assert _rel(logits, fixture['eval_logits']) < 1e-6
  assert _rel(train_logits, fixture['train_logits']) < 1e-6
  assert _rel(first['var'], fixture['bn_first_running_var_after']) < 1e-6


def test_running_var_update_is_unbiased():
  """net's fcbn1 (BatchNorm1d, n=4): a biased update would fail the test."""
  fixture, model, variables, x = _fixture('net_10c_32px')
  _, updates = model.apply(variables, x, train=True,
                           mutable=['batch_stats', 'bn_stats'])
  (_, batch_var), = updates['bn_stats']['fcbn1']['input_stats']
  before = fixture['bn_last_running_var_before']
  ref = fixture['bn_last_running_var_after']
  biased_update = 0.9 * before + 0.1 * np.asarray(batch_var)
  assert _rel(biased_update, ref) > 10 * BN_TOL
  assert _rel(updates['batch_stats']['fcbn1']['var'], ref) < BN_TOL


@pytest.mark.parametrize('name', ['resnet18_10c_32px', 'net_10c_32px'])
def test_eval_mode_captures_bn_input_statistics(name):
  """The first BN's input is mode-independent, so its sown eval-mode stats
  are the reference's train-mode batch stats, recovered from the update."""
  fixture, model, variables, x = _fixture(name)
  logits, captured = model.apply(variables, x, mutable=['bn_stats'])
  np.testing.assert_allclose(logits, fixture['eval_logits'],
                             rtol=0, atol=LOGITS_TOL * np.max(
                                 np.abs(fixture['eval_logits'])))
  (mean, var), = _at(captured['bn_stats'],
                     str(fixture['bn_first_name']))['input_stats']
  n = x.shape[0] * x.shape[1] * x.shape[2]
  ref_mean = (fixture['bn_first_running_mean_after']
              - 0.9 * fixture['bn_first_running_mean_before']) / 0.1
  ref_unbiased = (fixture['bn_first_running_var_after']
                  - 0.9 * fixture['bn_first_running_var_before']) / 0.1
  assert _rel(mean, ref_mean) < 1e-4
  assert _rel(var, ref_unbiased * (n - 1) / n) < 1e-4
  # Every BN sows exactly once.
  assert len(jax.tree.leaves(captured)) == 2 * len(fixture['bn_names'])


def test_bn_statistics_not_computed_unless_captured():
  model = models.get_model('net', 10)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  plain = str(jax.make_jaxpr(functools.partial(model.apply, train=False))(
      variables, x))
  captured = str(jax.make_jaxpr(functools.partial(
      model.apply, train=False, mutable=['bn_stats']))(variables, x))
  assert 'reduce_sum' not in plain
  assert 'reduce_sum' in captured


def test_init_has_no_bn_stats_and_starts_torch_like():
  model = models.get_model('_tiny_cnn', 10)
  variables = model.init(_key(0), jnp.ones((2, 32, 32, 3)), train=True)
  assert set(variables) == {'params', 'batch_stats'}
  for bn in variables['batch_stats'].values():
    np.testing.assert_array_equal(bn['mean'], 0.0)
    np.testing.assert_array_equal(bn['var'], 1.0)
  for name in ('bn1', 'fcbn1'):
    np.testing.assert_array_equal(variables['params'][name]['scale'], 1.0)
    np.testing.assert_array_equal(variables['params'][name]['bias'], 0.0)


def _moments_on(x, axis_name=None, momentum=0.1):
  """BN train forward of `x`: (output, new batch_stats, sown input stats)."""
  bn = layers.BatchNorm(momentum=momentum, axis_name=axis_name)
  variables = {'params': {'scale': jnp.full((3,), 1.5),
                          'bias': jnp.full((3,), 0.25)},
               'batch_stats': {'mean': jnp.zeros(3), 'var': jnp.ones(3)}}
  y, updates = bn.apply(variables, x, use_running_average=False,
                        mutable=['batch_stats', 'bn_stats'])
  return y, updates['batch_stats'], updates['bn_stats']['input_stats'][0]


def test_batch_norm_formulas():
  x = np.random.RandomState(0).standard_normal((6, 5, 5, 3)) * 3 + 2
  y, stats, (mean, var) = _moments_on(jnp.asarray(x, jnp.float32))
  ref_mean = x.mean(axis=(0, 1, 2))
  ref_var = x.var(axis=(0, 1, 2))
  n = 6 * 25
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
  np.testing.assert_allclose(var, ref_var, rtol=1e-5)
  np.testing.assert_allclose(stats['mean'], 0.1 * ref_mean, rtol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * ref_var * n / (n - 1),
                             rtol=1e-6)
  np.testing.assert_allclose(
      y, (x - ref_mean) / np.sqrt(ref_var + 1e-5) * 1.5 + 0.25, atol=1e-5)


def test_batch_norm_one_value_per_channel_raises():
  with pytest.raises(ValueError, match='more than one value per channel'):
    _moments_on(jnp.ones((1, 3)))


def test_sync_batch_norm_equals_global_batch():
  """Under pmap over 4 devices, statistics are those of the whole batch."""
  x = np.random.RandomState(1).standard_normal((8, 4, 4, 3)).astype(
      np.float32) + np.arange(8, dtype=np.float32)[:, None, None, None]
  y, stats, (mean, var) = _moments_on(jnp.asarray(x))
  p_y, p_stats, (p_mean, p_var) = jax.pmap(
      functools.partial(_moments_on, axis_name='batch'), axis_name='batch')(
          x.reshape(4, 2, 4, 4, 3))
  np.testing.assert_allclose(p_y.reshape(y.shape), y, atol=1e-5)
  for ours, ref in ((p_mean, mean), (p_var, var), (p_stats['mean'],
                                                   stats['mean']),
                    (p_stats['var'], stats['var'])):
    for device in range(4):
      np.testing.assert_allclose(ours[device], ref, rtol=1e-5, atol=1e-6)


def test_conv_padding_is_symmetric_not_same():
  """torch pads stride-2 3x3 convs (1,1); flax 'SAME' pads (0,1)."""
  x = jnp.asarray(np.random.RandomState(2).standard_normal((1, 6, 6, 1)),
                  jnp.float32)
  conv = layers.Conv(1, 3, strides=2, padding=1, use_bias=False)
  kernel = jnp.zeros((3, 3, 1, 1)).at[0, 0, 0, 0].set(1.0)
  y = conv.apply({'params': {'kernel': kernel}}, x)
  # Output (i, j) reads padded (2i, 2j), i.e. input (2i - 1, 2j - 1).
  assert y.shape == (1, 3, 3, 1)
  np.testing.assert_array_equal(y[0, 0, :, 0], 0.0)
  np.testing.assert_array_equal(y[0, 1:, 1:, 0], x[0, 1:4:2, 1:4:2, 0])


def test_channel_shuffle_order():
  x = jnp.arange(8.0).reshape(1, 1, 1, 8)
  np.testing.assert_array_equal(
      layers.channel_shuffle(x, 2).reshape(-1), [0, 4, 1, 5, 2, 6, 3, 7])


def test_flatten_nchw_order():
  x = np.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)  # NCHW
  np.testing.assert_array_equal(
      layers.flatten_nchw(jnp.asarray(x.transpose(0, 2, 3, 1))),
      x.reshape(2, -1))


def _param_count(arch: str, num_classes: int) -> int:
  model = models.get_model(arch, num_classes)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes['params']))


@pytest.mark.parametrize('arch', models.MODEL_NAMES)
def test_param_counts_match_spec(arch):
  counts = tuple(_param_count(arch, c) for c in (10, 100, 200))
  assert counts == PARAM_COUNTS[arch]


@pytest.mark.parametrize('arch', models.MODEL_NAMES)
def test_feature_dim(arch):
  assert models.feature_dim(arch) == FEATURE_DIMS[arch]


@pytest.mark.parametrize('arch', [a for a in models.TINY_MODEL_NAMES
                                  if models.ARCHS[a].reference])
def test_tiny_variants_train_and_eval(arch):
  model = models.get_model(arch, 7)
  x = jnp.asarray(np.random.RandomState(3).standard_normal((2, 32, 32, 3)),
                  jnp.float32)
  variables = model.init(_key(0), x)
  logits, updates = model.apply(variables, x, train=True,
                                mutable=['batch_stats'],
                                rngs={'dropout': _key(1)})
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert set(updates) == ({'batch_stats'} if 'batch_stats' in variables
                          else set())
  assert model.apply(variables, x).shape == (2, 7)
  assert arch not in models.MODEL_NAMES


@pytest.mark.parametrize('arch', ['_tiny_resnet', '_tiny_resnext',
                                  '_tiny_mobilenetv2', '_tiny_shufflenetv2'])
def test_global_pool_archs_take_64px(arch):
  model = models.get_model(arch, 5)
  out = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x)[0],
      jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
  assert out.shape == (2, 5)


@pytest.mark.parametrize('arch,family', [
    ('preresnet20', 'preresnet'), ('net', 'net'), ('mlp', 'mlp'),
    ('_tiny_preresnet', 'preresnet'), ('_tiny_cnn', 'net')])
def test_fixed_head_archs_reject_64px(arch, family):
  model = models.get_model(arch, 10)
  with pytest.raises(ValueError) as error:
    jax.eval_shape(model.init, jax.random.key(0),
                   jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  message = str(error.value)
  assert message.startswith(f'{family} needs 32x32 input'), message
  assert '64x64 input' in message


def test_mixed_precision_keeps_float32_params_stats_and_logits():
  model = models.get_model('_tiny_resnet', 10, dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  variables = model.init(_key(0), x)
  assert {v.dtype for v in jax.tree.leaves(variables)} == {
      np.dtype(np.float32)}
  logits, updates = model.apply(variables, x, train=True,
                                mutable=['batch_stats'])
  assert logits.dtype == jnp.float32
  assert {v.dtype for v in jax.tree.leaves(updates)} == {np.dtype(np.float32)}


def test_dropout_uses_the_dropout_rng_in_train_mode_only():
  model = models.get_model('_tiny_cnn', 10, dropout_rate=0.5)
  x = jnp.asarray(np.random.RandomState(4).standard_normal((4, 32, 32, 3)),
                  jnp.float32)
  variables = model.init(_key(0), x)
  train = functools.partial(model.apply, variables, x, train=True,
                            return_features=True, mutable=['batch_stats'])
  (_, f1), _ = train(rngs={'dropout': _key(1)})
  (_, f2), _ = train(rngs={'dropout': _key(2)})
  assert np.any(np.asarray(f1) == 0) and not np.allclose(f1, f2)
  np.testing.assert_array_equal(model.apply(variables, x),
                                model.apply(variables, x))


def test_registry_errors():
  with pytest.raises(ValueError, match='resnet18, resnet34.*mlp'):
    models.get_model('resnet44', 10)
  with pytest.raises(ValueError, match='preresnet44'):
    models.get_model('preresnet44', 10)
  with pytest.raises(ValueError, match='resnet18 does not take num_channels'):
    models.get_model('resnet18', 10, num_channels=16)
  with pytest.raises(ValueError, match='num_classes'):
    models.get_model('net', 0)
  assert models.get_model('net', 10, num_channels=8,
                          dropout_rate=0.1).num_channels == 8


# --- initialisation (docs/reference.md#initialisation)
# ---------------------------------------------

@functools.cache
def _initial_state_dict(arch: str):
  """torch-layout tensors of a fresh init (the forward is compiled away)."""
  model = models.get_model(arch, 10)
  args = (_key(42), jnp.zeros((1, 32, 32, 3)))
  # Runs once: LLVM optimisation of the many RNG kernels would cost more
  # (XLA:CPU, up to ~20 s per model) than it saves.
  init = jax.jit(model.init).lower(*args).compile(
      {'xla_backend_optimization_level': 0})
  return convert.flax_to_torch(arch, jax.device_get(init(*args)))


def _expected_init(arch: str, key: str, shape: tuple[int, ...]):
  """(distribution, scale) that docs/reference.md#initialisation prescribes for
  a torch tensor."""
  fan_in = int(np.prod(shape[1:]))
  fan_out = shape[0] * int(np.prod(shape[2:]))
  is_conv = len(shape) == 4
  if arch.startswith('preresnet') and is_conv:
    return 'normal', np.sqrt(2.0 / fan_out)
  if arch == 'resnext29':
    if is_conv:
      return 'normal', np.sqrt(2.0 / fan_out)
    if key == 'classifier.weight':
      return 'normal', np.sqrt(2.0 / fan_in)
    if key == 'classifier.bias':
      return 'zeros', 0.0
  return 'uniform', 1.0 / np.sqrt(fan_in)


def _check_sample(values: np.ndarray, distribution: str, scale: float):
  """Std within ~7 standard errors, support/tails of the right family."""
  values = values.astype(np.float64).reshape(-1)
  n = values.size
  if distribution == 'zeros':
    np.testing.assert_array_equal(values, 0.0)
    return
  std = scale if distribution == 'normal' else scale / np.sqrt(3.0)
  if n >= 100:
    assert abs(values.std() / std - 1) < 5 / np.sqrt(n), (values.std(), std)
    assert abs(values.mean()) < 6 * std / np.sqrt(n)
  peak = np.max(np.abs(values))
  if distribution == 'uniform':
    assert peak <= scale * (1 + 1e-6)  # float32 rounding of the bound
    if n >= 100:
      assert peak > 0.9 * scale
  elif n >= 2000:
    # A N(0, s) sample this big always exceeds 2.5 s somewhere; uniform and
    # 2-sigma truncated normals never do.
    assert peak > 2.5 * std


@pytest.mark.parametrize('arch', models.MODEL_NAMES)
def test_initialisation_follows_spec(arch):
  state_dict = _initial_state_dict(arch)
  weights = {k: v for k, v in state_dict.items() if k.endswith('weight')}
  for key, value in state_dict.items():
    module, leaf = key.rsplit('.', 1)
    weight = weights.get(f'{module}.weight')
    if leaf == 'num_batches_tracked':
      continue
    if leaf in ('running_mean', 'running_var') or (
        weight is not None and weight.ndim == 1):
      # BatchNorm: weight 1, bias 0, running mean 0, var 1.
      expected = 1.0 if leaf in ('weight', 'running_var') else 0.0
      np.testing.assert_array_equal(value, expected, err_msg=key)
      continue
    distribution, scale = _expected_init(arch, f'{module}.weight',
                                         weight.shape)
    if leaf == 'bias':
      # The weight's fan-in uniform (ResNeXt: zeros).
      distribution, scale = _expected_init(arch, key, weight.shape)
    _check_sample(value, distribution, scale)


def test_initialisation_check_can_fail():
  """fan_in instead of fan_out on PreResNet's stage-entry convs is caught."""
  weight = _initial_state_dict('preresnet20')['layer2.0.conv1.weight']
  _, fan_out_std = _expected_init('preresnet20', 'layer2.0.conv1.weight',
                                  weight.shape)
  fan_in_std = np.sqrt(2.0 / np.prod(weight.shape[1:]))
  with pytest.raises(AssertionError):
    _check_sample(weight, 'normal', fan_in_std)
  with pytest.raises(AssertionError):
    _check_sample(weight, 'uniform', fan_out_std * np.sqrt(3.0))
  _check_sample(weight, 'normal', fan_out_std)


def test_variable_names_never_contain_dots():
  model = models.get_model('mobilenetv2', 10)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  flat = flax.traverse_util.flatten_dict(shapes)
  assert all('.' not in part for path in flat for part in path)
