"""Rows dealt into bucket files on scratch storage, in bounded memory.

A global stage that must see rows together that its input holds apart (a
selection joining score directories by id, SemDeDup comparing a cluster's
members) deals them first: one pass over the input writes each row to the
Arrow IPC stream file of its bucket, and each bucket is then read back whole,
alone. Memory is one input batch while dealing and one bucket after it,
whatever the number of rows; the files may be local or gs:// URLs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa

from data_efficient.io import paths

# Bucket files open at once (more buckets read the input once per group).
OPEN_FILES = 256


def deal(
  batches: Callable[[], Iterable[tuple[pa.RecordBatch, np.ndarray]]],
  schema: pa.Schema,
  num_buckets: int,
  path_of: Callable[[int], str],
) -> None:
  """Writes every row of `batches()` to the file of its bucket.

  Every bucket gets a file, empty or not, written whole or not at all
  (`paths.atomic_write`); a bucket's rows keep their order in the input.

  Args:
    batches: Makes one pass over the input: (record batch of `schema`, [n]
      int bucket of each row, in [0, num_buckets)). Called once per
      `OPEN_FILES` buckets.
    schema: The files' schema.
    num_buckets: Buckets, hence files.
    path_of: The file of a bucket.
  """
  for first in range(0, num_buckets, OPEN_FILES):
    last = min(num_buckets, first + OPEN_FILES)
    with contextlib.ExitStack() as files:
      writers = [
        files.enter_context(
          pa.ipc.new_stream(
            files.enter_context(paths.atomic_write(path_of(b))), schema
          )
        )
        for b in range(first, last)
      ]
      for batch, bucket in batches():
        order = np.argsort(bucket, kind="stable")
        bucket, batch = bucket[order], batch.take(order)
        bounds = np.searchsorted(bucket, np.arange(first, last + 1))
        for writer, lo, hi in zip(
          writers, bounds[:-1], bounds[1:], strict=True
        ):
          if hi > lo:
            writer.write_batch(batch.slice(lo, hi - lo))


def read(path: str) -> pa.Table:
  """One bucket file, whole."""
  with paths.open_file(path) as f:
    return pa.ipc.open_stream(f).read_all()
