"""The plain CNN `net` and the `mlp` (reference `model/net.py`, `model/mlp.py`).

docs/reference.md#plain-cnn-net Both flatten in torch's (C, H, W) order into a
fixed-size
`fc1`, so both are 32x32-only. `net` is conv-BN-maxpool-ReLU three times, then
fc1-BatchNorm1d-ReLU-dropout and fc2; `mlp` puts a ReLU on its logits, as the
reference does. torch default initialisation everywhere.
"""

import functools

import flax.linen as nn
import jax

from nasty_jax.models import layers


class Net(layers.Classifier):
  """The paper's 5-layer plain CNN; logits or (logits, fcbn1 features).

  Attributes (besides layers.Classifier's):
    num_channels: c; conv widths c, 2c, 4c and fc1 width 4c (32 everywhere).
    dropout_rate: dropout after fcbn1 in train mode (0 everywhere); uses the
      'dropout' rng.
  """
  num_channels: int = 32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False):
    norm = self.batch_norm(train)
    y = x
    for index, multiple in enumerate((1, 2, 4)):
      y = layers.Conv(self.num_channels * multiple, 3, 1, 1, dtype=self.dtype,
                      name=f'conv{index + 1}')(y)
      # BN, then pool, then ReLU, in the reference's order.
      y = nn.relu(layers.max_pool_2x2(norm(name=f'bn{index + 1}')(y)))
    layers.check_spatial('net', x, y, (4, 4), '32x32 input')
    y = layers.Dense(4 * self.num_channels, dtype=self.dtype,
                     name='fc1')(layers.flatten_nchw(y))
    y = nn.relu(norm(name='fcbn1')(y))
    features = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    logits = layers.Dense(self.num_classes, dtype=self.dtype,
                          name='fc2')(features)
    return self.output(logits, features, return_features)


class MLP(layers.Classifier):
  """3-layer perceptron with ReLU on its logits; logits or (logits, fc2 act).

  It has no BatchNorm: `bn_momentum` and `bn_axis_name` are accepted only
  for a uniform model interface.

  Attributes (besides layers.Classifier's):
    hidden: width of fc1 and fc2 (512 in the reference).
  """
  hidden: int = 512

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False):
    del train  # No BN and no dropout: the reference never calls its Dropout.
    layers.check_spatial('mlp', x, x, (32, 32), '32x32 input')
    dense = functools.partial(layers.Dense, dtype=self.dtype)
    y = nn.relu(dense(self.hidden, name='fc1')(layers.flatten_nchw(x)))
    features = nn.relu(dense(self.hidden, name='fc2')(y))
    logits = nn.relu(dense(self.num_classes, name='fc3')(features))
    return self.output(logits, features, return_features)


# Tests only: a narrow `net` (keeps its BatchNorm1d) and a narrow MLP.
_TinyCNN = functools.partial(Net, num_channels=4)
_TinyMLP = functools.partial(MLP, hidden=16)
