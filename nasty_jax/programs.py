"""What a stage trains: models, optimisers, frozen networks, step, inputs.

`supervised(ctx)` builds the `engine.Program` of every objective method
(normal, nasty, KD, ... any registered one): the trained architecture with
the reference's optimiser and schedule, its frozen networks loaded from
their checkpoints and scored on the test split, and `steps.train_step`
with the method's objective, wrapped for the config's parallelism. Custom
stages (DAFL) build their own program from the helpers here; the engine
runs all of them the same way.
"""

import dataclasses
import functools
import itertools
import os
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from absl import logging

from nasty_jax import checkpointing
from nasty_jax import methods
from nasty_jax import models
from nasty_jax import parallel as parallel_lib
from nasty_jax import serving
from nasty_jax import state as state_lib
from nasty_jax import steps


@dataclasses.dataclass(frozen=True)
class FrozenSpec:
  """A frozen network a stage reads (never writes).

  Attributes:
    role: what the method calls it ('teacher', 'adversary').
    arch: its architecture.
    checkpoint: a stage folder or a converted checkpoint.
    transform: a serving-transform spec applied to its logits ('stingy',
      'topk:5', 'stingy+label'; `serving.resolve`); '' = none.
  """
  role: str
  arch: str
  checkpoint: str
  transform: str = ''


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage: a method training one architecture against frozen networks.

  Attributes:
    name: e.g. 'normal', 'nasty', 'kd_nasty/net', 'dafl/normal'.
    method: the registered method's name.
    arch: the trained architecture.
    frozen: the frozen networks, in the method's `frozen` order.
  """
  name: str
  method: str
  arch: str
  frozen: tuple[FrozenSpec, ...] = ()

  @property
  def first_frozen(self) -> FrozenSpec | None:
    return self.frozen[0] if self.frozen else None


@dataclasses.dataclass(frozen=True)
class Context:
  """What a program builder gets: the config, the stage, devices, data."""
  config: ml_collections.ConfigDict
  spec: StageSpec
  par: parallel_lib.Parallel
  dataset: Any


@dataclasses.dataclass
class Program:
  """What the engine runs for a stage (it owns the loop and all I/O).

  Attributes:
    state: the initial train state (replicated; restored over by the
      engine when the stage resumes).
    step: `(state, batch, step) -> (state, metrics)`, one step; metrics a
      clu collection with a `first_nonfinite_step` entry.
    batches: `(epoch, first step within it) -> iterable` of the epoch's
      remaining step inputs.
    steps_per_epoch: steps between evaluations.
    num_epochs: epochs of the schedule.
    images_per_step: global batch size (img/s).
    evaluate: `state -> {'accuracy', 'loss'}` on the test split.
    best_variables: `state -> {'params', 'batch_stats'}` kept in `best/`.
    arch: the architecture `best/` holds.
    describe: formats the logged train scalars for the progress line.
    percent: train metrics logged in percent.
    frozen_accuracy: the first frozen network's test accuracy, if any.
    record: extra fields of the stage's result.json.
  """
  state: Any
  step: Callable[[Any, Any, int], tuple[Any, Any]]
  batches: Callable[[int, int], Iterable[Any]]
  steps_per_epoch: int
  num_epochs: int
  images_per_step: int
  evaluate: Callable[[Any], dict[str, float]]
  best_variables: Callable[[Any], Any]
  arch: str
  describe: Callable[[dict[str, float]], str] = None  # type: ignore
  percent: tuple[str, ...] = ('accuracy',)
  frozen_accuracy: float | None = None
  record: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.describe is None:
      self.describe = describe_train


def create_model(config: ml_collections.ConfigDict, arch: str,
                 axis_name: str | None = None):
  """An architecture with the config's dtype and its own model options."""
  kwargs = dict(dtype=jnp.dtype(config.model.dtype),
                bn_momentum=config.model.bn_momentum, bn_axis_name=axis_name)
  for option in models.get_arch(arch).options:
    kwargs[option] = config.model[option]
  return models.get_model(arch, config.dataset.num_classes, **kwargs)


