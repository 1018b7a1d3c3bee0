"""`tfds.testing.mock_data` made usable by the data_source readers.

In TFDS 4.9.10 mock_data fakes reading but not `is_prepared()`, and its
batched read (`__getitems__`) is broken; this reads one record at a time.
"""

import contextlib
from unittest import mock

import tensorflow_datasets as tfds
from tensorflow_datasets.core.data_sources import array_record


@contextlib.contextmanager
def mock_tfds(num_examples: int):
  with tfds.testing.mock_data(num_examples=num_examples), mock.patch.object(
      tfds.core.DatasetBuilder, 'is_prepared', return_value=True
  ), mock.patch.object(array_record.ArrayRecordDataSource, '__getitems__',
                       lambda self, keys: [self[k] for k in keys]):
    yield
