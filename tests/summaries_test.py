"""Stage summaries: clu's writer where TensorFlow imports, else tensorboard's
own event writer (nasty_jax.summaries)."""

import sys

import clu
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from nasty_jax import summaries


@pytest.fixture
def no_tensorflow(monkeypatch):
  """`from clu import metric_writers` fails, as it does without TF."""
  monkeypatch.delattr(clu, 'metric_writers', raising=False)
  monkeypatch.setitem(sys.modules, 'clu.metric_writers', None)


def test_with_tensorflow_the_writer_is_clus():
  writer = summaries.create_writer('/nonexistent', primary=False)
  assert type(writer).__name__ == 'MultiWriter'


def test_without_tensorflow_tensorboard_reads_what_is_written(
    tmp_path, no_tensorflow):
  writer = summaries.create_writer(str(tmp_path))
  assert isinstance(writer, summaries.EventWriter)
  writer.write_hparams({'stage': 'normal', 'batch_size': 128,
                        'model.dtype': 'bfloat16', 'profile': False})
  writer.write_scalars(390, {'train/loss': 1.25, 'eval/accuracy': 61.5})
  writer.write_scalars(780, {'train/loss': 0.75})
  writer.close()
  events = event_accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  loss = events.Tensors('train/loss')
  assert [e.step for e in loss] == [390, 780]
  assert [float(tensor_util.make_ndarray(e.tensor_proto)) for e in loss] == [
      1.25, 0.75]
  assert [e.step for e in events.Tensors('eval/accuracy')] == [390]
  assert '_hparams_/session_start_info' in events.Tags()['tensors']


def test_without_tensorflow_other_processes_write_nothing(
    tmp_path, no_tensorflow):
  writer = summaries.create_writer(str(tmp_path / 'w'), primary=False)
  assert isinstance(writer, summaries.NullWriter)
  writer.write_scalars(1, {'train/loss': 1.0})
  writer.flush()
  assert not (tmp_path / 'w').exists()


def test_without_tensorboard_either_nothing_is_written(
    tmp_path, no_tensorflow, monkeypatch):
  def missing(logdir):
    raise ImportError(f'no tensorboard for {logdir}')
  monkeypatch.setattr(summaries, 'EventWriter', missing)
  writer = summaries.create_writer(str(tmp_path))
  assert isinstance(writer, summaries.NullWriter)