def optimizer_config(config: ml_collections.ConfigDict, arch: str
                     ) -> ml_collections.ConfigDict:
  """The reference's optimiser for `arch` (Adam for net/mlp, else SGD).

  `config.optim.choice` forces one; `config.num_epochs` > 0 overrides the
  schedule's length (the cosine schedule's too).
  """
  choice = config.optim.choice
  if choice == 'auto':
    choice = models.get_arch(arch).optimizer
  if choice not in ('sgd', 'adam'):
    raise ValueError(f'config.optim.choice={choice!r}; valid: auto, sgd, '
                     'adam.')
  optim = config.optim[choice]
  if config.num_epochs > 0:
    optim = ml_collections.ConfigDict(optim.to_dict())
    optim.num_epochs = config.num_epochs
  return optim


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  size = config.dataset.image_size
  return (1, size, size, 3)


def dataset_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What decides a test accuracy: the dataset, its size and source folder.

  A best/ checkpoint records it beside its accuracy, so a frozen network is
  re-measured against a comparable number only.
  """
  d = config.dataset
  manual = d.get('manual_dir')
  return {'name': d.name, 'image_size': d.image_size,
          'num_classes': d.num_classes,
          'manual_dir': os.path.abspath(manual) if manual else None}


# A frozen network whose re-measured test accuracy is further than this
# from the one its checkpoint records (same dataset and split) is refused.
FROZEN_ACCURACY_TOLERANCE = 0.5


def check_recorded_accuracy(config: ml_collections.ConfigDict,
                            checkpoint: str, meta: dict[str, Any],
                            measured: float) -> None:
  """Refuses a frozen network that no longer scores what it recorded.

  Raises:
    ValueError: both numbers, when the checkpoint was scored on the same
      dataset and split and differs by more than the tolerance.
  """
  recorded = meta.get('accuracy')
  if (recorded is None or meta.get('dataset') != dataset_identity(config)
      or meta.get('max_eval_batches') != config.max_eval_batches):
    return
  if abs(measured - recorded) > FROZEN_ACCURACY_TOLERANCE:
    raise ValueError(
        f'{checkpoint} scores {measured:.2f}% on the test split but recorded '
        f'{recorded:.2f}% there: the checkpoint is damaged or not the one '
        'that was trained. Point at another one, or retrain its stage '
        '(--config.retrain=<stage>).')


def load_frozen(config: ml_collections.ConfigDict, arch: str,
                checkpoint: str) -> tuple[Any, Any, dict[str, Any]]:
  """A frozen network (teacher or adversary), its variables and metadata.

  Raises:
    ValueError: the checkpoint holds another architecture or class count,
      tensors that don't fit `arch`, or non-finite values.
  """
  variables, meta = checkpointing.load_variables(checkpoint)
  for key, want in (('arch', arch),
                    ('num_classes', config.dataset.num_classes)):
    if key in meta and meta[key] != want:
      raise ValueError(f'{checkpoint} holds {key}={meta[key]!r}, but this '
                       f'stage needs {key}={want!r}.')
  model = create_model(config, arch)
  abstract = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0),
      jnp.zeros(input_shape(config), jnp.float32))
  want_shapes = jax.tree_util.tree_map(lambda x: x.shape, dict(abstract))
  got_shapes = jax.tree_util.tree_map(lambda x: x.shape, dict(variables))
  if want_shapes != got_shapes:
    raise ValueError(f'{checkpoint} does not hold a {arch} with '
                     f'{config.dataset.num_classes} classes (tensor shapes '
                     'differ).')
  leaves = jax.tree_util.tree_leaves(variables)
  bad = sum(int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            for x in leaves)
  if bad:
    raise ValueError(
        f'{checkpoint} holds {bad} non-finite values (of '
        f'{sum(np.size(x) for x in leaves)}): a damaged checkpoint. Point '
        'at another one, or retrain its stage (--config.retrain=<stage>).')
  return model, variables, meta


def open_dataset(config: ml_collections.ConfigDict,
                 par: parallel_lib.Parallel):
  """The config's dataset laid out for `par`, batch sizes checked.

  Raises:
    ValueError: a batch size that does not divide over the devices.
  """
  # Imported here: the step and model code must not need TFDS.
  from nasty_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  par.check_batch_size(config.batch_size)
  eval_batch_size = (config.eval_batch_size if config.eval_batch_size > 0
                     else config.batch_size)
  par.check_batch_size(eval_batch_size, 'eval_batch_size')
  return data_lib.create_dataset(
      config.dataset, config.batch_size, config.seed,
      input=config.dataset.input, sharding=par.batch_sharding,
      image_dtype=jnp.dtype(config.model.dtype),
      eval_batch_size=eval_batch_size)


def evaluate(p_eval, variables, dataset, par: parallel_lib.Parallel,
             max_batches: int = -1) -> dict[str, float]:
  """Accuracy (percent) and CE over the whole eval split (padded batches)."""
  total = None
  batches = dataset.eval_batches()
  if max_batches > 0:
    batches = itertools.islice(batches, max_batches)
  for batch in batches:
    m = p_eval(variables, par.shard_batch(batch))
    total = m if total is None else total.merge(m)
  if total is None:
    raise ValueError('The eval split is empty.')
  values = jax.device_get(total.compute())
  out = {'accuracy': 100.0 * float(values['accuracy']),
         'loss': float(values['loss'])}
  if 'ensemble_accuracy' in values:
    out['ensemble_accuracy'] = 100.0 * float(values['ensemble_accuracy'])
  return out


def eval_fn(model, par: parallel_lib.Parallel) -> Callable[..., Any]:
  """`model`'s wrapped eval step."""
  return par.eval_step(functools.partial(steps.eval_step, model=model,
                                         axis_name=par.axis_name))


