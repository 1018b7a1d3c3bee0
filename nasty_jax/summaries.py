"""A stage's TensorBoard summaries, with or without TensorFlow.

clu's SummaryWriter writes through TensorFlow, and importing
`clu.metric_writers` at all imports TensorFlow. Where TensorFlow is
installed, stages keep that writer (asynchronous, as before). On a machine
that has jax and tensorboard but no TensorFlow (a GPU image with its own
CUDA jax), `EventWriter` writes the same records, scalars as the tensor
summaries `tf.summary.scalar` makes and the hyper-parameters as the hparams
plugin's, through tensorboard's own event-file writer, which needs no
TensorFlow; TensorBoard reads both alike. Without tensorboard either,
nothing is written.

Every writer has the methods the engine calls: `write_scalars(step,
{name: value})`, `write_hparams({name: value})`, `flush()` and `close()`.
"""

import time
from typing import Any, Mapping

from absl import logging


class NullWriter:
  """Writes nothing: processes other than the first, or no tensorboard."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    del step, scalars

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    del hparams

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class EventWriter:
  """TensorBoard event files written without TensorFlow.

  tensorboard's EventFileWriter queues the records and writes them from a
  thread of its own, so a call returns at once, as clu's AsyncWriter does.
  """

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import summary_v2 as hparams_summary
    from tensorboard.plugins.scalar import summary_v2 as scalar_summary
    from tensorboard.summary.writer import event_file_writer
    # pylint: enable=g-import-not-at-top
    self._event_pb2 = event_pb2
    self._hparams_pb = hparams_summary.hparams_pb
    self._scalar_pb = scalar_summary.scalar_pb
    self._writer = event_file_writer.EventFileWriter(logdir)

  def _add(self, step: int, summary: Any) -> None:
    self._writer.add_event(self._event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for name, value in scalars.items():
      self._add(step, self._scalar_pb(name, float(value)))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._add(0, self._hparams_pb(dict(hparams)))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def create_writer(logdir: str, *, primary: bool = True) -> Any:
  """The writer of one stage's summaries in `logdir`.

  Args:
    logdir: where the event files go.
    primary: whether this process writes (process 0); the others get a
      writer that writes nothing.

  Returns:
    clu's asynchronous TensorFlow writer where TensorFlow imports, else an
    `EventWriter`, else (no tensorboard either) a `NullWriter`.
  """
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return _fallback(logdir, primary, e)
  if not primary:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncWriter(metric_writers.SummaryWriter(logdir))


def _fallback(logdir: str, primary: bool, error: ImportError) -> Any:
  """A writer without TensorFlow (`create_writer`)."""
  if not primary:
    return NullWriter()
  try:
    writer = EventWriter(logdir)
  except ImportError as e:
    logging.warning('Neither TensorFlow (%s) nor tensorboard (%s) imports: '
                    'no TensorBoard summaries for %s.', error, e, logdir)
    return NullWriter()
  logging.info('TensorFlow is not installed (%s): TensorBoard summaries '
               'are written by tensorboard\'s own event writer.', error)
  return writer
