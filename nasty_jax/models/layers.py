"""PyTorch-exact building blocks shared by every architecture (NHWC).

Parity choices with the reference (docs/reference.md#padding):

* `Conv` pads symmetrically by an explicit integer, as torch's `padding=p`
  does. Flax 'SAME' pads (0, 1) on even inputs with stride 2 and gives
  different numbers, so it is never used.
* `Conv` and `Dense` default to torch's initialisation: kernel and bias
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = (in/groups)*kh*kw.
* `BatchNorm` follows torch: momentum 0.1 means running <- 0.9 running +
  0.1 batch, statistics use a two-pass variance, training normalises with the
  biased variance and updates running_var with the unbiased one.

Naming convention (the PyTorch converter depends on it): a variable's path
inside its collection, joined with '.', is the torch module path of the
matching state_dict key. `Sequential` names its children '0', '1', ... like
`torch.nn.Sequential`, activations included in the count.
"""

import functools
import inspect
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
# A module constructor (class or partial) that models hand to their blocks.
ModuleDef = Callable[..., nn.Module]

# kaiming_uniform_(a=sqrt(5)) of torch: gain^2 = 2/(1+5) = 1/3, so the bound
# is sqrt(3 * (1/3) / fan_in) = 1/sqrt(fan_in). Fans are read from the kernel
# shape: HWIO conv kernels store in/groups, so grouped convs come out right.
torch_default_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')
# N(0, sqrt(2 / (kh*kw*out))): PreResNet's and ResNeXt's convs. fan_out does
# not divide by groups in torch either.
kaiming_normal_fan_out = nn.initializers.variance_scaling(
    2.0, 'fan_out', 'normal')
kaiming_normal_fan_in = nn.initializers.variance_scaling(
    2.0, 'fan_in', 'normal')


def torch_default_bias_init(fan_in: int) -> Initializer:
  """torch's Conv/Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _per_channel(v: Array, ndim: int) -> Array:
  """Shapes a (C,) vector to broadcast over an `ndim`-D channels-last array.

  The test suite runs with rank promotion set to 'raise'.
  """
  return v.reshape((1,) * (ndim - 1) + (-1,))


def _kernel_and_bias(module: nn.Module, kernel_shape: tuple[int, ...]
                     ) -> tuple[Array, Array | None]:
  """Creates a Conv/Dense module's 'kernel' (and 'bias'), cast to its dtype."""
  kernel = module.param('kernel', module.kernel_init, kernel_shape,
                        module.param_dtype)
  bias = None
  if module.use_bias:
    bias_init = module.bias_init
    if bias_init is None:
      bias_init = torch_default_bias_init(int(np.prod(kernel_shape[:-1])))
    bias = module.param('bias', bias_init, (kernel_shape[-1],),
                        module.param_dtype)
    bias = bias.astype(module.dtype)
  return kernel.astype(module.dtype), bias


def _conv(x: Array, kernel: Array, stride: int, padding: int,
          groups: int) -> Array:
  pad = (padding, padding)
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=(pad, pad),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


# Bytes of one batch chunk of a convolution's input (or output gradient)
# when its kernel gradient is taken chunk by chunk on a CPU (see conv2d).
WGRAD_CHUNK_BYTES = 1 << 19