def init_state(config: ml_collections.ConfigDict, model, tx,
               par: parallel_lib.Parallel, key: jax.Array,
               shape: tuple[int, ...] | None = None) -> state_lib.TrainState:
  """A replicated step-0 train state of `model` from init key `key`."""
  shape = shape or input_shape(config)
  init = jax.jit(
      lambda key: state_lib.create_train_state(
          model.init(key, jnp.zeros(shape, jnp.float32), train=False), tx),
      out_shardings=par.replicated)
  return init(key)


def init_key(seed: int) -> jax.Array:
  """Parameters come from an 'rbg' key: XLA:CPU compiles threefry-based
  init of a whole network 5-10x slower (26 s vs 3 s for preresnet20).
  Steps use the threefry key(seed): fold_in(base, step + 1)."""
  return jax.random.key(seed, impl='rbg')


@dataclasses.dataclass(frozen=True)
class Served:
  """A frozen network as its students see it: eval mode, final head, then
  the serving transform. Has the `apply` that `steps.eval_step` calls, so
  the network is scored through the transform."""
  model: Any
  transform: serving.Transform | None = None

  def apply(self, variables, x, train: bool = False):
    del train  # Frozen networks always run in eval mode.
    logits = steps.final_head(self.model.apply(variables, x, train=False))
    return logits if self.transform is None else self.transform(logits)


@dataclasses.dataclass(frozen=True)
class Frozen:
  """A stage's loaded frozen networks by role (`load_frozen_networks`).

  Attributes:
    models: the modules.
    variables: their variables, replicated.
    applies: their eval-mode forward passes, as the train step calls them.
    accuracy: the first one's test accuracy (percent), None without any.
  """
  models: dict[str, Any]
  variables: dict[str, Any]
  applies: dict[str, steps.FrozenApply]
  accuracy: float | None


def load_frozen_networks(ctx: Context) -> Frozen:
  """The stage's frozen networks, replicated, each scored on the test split.

  Raises:
    ValueError: a checkpoint that does not fit (see `load_frozen`).
  """
  config, spec, par = ctx.config, ctx.spec, ctx.par
  nets, variables, applies, accuracy = {}, {}, {}, None
  for frozen in spec.frozen:
    model, v, meta = load_frozen(config, frozen.arch, frozen.checkpoint)
    nets[frozen.role] = model
    variables[frozen.role] = par.replicate(v)
    served = Served(model, serving.resolve(frozen.transform, config))
    applies[frozen.role] = served.apply
    acc = evaluate(eval_fn(served, par), variables[frozen.role], ctx.dataset,
                   par, config.max_eval_batches)['accuracy']
    if not frozen.transform:
      check_recorded_accuracy(config, frozen.checkpoint, meta, acc)
    logging.info('Stage %s: frozen %s %s (%s%s) test accuracy %.2f%%.',
                 spec.name, frozen.role, frozen.arch, frozen.checkpoint,
                 f', served {frozen.transform}' if frozen.transform else '',
                 acc)
    accuracy = acc if accuracy is None else accuracy
  return Frozen(nets, variables, applies, accuracy)


