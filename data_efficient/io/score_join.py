"""Score directories joined by id, streamed in bounded memory.

A selection needs, per example, its problem and one score per kind, from
directories written by different stages (with their own process counts,
shard sizes and row orders). `JoinedScores` streams them joined, pass after
pass:

- one directory: its record batches, as they are;
- several: a first pass deals every directory's rows into buckets by a hash
  of the id (Arrow IPC files in a scratch directory; the number of buckets
  grows with the rows, so that one holds about `bucket_rows`), and each pass
  then reads one bucket of every input at a time and joins it by sorting on
  id. Memory is one bucket per input, whatever the number of rows or the
  length of the ids.

The problems are the first input's. An id scored by one input and not by
another, or scored twice, is an error naming it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_efficient.io import scores as scores_lib

# Bucket files open at once while dealing (each input is read once per group).
_OPEN_BUCKETS = 256


@dataclasses.dataclass(frozen=True)
class Rows:
  """A batch of joined rows."""

  ids: pa.Array  # [n] string
  problems: pa.Array  # [n] string, null = none
  values: Mapping[str, np.ndarray]  # kind -> [n] float64 (NaN = null)

  def __len__(self) -> int:
    return len(self.ids)


def _values(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
  return column.to_numpy(zero_copy_only=False).astype(np.float64)


class JoinedScores:
  """The rows of several score directories joined by id; iterate per pass.

  Use as a context manager: leaving it removes the scratch directory.
  """

  def __init__(
    self,
    sources: Sequence[scores_lib.ScoreSource],
    scratch: str,
    *,
    bucket_rows: int = 1 << 18,
    batch_rows: int = 65_536,
  ):
    """Checks the inputs; the buckets are written on the first pass.

    Args:
      sources: The score directories, the first one giving the problems.
      scratch: A directory for the buckets (emptied, then removed on exit).
      bucket_rows: Rows per bucket, about.
      batch_rows: Rows per batch of a single input.

    Raises:
      ValueError: if there are no inputs, or one kind is given twice.
    """
    if not sources:
      raise ValueError("Give at least one score directory (--scores).")
    seen = {}
    for s in sources:
      if s.kind in seen:
        raise ValueError(
          f"Two {s.kind} inputs given ({seen[s.kind]} and {s.path}); pass one."
        )
      seen[s.kind] = s.path
    self.sources = tuple(sources)
    self.num_rows = sources[0].num_rows
    self._scratch = scratch
    self._batch_rows = batch_rows
    self._buckets = max(1, -(-max(s.num_rows for s in sources) // bucket_rows))
    self._dealt = False

  def __enter__(self) -> JoinedScores:
    return self

  def __exit__(self, *exc) -> None:
    shutil.rmtree(self._scratch, ignore_errors=True)

  def __iter__(self) -> Iterator[Rows]:
    """One pass over every joined row, in an order that does not matter."""
    if len(self.sources) == 1:
      (source,) = self.sources
      for batch in source.batches(self._batch_rows):
        yield Rows(
          batch.column(0), batch.column(1), {source.kind: _values(batch[2])}
        )
      return
    if not self._dealt:
      self._deal()
    for bucket in range(self._buckets):
      yield self._join(bucket)

  def _path(self, source: int, bucket: int) -> str:
    return os.path.join(self._scratch, f"{source}-{bucket:06d}.arrow")

  def _deal(self) -> None:
    """Writes every input's rows to the bucket of their id's hash."""
    shutil.rmtree(self._scratch, ignore_errors=True)
    os.makedirs(self._scratch)
    for i, source in enumerate(self.sources):
      for first in range(0, self._buckets, _OPEN_BUCKETS):
        last = min(self._buckets, first + _OPEN_BUCKETS)
        writers = {}
        for batch in source.batches(self._batch_rows):
          # The hash only has to agree within this process: buckets are
          # scratch, and the selection does not depend on them.
          ids = batch.column(0).to_pylist()
          bucket = np.fromiter(map(hash, ids), np.int64, len(ids))
          bucket %= self._buckets
          order = np.argsort(bucket, kind="stable")
          bucket, batch = bucket[order], batch.take(order)
          bounds = np.searchsorted(bucket, np.arange(first, last + 1))
          for b, lo, hi in zip(
            range(first, last), bounds[:-1], bounds[1:], strict=True
          ):
            if hi > lo:
              if b not in writers:
                writers[b] = pa.ipc.new_stream(self._path(i, b), batch.schema)
              writers[b].write_batch(batch.slice(lo, hi - lo))
        for writer in writers.values():
          writer.close()
    self._dealt = True

  def _read(self, source: int, bucket: int) -> pa.Table:
    """One input's rows of `bucket`, sorted by id (stable: the copies of a
    repeated id keep their stream order, so the n-th copy in one input
    joins the n-th in another, as a corpus with a repeated id (marked
    `duplicate_id`) scores them)."""
    path = self._path(source, bucket)
    if os.path.exists(path):
      with pa.ipc.open_stream(path) as reader:
        table = reader.read_all()
    else:
      table = pa.table(
        {"id": pa.array([], pa.string()), "problem": pa.array([], pa.string())}
      ).append_column(self.sources[source].column, pa.array([], pa.float32()))
    return table.take(pc.sort_indices(table, [("id", "ascending")]))

  def _join(self, bucket: int) -> Rows:
    tables = [self._read(i, bucket) for i in range(len(self.sources))]
    base, ids = self.sources[0], tables[0].column(0)
    for source, table in zip(self.sources[1:], tables[1:], strict=True):
      other = table.column(0)
      if not other.equals(ids):
        only = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=other)))
        where = (base.path, source.path)
        if not len(only):
          only = pc.filter(other, pc.invert(pc.is_in(other, value_set=ids)))
          where = where[::-1]
        if not len(only):  # the same ids, repeated a different number of times
          only = _first_difference(ids, other)
          raise ValueError(
            f"{source.path} and {base.path} score id {only!r} a different "
            "number of times: they come from different corpora or runs."
          )
        raise ValueError(
          f"{source.path} and {base.path} score different examples: id "
          f"{only[0].as_py()!r} is in {where[0]} but not in {where[1]}; "
          "they come from different corpora or runs."
        )
    return Rows(
      ids.combine_chunks(),
      tables[0].column(1).combine_chunks(),
      {
        s.kind: _values(t.column(2))
        for s, t in zip(self.sources, tables, strict=True)
      },
    )


def _first_difference(a: pa.ChunkedArray, b: pa.ChunkedArray) -> str:
  """The first id where two sorted id columns differ."""
  a, b = a.to_pylist(), b.to_pylist()
  for x, y in zip(a, b, strict=False):
    if x != y:
      return min(x, y)
  return (a if len(a) > len(b) else b)[min(len(a), len(b))]