def wgrad_chunks(x: Array, g: Array) -> int:
  """How many batch chunks `conv2d` splits a CPU kernel gradient into.

  The smallest divisor of the batch whose chunks of `x` and `g` (per-sample
  bytes of the larger) fit `WGRAD_CHUNK_BYTES`; 1 off the CPU.
  """
  if jax.default_backend() != 'cpu':
    return 1
  n = x.shape[0]
  per_sample = max(int(np.prod(a.shape[1:])) * a.dtype.itemsize
                   for a in (x, g))
  fit = max(1, WGRAD_CHUNK_BYTES // per_sample)
  return next(c for c in range(1, n + 1) if n % c == 0 and n // c <= fit)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: Array, kernel: Array, stride: int, padding: int,
           groups: int) -> Array:
  """NHWC x HWIO convolution with torch's symmetric padding.

  Its value and input gradient are XLA's. Its kernel gradient is XLA's
  too, summed over batch chunks on a CPU (`wgrad_chunks`): XLA:CPU computes
  a kernel gradient as a convolution over the batch after transposing both
  operands batch-last, and with the whole batch those transposes and the
  convolution stream from memory; chunks of ~512 KiB stay in cache, which
  made ResNet kernel gradients about 2x faster here (docs/performance.md).
  The sum is the same, in another order; GPUs and TPUs take the plain path.
  """
  return _conv(x, kernel, stride, padding, groups)


def _conv2d_fwd(x, kernel, stride, padding, groups):
  return _conv(x, kernel, stride, padding, groups), (x, kernel)


def _conv2d_bwd(stride, padding, groups, residuals, g):
  x, kernel = residuals
  _, vjp_x = jax.vjp(lambda x: _conv(x, kernel, stride, padding, groups), x)
  chunks = wgrad_chunks(x, g)
  size = x.shape[0] // chunks
  g_kernel = None
  for i in range(chunks):
    rows = slice(i * size, (i + 1) * size)
    _, vjp_k = jax.vjp(
        lambda k, rows=rows: _conv(x[rows], k, stride, padding, groups),
        kernel)
    part = vjp_k(g[rows])[0]
    g_kernel = part if g_kernel is None else g_kernel + part
  return vjp_x(g)[0], g_kernel


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
  """2-D convolution with torch's symmetric padding; NHWC in, HWIO kernel.

  Attributes:
    features: output channels.
    kernel_size: square kernel side.
    strides: square stride.
    padding: zeros added on each of the four sides (torch `padding=p`).
    groups: torch `groups` (feature_group_count); in/groups per kernel slice.
    use_bias: whether a 'bias' is added.
    kernel_init: kernel initialiser; torch's default when left alone.
    bias_init: bias initialiser; None means torch's fan-in uniform.
    dtype: compute dtype; inputs and parameters are cast to it.
    param_dtype: storage dtype of the parameters.
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  groups: int = 1
  use_bias: bool = True
  kernel_init: Initializer = torch_default_kernel_init
  bias_init: Initializer | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    if in_features % self.groups or self.features % self.groups:
      raise ValueError(
          f'Conv {self.name}: groups={self.groups} must divide both the input '
          f'channels ({in_features}) and the output channels '
          f'({self.features}).')
    kernel_shape = (self.kernel_size, self.kernel_size,
                    in_features // self.groups, self.features)
    kernel, bias = _kernel_and_bias(self, kernel_shape)
    y = conv2d(x.astype(self.dtype), kernel, self.strides, self.padding,
               self.groups)
    if bias is not None:
      y = y + _per_channel(bias, y.ndim)
    return y


class Dense(nn.Module):
  """Fully connected layer (torch `Linear`); kernel stored (in, out).

  Attributes:
    features: output features.
    use_bias: whether a 'bias' is added.
    kernel_init: kernel initialiser; torch's default when left alone.
    bias_init: bias initialiser; None means torch's fan-in uniform.
    dtype: compute dtype; inputs and parameters are cast to it.
    param_dtype: storage dtype of the parameters.
  """
  features: int
  use_bias: bool = True
  kernel_init: Initializer = torch_default_kernel_init
  bias_init: Initializer | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel, bias = _kernel_and_bias(self, (x.shape[-1], self.features))
    y = jnp.matmul(x.astype(self.dtype), kernel)
    if bias is not None:
      y = y + _per_channel(bias, y.ndim)
    return y


def _batch_moments(x: Array, axis_name: str | None
                   ) -> tuple[Array, Array, int]:
  """Per-channel mean, biased variance and element count n (two-pass).

  Under `axis_name`, every device holds an equal share of the batch, so the
  global mean is the mean of local means, and the global biased variance the
  mean of local mean((x - global_mean)^2): exact, not E[x^2] - E[x]^2.
  """
  axes = tuple(range(x.ndim - 1))
  count = int(np.prod([x.shape[a] for a in axes]))
  mean = jnp.mean(x, axis=axes)
  if axis_name is not None:
    mean = jax.lax.pmean(mean, axis_name)
  var = jnp.mean(jnp.square(x - _per_channel(mean, x.ndim)), axis=axes)
  if axis_name is not None:
    var = jax.lax.pmean(var, axis_name)
    count *= jax.lax.axis_size(axis_name)
  return mean, var, count


def _count(x: Array, axis_name: str | None) -> int:
  """Elements per channel over the whole (possibly synced) batch."""
  count = int(np.prod(x.shape[:-1]))
  if axis_name is not None:
    count *= jax.lax.axis_size(axis_name)
  return count


def _affine(x: Array, mean: Array, mul: Array, scale: Array | None,
            bias: Array | None) -> Array:
  """(x - mean) * mul * scale + bias, per channel (scale, bias optional)."""
  y = x - _per_channel(mean, x.ndim)
  if scale is None:
    return y * _per_channel(mul, x.ndim)
  return (y * _per_channel(mul * scale, x.ndim)
          + _per_channel(bias, x.ndim))


def _channel_sum(x: Array, axis_name: str | None) -> Array:
  total = jnp.sum(x, axis=tuple(range(x.ndim - 1)))
  return total if axis_name is None else jax.lax.psum(total, axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_normalize(x: Array, scale: Array | None, bias: Array | None,
                    epsilon: float, axis_name: str | None
                    ) -> tuple[Array, Array, Array]:
  """Train-mode batch normalisation: (y, batch mean, biased batch variance).

  The forward pass is `_batch_moments` and `_affine`, exactly. The backward
  pass is the closed form of the same function's gradient (two channel sums
  of the cotangent, then one elementwise pass) instead of reverse-mode
  through the two-pass variance: the same values up to float rounding, in
  fewer passes over the activations, which is what a CPU step is bound by.
  Under `axis_name` the sums run over the whole synced batch, as autodiff
  through the forward's `pmean`s gives; parameter cotangents are the local
  sums, which the step's gradient `pmean` then averages.
  """
  mean, var, _ = _batch_moments(x, axis_name)
  return (_affine(x, mean, jax.lax.rsqrt(var + epsilon), scale, bias), mean,
          var)


def _batch_normalize_fwd(x, scale, bias, epsilon, axis_name):
  # symbolic_zeros: primals come wrapped, and cotangents that are known
  # zeros (the usual case for the statistics) arrive as SymbolicZero.
  x, scale, bias = (None if a is None else a.value for a in (x, scale, bias))
  y, mean, var = batch_normalize(x, scale, bias, epsilon, axis_name)
  return (y, mean, var), (x, scale, mean, var)


def _batch_normalize_bwd(epsilon, axis_name, residuals, cotangents):
  x, scale, mean, var = residuals
  g, g_mean, g_var = cotangents
  if isinstance(g, jax.custom_derivatives.SymbolicZero):
    g = jnp.zeros(g.shape, g.dtype)
  count = _count(x, axis_name)
  mul = jax.lax.rsqrt(var + epsilon)
  x_hat = _affine(x, mean, mul, None, None)
  axes = tuple(range(x.ndim - 1))
  g_bias = jnp.sum(g, axis=axes)
  g_scale = jnp.sum(g * x_hat, axis=axes)
  total_g, total_gx = g_bias, g_scale
  if axis_name is not None:
    total_g = jax.lax.psum(g_bias, axis_name)
    total_gx = jax.lax.psum(g_scale, axis_name)
  gain = mul if scale is None else mul * scale
  # d/dx of (x - mean) * mul: g - mean(g) - x_hat * mean(g * x_hat), scaled.
  g_x = _per_channel(gain, x.ndim) * (
      g - _per_channel(total_g / count, x.ndim)
      - x_hat * _per_channel(total_gx / count, x.ndim))
  # The statistics are outputs too; the running averages take no gradient,
  # but a loss of the statistics (DeepInversion's) would.
  if not isinstance(g_mean, jax.custom_derivatives.SymbolicZero):
    g_x = g_x + _per_channel(_psum(g_mean, axis_name) / count, x.ndim)
  if not isinstance(g_var, jax.custom_derivatives.SymbolicZero):
    g_x = g_x + _affine(x, mean, _psum(2.0 * g_var, axis_name) / count,
                        None, None)
  if scale is None:
    return g_x, None, None
  return g_x, g_scale, g_bias


def _psum(x: Array, axis_name: str | None) -> Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd,
                       symbolic_zeros=True)


class BatchNorm(nn.Module):
  """torch `BatchNorm{1,2}d` over the last axis (channels), default settings.

  Train mode normalises with the batch mean and biased variance and moves the
  running statistics with torch's momentum, using the unbiased variance
  (n/(n-1), n = elements per channel over the whole, possibly synced, batch)
  for running_var. Eval mode uses the running statistics. Statistics are
  computed in (at least) float32 whatever the compute dtype.

  In both modes, when the 'bn_stats' collection is mutable, the batch mean and
  biased variance of the *input* are sown as `bn_stats/<path>/input_stats`
  (a 1-tuple holding `(mean, var)`), so DeepInversion can read every BN's
  input statistics from a frozen eval-mode network. Otherwise they are not
  even traced in eval mode.

  Attributes:
    use_running_average: eval mode; may instead be passed to `__call__`.
    momentum: torch meaning: running <- (1 - momentum) running + momentum batch.
    epsilon: added to the variance.
    affine: whether 'scale' and 'bias' parameters exist.
    axis_name: pmap/shard_map axis to sync statistics over (sync BN).
    dtype: output dtype.
    param_dtype: storage dtype of 'scale' and 'bias'.
  """
  use_running_average: bool | None = None
  momentum: float = 0.1
  epsilon: float = 1e-5
  affine: bool = True
  axis_name: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool | None = None
               ) -> Array:
    use_running_average = nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    features = x.shape[-1]
    stats_dtype = jnp.promote_types(jnp.float32, x.dtype)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,),
                            stats_dtype)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,),
                           stats_dtype)
    x = x.astype(stats_dtype)
    initializing = self.is_initializing()
    capture = self.is_mutable_collection('bn_stats') and not initializing
    scale = bias = None
    if self.affine:
      scale = self.param('scale', nn.initializers.ones, (features,),
                         self.param_dtype).astype(stats_dtype)
      bias = self.param('bias', nn.initializers.zeros, (features,),
                        self.param_dtype).astype(stats_dtype)
    if use_running_average or initializing:
      if capture:
        self.sow('bn_stats', 'input_stats',
                 _batch_moments(x, self.axis_name)[:2])
      mean, var = ra_mean.value, ra_var.value
      if initializing and not use_running_average:
        mean, var, _ = _batch_moments(x, self.axis_name)
      y = _affine(x, mean, jax.lax.rsqrt(var + self.epsilon), scale, bias)
      return y.astype(self.dtype)
    count = _count(x, self.axis_name)
    if count < 2:
      raise ValueError(
          f'BatchNorm {self.name} in train mode needs more than one value '
          f'per channel (got {count}), as torch does; use a larger batch.')
    y, mean, var = batch_normalize(x, scale, bias, self.epsilon,
                                   self.axis_name)
    if capture:
      self.sow('bn_stats', 'input_stats', (mean, var))
    unbiased = var * (count / (count - 1))
    ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
    ra_var.value = ((1 - self.momentum) * ra_var.value
                    + self.momentum * unbiased)
    return y.astype(self.dtype)


def _builds_module(layer: Any) -> bool:
  """Whether `layer` is a Module class, or a functools.partial of one."""
  while isinstance(layer, functools.partial):
    layer = layer.func
  return inspect.isclass(layer) and issubclass(layer, nn.Module)


class Sequential(nn.Module):
  """`torch.nn.Sequential` look-alike whose child i is named `names[i]`.

  Attributes:
    layers: Module constructors (classes or partials; built here with their
      torch name) or parameter-free functions such as `nn.relu`, which take
      up an index as they do in torch.
    names: child names; default '0', '1', ... (torch's indices).
  """
  layers: Sequence[Callable[..., Any]]
  names: Sequence[str] | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    names = self.names or [str(i) for i in range(len(self.layers))]
    if len(names) != len(self.layers):
      raise ValueError(f'Sequential {self.name}: {len(self.layers)} layers '
                       f'but {len(names)} names.')
    for name, layer in zip(names, self.layers):
      x = layer(name=name)(x) if _builds_module(layer) else layer(x)
    return x


def relu6(x: Array) -> Array:
  """torch `ReLU6`: clip(x, 0, 6)."""
  return jnp.clip(x, 0, 6)


def global_avg_pool(x: Array, keepdims: bool = False) -> Array:
  """`adaptive_avg_pool2d(x, 1)`: mean over all H x W positions (NHWC).

  Below float32 on a CPU the pooled map is fenced off first: XLA:CPU (jax
  0.11-0.12) otherwise fuses ResNet-18's last block (its convolutions,
  BatchNorm, residual add and ReLU) with this reduction into one
  XNNPACK/YNNPACK fusion whose bfloat16 eval-mode output is NaN. float32
  and other backends keep their fusion (and numerics) unchanged.
  """
  if x.dtype != jnp.float32 and jax.default_backend() == 'cpu':
    x = jax.lax.optimization_barrier(x)
  return jnp.mean(x, axis=(1, 2), keepdims=keepdims)


@jax.custom_vjp
def max_pool_2x2(x: Array) -> Array:
  """torch `max_pool2d(x, 2)`: 2x2 windows, stride 2, floor on odd sizes.

  A reshape and a max rather than `reduce_window`, with a hand-written
  gradient: XLA:CPU lowers reduce_window's gradient (select-and-scatter) to
  a scatter that cost 30x this one (43 vs 1.4 ms at 128x32x32x32). The
  gradient goes to the first maximum of each window in row-major order, as
  torch's and select-and-scatter's do, so ties give the same result.
  """
  return jnp.max(_pool_windows(x), axis=(2, 4))


def _pool_windows(x: Array) -> Array:
  """(N, H, W, C) -> (N, H//2, 2, W//2, 2, C), odd edges dropped."""
  n, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


def _max_pool_fwd(x):
  y = max_pool_2x2(x)
  return y, (x, y)


def _max_pool_bwd(residuals, g):
  x, y = residuals
  hit = _pool_windows(x) == y[:, :, None, :, None, :]
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(2):
    cols = []
    for j in range(2):
      first = hit[:, :, i, :, j] & ~taken
      taken = taken | first
      cols.append(jnp.where(first, g, jnp.zeros_like(g)))
    rows.append(jnp.stack(cols, axis=3))  # (N, H/2, W/2, 2, C)
  gx = jnp.stack(rows, axis=2)  # (N, H/2, 2, W/2, 2, C)
  n, h, w, c = x.shape
  gx = gx.reshape(n, h // 2 * 2, w // 2 * 2, c)
  return (jnp.pad(gx, ((0, 0), (0, h - gx.shape[1]), (0, w - gx.shape[2]),
                       (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def flatten_nchw(x: Array) -> Array:
  """Flattens (B, H, W, C) in torch's (C, H, W) order, as `view(B, -1)`."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def channel_shuffle(x: Array, groups: int) -> Array:
  """ShuffleNet's channel shuffle: output channel g'*G + i <- i*(C/G) + g'.

  With 2 groups, output channel 2i is input channel i and 2i+1 is C/2 + i.
  """
  *lead, channels = x.shape
  x = x.reshape(*lead, groups, channels // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, channels)


def check_spatial(arch: str, x: Array, feature_map: Array,
                  expected: tuple[int, int], requirement: str) -> None:
  """Raises when a fixed-size head would not see the map the reference does.

  Args:
    arch: model name for the message.
    x: the network input (B, H, W, C).
    feature_map: the map entering the fixed-size head (B, h, w, c).
    expected: the (h, w) that head needs.
    requirement: what input that means, e.g. '32x32 input'.
  """
  got = tuple(feature_map.shape[1:3])
  if got != tuple(expected):
    raise ValueError(
        f'{arch} needs {requirement} (its fixed-size head needs a final '
        f'{expected[0]}x{expected[1]} map), but got a '
        f'{x.shape[1]}x{x.shape[2]} input giving {got[0]}x{got[1]}. '
        'Use a global-pool architecture (resnet*, resnext29, mobilenetv2, '
        'shufflenetv2) for other input sizes.')


class Classifier(nn.Module):
  """Fields and helpers every architecture shares.

  Subclasses implement `__call__(x, train=False, return_features=False)` on
  NHWC input, returning float32 logits (B, num_classes), or (logits, the
  tensor entering the classifier) with `return_features`.

  Attributes:
    num_classes: classifier outputs.
    dtype: compute dtype; parameters and BN statistics stay float32.
    bn_momentum: torch-convention BatchNorm momentum.
    bn_axis_name: axis to sync BatchNorm statistics over (pmap), or None.
  """
  num_classes: int
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.1
  bn_axis_name: str | None = None

  def batch_norm(self, train: bool) -> Callable[..., BatchNorm]:
    """The model's BatchNorm constructor for train or eval mode."""
    return functools.partial(
        BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
        axis_name=self.bn_axis_name, dtype=self.dtype)

  @staticmethod
  def output(logits: Array, features: Array, return_features: bool
             ) -> Array | tuple[Array, Array]:
    """Float32 logits, plus the classifier's input feature if asked."""
    logits = logits.astype(jnp.float32)
    return (logits, features) if return_features else logits