@dataclasses.dataclass(frozen=True)
class Supervised:
  """The parts of an objective method's stage (`build_supervised`).

  Attributes:
    model: the trained network.
    optim: its optimiser config.
    state: the replicated step-0 train state.
    p_train: the wrapped `steps.train_step`, `(state, frozen variables,
      sharded batch, key) -> (state, metrics)`.
    frozen: the frozen networks.
    base_key: step `s` uses `fold_in(base_key, s + 1)`.
    steps_per_epoch: of the training data.
    par: the devices.
  """
  model: Any
  optim: ml_collections.ConfigDict
  state: Any
  p_train: Callable[..., Any]
  frozen: Frozen
  base_key: jax.Array
  steps_per_epoch: int
  par: parallel_lib.Parallel

  def step(self, state, batch, step):
    """One step on a host or device batch, with step `step`'s key."""
    return self.p_train(state, self.frozen.variables,
                        self.par.shard_batch(batch),
                        jax.random.fold_in(self.base_key, step + 1))


def build_supervised(ctx: Context, *, steps_per_epoch: int,
                     objective: methods.Objective | None = None,
                     keys: tuple[jax.Array, jax.Array] | None = None,
                     frozen: Frozen | None = None) -> Supervised:
  """An objective method's model, optimiser, state, frozen nets and step.

  Args:
    ctx: the stage.
    steps_per_epoch: of its training data (the schedule counts steps).
    objective: default the stage method's, with its config fields.
    keys: (step base key, parameter init key); default key(seed) and
      `init_key(seed)`.
    frozen: frozen networks already loaded; default the spec's, loaded
      (and scored) here.
  """
  config, spec, par = ctx.config, ctx.spec, ctx.par
  optim = optimizer_config(config, spec.arch)
  tx = state_lib.create_optimizer(optim, steps_per_epoch)
  model = create_model(config, spec.arch, par.axis_name)
  base_key, param_key = keys or (jax.random.key(config.seed),
                                 init_key(config.seed))
  state = init_state(config, model, tx, par, param_key)
  if frozen is None:
    frozen = load_frozen_networks(ctx)
  if objective is None:
    method = methods.get(spec.method)
    objective = method.objective(methods.fields(config, method))
  p_train = par.train_step(functools.partial(
      steps.train_step, model=model, tx=tx, objective=objective,
      learning_rate_fn=state_lib.learning_rate_schedule(optim,
                                                        steps_per_epoch),
      frozen=frozen.applies, steps_per_epoch=steps_per_epoch,
      axis_name=par.axis_name))
  return Supervised(model, optim, state, p_train, frozen, base_key,
                    steps_per_epoch, par)


def supervised(ctx: Context, *, train_data: Any = None,
               num_epochs: int | None = None, **kwargs) -> Program:
  """The program of an objective method: `steps.train_step` on data.

  Args:
    ctx: the stage.
    train_data: what the batches come from (`steps_per_epoch`,
      `train_batches(epoch, start_step)`); default the dataset's train split.
    num_epochs: default the arch's optimiser's schedule.
    **kwargs: `build_supervised`'s objective, keys and frozen.

  Returns:
    The stage's program.
  """
  config, par = ctx.config, ctx.par
  train_data = ctx.dataset if train_data is None else train_data
  parts = build_supervised(ctx, steps_per_epoch=train_data.steps_per_epoch,
                           **kwargs)
  p_eval = eval_fn(parts.model, par)
  return Program(
      state=parts.state, step=parts.step,
      batches=lambda epoch, start: train_data.train_batches(
          epoch, start_step=start),
      steps_per_epoch=parts.steps_per_epoch,
      num_epochs=parts.optim.num_epochs if num_epochs is None else num_epochs,
      images_per_step=config.batch_size,
      evaluate=lambda state: evaluate(p_eval, state.variables, ctx.dataset,
                                      par, config.max_eval_batches),
      best_variables=lambda state: state.variables, arch=ctx.spec.arch,
      frozen_accuracy=parts.frozen.accuracy)


def describe_train(scalars: dict[str, float]) -> str:
  """The progress line's part for `metrics.TrainMetrics` scalars."""
  fixed = ('train/loss', 'train/accuracy', 'train/learning_rate',
           'train/grad_norm', 'train/images_per_second')
  terms = ' '.join(f'{k[len("train/"):]} {v:.4f}' for k, v in scalars.items()
                   if k not in fixed)
  return (f'loss {scalars["train/loss"]:.4f} {terms} acc '
          f'{scalars["train/accuracy"]:.2f}% lr '
          f'{scalars["train/learning_rate"]:.4g}')
