"""Strings sorted in bounded memory: sorted runs on disk, then one merge.

A selection keeps up to hundreds of millions of ids (20% of C4: 73M urls)
and writes them sorted. `SortedRuns` buffers the strings it is given up to
`run_bytes`, writes each full buffer sorted to a scratch file (an Arrow IPC
run), and yields them all in order by merging the runs, reading each a small
batch at a time. In a multi-process job each process sorts its own strings;
the others `close` theirs into runs on shared storage (local or gs://,
`paths`), and one process merges its own with theirs (`read`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from data_efficient.io import paths

_SCHEMA = pa.schema([("id", pa.string())])
# Rows per batch of a run on disk: what the merge holds of each run (C4's
# 20%, 73M urls: ~150 runs of 32 MB, ~150 x 1024 ids in the merge).
_RUN_BATCH = 1024


def _sort(strings: list[pa.Array]) -> pa.Array:
  strings = pa.concat_arrays(strings)
  return strings.take(pc.sort_indices(strings))


def _run_path(scratch: str, run: int) -> str:
  return paths.join(scratch, f"run-{run:06d}.arrow")


def _read_run(path: str) -> Iterator[str]:
  with paths.open_file(path) as source:
    run = pa.ipc.open_file(source)
    for i in range(run.num_record_batches):
      yield from run.get_batch(i).column(0).to_pylist()


def read(scratch: str, runs: int) -> Iterator[str]:
  """The strings of the first `runs` runs in `scratch`, merged in order: what
  a `SortedRuns` there closed with `runs` runs holds."""
  return heapq.merge(*(_read_run(_run_path(scratch, i)) for i in range(runs)))


class SortedRuns:
  """Collects strings, then yields them all sorted (code point order)."""

  def __init__(self, scratch: str, run_bytes: int = 1 << 25):
    """Starts an empty collection.

    Args:
      scratch: A directory for the runs, local or a URL (created; the
        caller removes it).
      run_bytes: String bytes buffered before a run is written.
    """
    self._scratch = scratch
    self._run_bytes = run_bytes
    self._buffer: list[pa.Array] = []
    self._bytes = 0
    self._runs = 0  # written to scratch

  def add(self, strings: pa.Array) -> None:
    """Adds [n] non-null strings."""
    self._buffer.append(strings)
    self._bytes += strings.nbytes
    if self._bytes >= self._run_bytes:
      self._write_run()

  def _write_run(self) -> None:
    paths.makedirs(self._scratch)
    path = _run_path(self._scratch, self._runs)
    table = pa.table({"id": _sort(self._buffer)}, schema=_SCHEMA)
    with paths.atomic_write(path) as f, pa.ipc.new_file(f, _SCHEMA) as writer:
      writer.write_table(table, max_chunksize=_RUN_BATCH)
    self._runs += 1
    self._buffer, self._bytes = [], 0

  def close(self) -> int:
    """Writes the strings still buffered as a last run, for another process
    to `read`; returns the number of runs."""
    if self._buffer:
      self._write_run()
    return self._runs

  def __iter__(self) -> Iterator[str]:
    """Every string added, in sorted order (once)."""
    if not self._runs:
      yield from _sort(self._buffer or [pa.array([], pa.string())]).to_pylist()
      return
    yield from read(self._scratch, self.close())
