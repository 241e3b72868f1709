"""Score directories joined by id, streamed in bounded memory.

A selection needs, per example, its problem and one score per kind, from
directories written by different stages (with their own process counts,
shard sizes and row orders). `JoinedScores` streams them joined, pass after
pass:

- one directory: its record batches, as they are;
- several: `deal` first writes every directory's rows into buckets by a
  hash of the id (Arrow IPC files in a scratch directory; the number of
  buckets grows with the rows, so that one holds about `bucket_rows`); the
  first pass then reads one bucket of every input at a time, joins it by
  sorting on id and writes the joined bucket back as one file, which later
  passes read instead. Memory is one bucket per input, whatever the number
  of rows or the length of the ids.

In a multi-process job every process deals its share of each directory's
rows (`results.share`), into files of its own, and then streams its share of
the buckets, reading on the first pass what every process dealt into them
(a file per input and process), on later ones the bucket's joined file; so
each row is read once per pass, by one process, and the scratch directory
must be shared (a gs:// URL or a shared file system). With one input each
process streams its share of the rows. The problems are the first input's.
An id scored by one input and not by another, or scored twice, is an error
naming it.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_efficient.io import dealing, paths, results
from data_efficient.io import scores as scores_lib

# What a bucket file holds of an input: its rows' id, problem and score.
_BUCKET = pa.schema(
  [("id", pa.string()), ("problem", pa.string()), ("value", pa.float64())]
)


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


def _bucket_of(ids: pa.Array, buckets: int) -> np.ndarray:
  """[n] int64 buckets of ids: CRC-32 of their UTF-8, the same in every
  process (Python's `hash` of a str is salted per process)."""
  names = ids.cast(pa.binary()).to_pylist()
  return np.fromiter(map(zlib.crc32, names), np.int64, len(names)) % buckets


class JoinedScores:
  """The rows of several score directories joined by id; iterate per pass."""

  def __init__(
    self,
    sources: Sequence[scores_lib.ScoreSource],
    scratch: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
    bucket_rows: int = 1 << 18,
    batch_rows: int = 65_536,
  ):
    """Checks the inputs; `deal` writes the buckets.

    Args:
      sources: The score directories, the first one giving the problems.
      scratch: A directory for the buckets, local or a URL, shared by the
        processes of a job (the caller empties and removes it).
      process_index: This process, in `[0, process_count)`.
      process_count: Processes of the job, each streaming its share.
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
    self._index, self._count = process_index, process_count
    self._batch_rows = batch_rows
    self._buckets = max(1, -(-max(s.num_rows for s in sources) // bucket_rows))

  def __iter__(self) -> Iterator[Rows]:
    """One pass over this process's joined rows, in an order that does not
    matter; with several inputs, only once every process has dealt."""
    if len(self.sources) == 1:
      (source,) = self.sources
      rows = results.share(source.num_rows, self._index, self._count)
      for batch in source.batches(self._batch_rows, rows):
        yield Rows(
          batch.column(0), batch.column(1), {source.kind: _values(batch[2])}
        )
      return
    for bucket in results.share(self._buckets, self._index, self._count):
      table = self._joined(bucket)
      yield Rows(
        table.column(0).combine_chunks(),
        table.column(1).combine_chunks(),
        {
          s.kind: _values(table.column(2 + i))
          for i, s in enumerate(self.sources)
        },
      )

  def _path(self, source: int, bucket: int, process: int) -> str:
    name = f"{source}-{bucket:06d}-{process:05d}.arrow"
    return paths.join(self._scratch, name)

  def _joined_path(self, bucket: int) -> str:
    return paths.join(self._scratch, f"joined-{bucket:06d}.arrow")

  def deal(self) -> None:
    """Writes this process's share of every input's rows to the buckets of
    their id's hash (every bucket gets a file, empty or not). Nothing to do
    for one input."""
    if len(self.sources) == 1:
      return
    paths.makedirs(self._scratch)
    for i, source in enumerate(self.sources):
      share = results.share(source.num_rows, self._index, self._count)

      def batches(source=source, share=share):
        for batch in source.batches(self._batch_rows, share):
          batch = pa.RecordBatch.from_arrays(
            [
              c.cast(f.type)
              for c, f in zip(batch.columns, _BUCKET, strict=True)
            ],
            schema=_BUCKET,
          )
          yield batch, _bucket_of(batch.column(0), self._buckets)

      dealing.deal(
        batches,
        _BUCKET,
        self._buckets,
        lambda b, i=i: self._path(i, b, self._index),
      )

  def _read(self, source: int, bucket: int) -> pa.Table:
    """One input's rows of `bucket`, sorted by id (stable, and dealt in
    process order, each process's share in stream order: the copies of a
    repeated id keep their stream order, so the n-th copy in one input
    joins the n-th in another, as a corpus with a repeated id (marked
    `duplicate_id`) scores them)."""
    table = pa.concat_tables(
      dealing.read(self._path(source, bucket, process))
      for process in range(self._count)
    )
    return table.take(pc.sort_indices(table, [("id", "ascending")]))

  def _joined(self, bucket: int) -> pa.Table:
    """`bucket`'s rows joined (id, problem, one value column per input):
    joined from the dealt files and saved on the first pass, read back from
    that one file on later passes."""
    path = self._joined_path(bucket)
    if paths.exists(path):
      return dealing.read(path)
    table = self._join(bucket)
    with paths.atomic_write(path) as f:
      with pa.ipc.new_stream(f, table.schema) as writer:
        writer.write_table(table)
    return table

  def _join(self, bucket: int) -> pa.Table:
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
    return pa.table(
      [ids, tables[0].column(1), *(t.column(2) for t in tables)],
      names=["id", "problem", *(f"value{i}" for i in range(len(tables)))],
    )


def _first_difference(a: pa.ChunkedArray, b: pa.ChunkedArray) -> str:
  """The first id where two sorted id columns differ."""
  a, b = a.to_pylist(), b.to_pylist()
  for x, y in zip(a, b, strict=False):
    if x != y:
      return min(x, y)
  return (a if len(a) > len(b) else b)[min(len(a), len(b))]
