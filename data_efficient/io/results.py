"""Sharded, resumable per-example results: Parquet shards, manifest last.

An output directory holds:

  run_config.json                      the run's settings; a rerun must match
  part-PPPPP-of-NNNNN-SSSSSS.parquet   shard S of process P (of N processes)
  done-PPPPP-of-NNNNN.json             process P has finished (rows, shards)
  manifest.json                        provenance and shard list, written last

Every file appears atomically (`paths.atomic_write`: locally a temp file,
fsync and rename; on gs:// one upload), so after a crash the directory holds
only whole files. A shard is cut only at the end of a
`write()` call, once at least `rows_per_shard` rows are buffered: it holds
every buffered row, so shards end at write boundaries and depend only on the
sequence of writes. Shards are written with fixed settings, so a run that was
killed and resumed (skipping `rows_done` records, then repeating the same
writes) writes the same bytes as one that was not.

Output directories are local paths or gs:// URLs (`paths`).
"""

from __future__ import annotations

import collections
import json
import os
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_efficient.io import paths

MANIFEST = "manifest.json"
RUN_CONFIG = "run_config.json"
# Rows carry their records' problem categories here (comma-separated).
PROBLEM_COLUMN = "problem"

_SHARD = re.compile(r"part-(\d{5})-of-(\d{5})-(\d{6})\.parquet")
_TMP = ".tmp"
# Fixed Parquet settings: changing any of them changes the bytes written.
_PARQUET_OPTIONS = {
  "compression": "zstd",
  "compression_level": 3,
  "row_group_size": 8192,  # Bounds the memory of `iter_results`.
  "version": "2.6",
  "data_page_version": "1.0",
  "use_dictionary": True,
  "write_statistics": True,
}


def token_row_schema(*columns: tuple[str, pa.DataType]) -> pa.Schema:
  """Schema of a model stage's rows: id, problem, n_tokens, truncated, then
  the stage's own `columns`."""
  return pa.schema(
    [
      ("id", pa.string()),
      ("problem", pa.string()),
      ("n_tokens", pa.int32()),
      ("truncated", pa.bool_()),
      *columns,
    ]
  )


class OutputError(ValueError):
  """A problem with an output directory; the message says which and how."""


def shard_name(process_index: int, process_count: int, shard: int) -> str:
  """The file name of shard `shard` of process `process_index`."""
  return f"part-{process_index:05d}-of-{process_count:05d}-{shard:06d}.parquet"


def _done_name(process_index: int, process_count: int) -> str:
  return f"done-{process_index:05d}-of-{process_count:05d}.json"


def _write_json(path: str, obj: Any, tmp_suffix: str = _TMP) -> None:
  text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
  with paths.atomic_write(path, tmp_suffix) as f:
    f.write(text.encode("utf-8"))


def _read_json(path: str, what: str, fix: str) -> Any:
  try:
    return json.loads(paths.read_bytes(path))
  except FileNotFoundError as e:
    raise OutputError(f"{path}: missing {what}; {fix}") from e
  except (ValueError, UnicodeDecodeError) as e:
    raise OutputError(f"{path}: corrupted {what} ({e}); {fix}") from e


def write_json(output_dir: str | os.PathLike[str], name: str, obj: Any) -> None:
  """Writes `obj` as JSON to `output_dir/name`, atomically.

  Args:
    output_dir: An existing directory.
    name: File name; give each process its own (e.g. with its index).
    obj: JSON-serializable value.
  """
  path = paths.join(os.fspath(output_dir), name)
  _write_json(path, _jsonable(obj, name))


def read_json(output_dir: str | os.PathLike[str], name: str) -> Any:
  """Reads JSON written by `write_json`.

  Raises:
    OutputError: naming the file, if it is missing or corrupted.
  """
  path = paths.join(os.fspath(output_dir), name)
  return _read_json(path, "file", "rerun the same command to rewrite it.")


def _jsonable(obj: Any, what: str) -> Any:
  """A JSON round-trip of `obj` (tuples become lists, keys strings)."""
  try:
    return json.loads(json.dumps(obj, sort_keys=True))
  except (TypeError, ValueError) as e:
    raise ValueError(f"{what} must be JSON-serializable: {e}") from e


def _shorten(value: Any, limit: int = 60) -> str:
  text = json.dumps(value)
  return text if len(text) <= limit else text[:limit] + "..."


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  """Dotted keys whose values differ, with both values (shortened)."""
  if isinstance(old, dict) and isinstance(new, dict):
    found = []
    for key in sorted(set(old) | set(new)):
      name = f"{prefix}.{key}" if prefix else key
      if key not in old:
        found.append(f"{name} (new)")
      elif key not in new:
        found.append(f"{name} (missing now)")
      else:
        found += _differences(old[key], new[key], name)
    return found
  if old == new:
    return []
  return [f"{prefix or '(root)'}: {_shorten(old)} -> {_shorten(new)}"]


def _to_arrow(value: Any, field: pa.Field) -> pa.Array | pa.ChunkedArray:
  """Converts one column of a batch to Arrow, 2-D arrays to list columns."""
  if isinstance(value, pa.Array | pa.ChunkedArray):
    return value
  list_column = pa.types.is_fixed_size_list(field.type) or pa.types.is_list(
    field.type
  )
  if isinstance(value, np.ndarray) and value.ndim == 2 and list_column:
    # [rows, width] -> list<width> column (e.g. embeddings).
    rows, width = value.shape
    if (
      pa.types.is_fixed_size_list(field.type) and width != field.type.list_size
    ):
      raise ValueError(
        f"column {field.name!r}: width {width} does not match the schema's "
        f"{field.type}."
      )
    values = pa.array(value.reshape(-1), type=field.type.value_type)
    if pa.types.is_fixed_size_list(field.type):
      return pa.FixedSizeListArray.from_arrays(values, width)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, values)
  return pa.array(value, type=field.type)


class ResultWriter:
  """Writes one process's results as Parquet shards; resumes where it stopped.

  Usage (the runner):

    writer = ResultWriter(out, schema, process_index=i, process_count=n,
                          run_config=config)
    for record in corpus.records(i, n, start=writer.rows_done):
      ...; writer.write({"id": [...], "score": np.array([...])})
    writer.close()
    # After all processes have closed (a barrier), one of them:
    write_manifest(out, provenance)

  Attributes:
    rows_done: Rows in this process's shards already on disk when the writer
      was opened: the number of records to skip when resuming. It is always
      at the end of some `write()` of the earlier run.
  """

  def __init__(
    self,
    output_dir: str | os.PathLike[str],
    schema: pa.Schema,
    *,
    process_index: int = 0,
    process_count: int = 1,
    rows_per_shard: int = 50_000,
    run_config: Mapping[str, Any],
  ):
    """Opens (creating or resuming) `output_dir` for this process.

    Args:
      output_dir: Local directory (created if missing) or gs:// URL.
      schema: Schema of every row.
      process_index: This process, in `[0, process_count)`.
      process_count: Number of processes writing to `output_dir`.
      rows_per_shard: Fewest rows per shard file (the last one may hold
        fewer). A shard holds every row buffered when it is cut: at most
        `rows_per_shard - 1` rows plus those of one write.
      run_config: JSON-able settings of the run (model, corpus, prompt, ...);
        a rerun into the same directory must pass equal settings.

    Raises:
      OutputError: if the directory is not writable, holds a run with other
        settings, or holds shards that do not fit together.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(
        f"process_index={process_index} must be in [0, process_count) with "
        f"process_count={process_count} >= 1."
      )
    if rows_per_shard < 1:
      raise ValueError(f"rows_per_shard={rows_per_shard} must be >= 1.")
    self.output_dir = os.fspath(output_dir)
    self.schema = schema
    self.process_index = process_index
    self.process_count = process_count
    self.rows_per_shard = rows_per_shard

    self._make_dir()
    self._check_run_config(run_config)
    self._remove_temp_files()
    self._shard_rows = self._existing_shards()
    self.rows_done = sum(self._shard_rows)
    done_path = paths.join(
      self.output_dir, _done_name(process_index, process_count)
    )
    # A short last shard is written only by `close()`: the process finished.
    self._finished = paths.exists(done_path) or (
      bool(self._shard_rows) and self._shard_rows[-1] < rows_per_shard
    )
    self._buffer: list[pa.Table] = []
    self._buffered_rows = 0
    self._closed = False

  def _make_dir(self) -> None:
    where = self.output_dir
    try:
      paths.makedirs(where)
      probe = paths.join(where, f".write-test-{self.process_index}")
      paths.write_bytes(probe, b"")
      paths.remove(probe)
    except OSError as e:
      raise OutputError(
        f"{where}: cannot write to the output directory ({e.strerror or e}); "
        "choose a writable directory."
      ) from e

  def _check_run_config(self, run_config: Mapping[str, Any]) -> None:
    """Writes run_config.json, or checks it against the one already there."""
    config = _jsonable(
      {
        "run_config": dict(run_config),
        "writer": {
          "process_count": self.process_count,
          "rows_per_shard": self.rows_per_shard,
          "schema": self.schema.to_string(show_schema_metadata=False),
        },
      },
      "run_config",
    )
    path = paths.join(self.output_dir, RUN_CONFIG)
    if not paths.exists(path):
      # Every process may get here at once: each writes the same content
      # through its own temp file.
      _write_json(path, config, f"{_TMP}-{self.process_index}")
      return
    previous = _read_json(
      path,
      "run configuration",
      "restore it, or use a new output directory.",
    )
    if previous != config:
      raise OutputError(
        f"{self.output_dir}: holds results of a run with other settings; "
        f"differences ({RUN_CONFIG} -> now): "
        + "; ".join(_differences(previous, config))
        + ". Rerun with the same settings to resume it, or choose a new "
        "output directory."
      )

  def _remove_temp_files(self) -> None:
    """Removes temp files an interrupted run of this process left behind."""
    ours = (
      f"part-{self.process_index:05d}-of-{self.process_count:05d}-",
      f"done-{self.process_index:05d}",
      f"{RUN_CONFIG}{_TMP}-{self.process_index}",
    ) + ((MANIFEST,) if self.process_index == 0 else ())
    for name in paths.listdir(self.output_dir):
      if _TMP in name and name.startswith(ours):
        paths.remove(paths.join(self.output_dir, name))

  def _existing_shards(self) -> list[int]:
    """Row counts of this process's shards on disk, checked for gaps."""
    found: dict[int, str] = {}
    for name in paths.listdir(self.output_dir):
      match = _SHARD.fullmatch(name)
      if not match:
        continue
      process, count, shard = map(int, match.groups())
      if count != self.process_count:
        raise OutputError(
          f"{paths.join(self.output_dir, name)}: written by a run with "
          f"{count} processes, this one has {self.process_count}; use a "
          "new output directory, or the old process count."
        )
      if process == self.process_index:
        found[shard] = name
    rows = []
    for shard in range(len(found)):
      if shard not in found:
        raise OutputError(
          f"{self.output_dir}: shard {shard} of process "
          f"{self.process_index} is missing but later ones exist; delete "
          f"part-{self.process_index:05d}-of-{self.process_count:05d}-* "
          "to recompute this process's share."
        )
      path = paths.join(self.output_dir, found[shard])
      try:
        num_rows = pq.read_metadata(
          path, filesystem=paths.filesystem(path)
        ).num_rows
      except (OSError, pa.ArrowException) as e:
        raise OutputError(
          f"{path}: unreadable shard ({e}); delete it and this process's "
          "later shards, then rerun to recompute them."
        ) from e
      if rows and rows[-1] < self.rows_per_shard:
        raise OutputError(
          f"{path}: follows a shard with {rows[-1]} rows, fewer than "
          f"{self.rows_per_shard}; delete this process's shards from "
          f"shard {shard - 1} on and rerun."
        )
      rows.append(num_rows)
    return rows

  def write(self, batch: Mapping[str, np.ndarray | Sequence[Any]]) -> None:
    """Buffers rows; then writes them all as one shard if they are enough.

    The shard is cut after the whole batch, never inside it, so shards end
    where writes end: a caller that writes one whole unit of work per call
    (e.g. a chunk of records) resumes at a unit boundary.

    Args:
      batch: One array or list per schema column, all of the same length. A
        2-D array fills a list column (e.g. an embedding per row).

    Raises:
      ValueError: if the columns do not match the schema.
      OutputError: if this process's shards were already complete.
    """
    if self._closed:
      raise RuntimeError("ResultWriter.write() after close().")
    table = self._to_table(batch)
    if not table.num_rows:
      return
    if self._finished:
      raise OutputError(
        f"{self.output_dir}: process {self.process_index} already finished "
        f"with {self.rows_done} rows, yet more rows arrive: the input has "
        "changed since; use a new output directory."
      )
    self._buffer.append(table)
    self._buffered_rows += table.num_rows
    if self._buffered_rows >= self.rows_per_shard:
      self._write_shard(pa.concat_tables(self._buffer))
      self._buffer, self._buffered_rows = [], 0

  def _to_table(self, batch: Mapping[str, Any]) -> pa.Table:
    names = set(self.schema.names)
    if set(batch) != names:
      raise ValueError(
        f"batch columns {sorted(batch)} do not match the schema's "
        f"{self.schema.names}: missing {sorted(names - set(batch))}, "
        f"unexpected {sorted(set(batch) - names)}."
      )
    columns = []
    for field in self.schema:
      try:
        columns.append(_to_arrow(batch[field.name], field))
      except (pa.ArrowException, TypeError) as e:
        raise ValueError(
          f"column {field.name!r} cannot be stored as {field.type}: {e}"
        ) from e
    lengths = {
      f.name: len(c) for f, c in zip(self.schema, columns, strict=True)
    }
    if len(set(lengths.values())) > 1:
      raise ValueError(f"batch columns differ in length: {lengths}.")
    return pa.Table.from_arrays(columns, schema=self.schema)

  def _write_shard(self, table: pa.Table) -> None:
    shard = len(self._shard_rows)
    name = shard_name(self.process_index, self.process_count, shard)
    path = paths.join(self.output_dir, name)
    # One chunk per column, so the bytes do not depend on how rows arrived.
    with paths.atomic_write(path, _TMP) as f:
      pq.write_table(table.combine_chunks(), f, **_PARQUET_OPTIONS)
    self._shard_rows.append(table.num_rows)

  def close(self) -> int:
    """Writes the rows still buffered (a short shard); marks this process done.

    A process with no rows at all writes one empty shard, so that every
    process's schema is on disk.

    Returns:
      Total rows of this process, including those of earlier runs.
    """
    if self._closed:
      return sum(self._shard_rows)
    if self._buffered_rows or not self._shard_rows:
      rows = (
        pa.concat_tables(self._buffer)
        if self._buffer
        else self.schema.empty_table()
      )
      self._write_shard(rows)
      self._buffer, self._buffered_rows = [], 0
    names = [
      shard_name(self.process_index, self.process_count, s)
      for s in range(len(self._shard_rows))
    ]
    _write_json(
      paths.join(
        self.output_dir,
        _done_name(self.process_index, self.process_count),
      ),
      {
        "process_index": self.process_index,
        "process_count": self.process_count,
        "num_rows": sum(self._shard_rows),
        "shards": [
          {"file": n, "num_rows": r}
          for n, r in zip(names, self._shard_rows, strict=True)
        ],
      },
    )
    self._closed = True
    return sum(self._shard_rows)


def write_manifest(
  output_dir: str | os.PathLike[str], manifest: Mapping[str, Any]
) -> dict[str, Any]:
  """Writes manifest.json, atomically, once every process has closed.

  Call it last, from one process, after all writers have closed.

  Args:
    output_dir: The results directory.
    manifest: JSON-able provenance (code version, model, checkpoint, prompt,
      corpus description, seed, ...).

  Returns:
    The manifest written: `manifest` plus 'num_rows', 'process_count' and
    'shards' (a list of {'file', 'num_rows'} in (process, shard) order).

  Raises:
    OutputError: if a process has not finished or its shards are missing.
  """
  output_dir = os.fspath(output_dir)
  config_path = paths.join(output_dir, RUN_CONFIG)
  if not paths.exists(config_path):
    raise OutputError(
      f"{output_dir}: no {RUN_CONFIG}; write results with ResultWriter "
      "before the manifest."
    )
  config = _read_json(
    config_path, "run configuration", "rerun into a new directory."
  )
  process_count = config["writer"]["process_count"]
  shards = []
  for process in range(process_count):
    done_path = paths.join(output_dir, _done_name(process, process_count))
    if not paths.exists(done_path):
      raise OutputError(
        f"{output_dir}: process {process} of {process_count} has not "
        f"finished (no {posixpath.basename(done_path)}); wait for it, or "
        "rerun the same command to resume it."
      )
    done = _read_json(done_path, "process record", "rerun the same command.")
    for shard in done["shards"]:
      if not paths.exists(paths.join(output_dir, shard["file"])):
        raise OutputError(
          f"{output_dir}: shard {shard['file']} is missing; delete "
          f"{posixpath.basename(done_path)} and rerun the same command."
        )
    shards += done["shards"]
  written = dict(_jsonable(dict(manifest), "manifest"))
  written.update(
    num_rows=sum(s["num_rows"] for s in shards),
    process_count=process_count,
    shards=shards,
    problems=_problem_counts(output_dir, shards),
  )
  _write_json(paths.join(output_dir, MANIFEST), written)
  return written


def _problem_counts(
  output_dir: str, shards: Sequence[Mapping[str, Any]]
) -> dict[str, int]:
  """Rows per problem category over all shards (a row may have several)."""
  counts: collections.Counter[str] = collections.Counter()
  for shard in shards:
    path = paths.join(output_dir, shard["file"])
    parquet = pq.ParquetFile(path, filesystem=paths.filesystem(path))
    if PROBLEM_COLUMN not in parquet.schema_arrow.names:
      continue
    for value in parquet.read(columns=[PROBLEM_COLUMN]).column(0).to_pylist():
      counts.update(name for name in (value or "").split(",") if name)
  return dict(sorted(counts.items()))


def read_manifest(output_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """Reads the manifest of a complete results directory.

  Raises:
    OutputError: if the directory or its manifest is missing (an incomplete
      run) or the manifest is corrupted.
  """
  output_dir = os.fspath(output_dir)
  path = paths.join(output_dir, MANIFEST)
  if not paths.isdir(output_dir):
    raise OutputError(f"{output_dir}: no such results directory.")
  if not paths.exists(path):
    raise OutputError(
      f"{output_dir}: no {MANIFEST}, so the run that writes it is "
      "incomplete: rerun the same command to resume it."
    )
  fix = "rerun the same command to rewrite it."
  manifest = _read_json(path, "manifest", fix)
  if not (
    isinstance(manifest, dict)
    and isinstance(manifest.get("num_rows"), int)
    and isinstance(manifest.get("shards"), list)
  ):
    raise OutputError(f"{path}: corrupted manifest (no rows or shards); {fix}")
  return manifest


def completed_manifest(
  output_dir: str | os.PathLike[str], run_config: Mapping[str, Any]
) -> dict[str, Any] | None:
  """The manifest if `output_dir` holds a finished run of `run_config`.

  Rerunning a finished command then changes nothing; a directory without a
  manifest, or finished with another configuration, gives None (the writer
  resumes the former and refuses the latter, naming the difference).
  """
  try:
    manifest = read_manifest(output_dir)
  except OutputError:
    return None
  if manifest.get("run_config") != run_config:
    return None
  return manifest


def _shard_files(
  output_dir: str, manifest: dict[str, Any]
) -> Iterator[tuple[pq.ParquetFile, str]]:
  """Opens the manifest's shards in order, checking their row counts."""
  for shard in manifest["shards"]:
    path = paths.join(output_dir, shard["file"])
    try:
      parquet = pq.ParquetFile(path, filesystem=paths.filesystem(path))
    except (OSError, pa.ArrowException) as e:
      raise OutputError(
        f"{path}: listed in the manifest but unreadable ({e}); the "
        "directory was changed after the run, so recompute it."
      ) from e
    if parquet.metadata.num_rows != shard["num_rows"]:
      raise OutputError(
        f"{path}: {parquet.metadata.num_rows} rows, the manifest says "
        f"{shard['num_rows']}; the directory was changed after the run."
      )
    yield parquet, path


def _check_columns(
  parquet: pq.ParquetFile, columns: Sequence[str] | None
) -> None:
  names = parquet.schema_arrow.names
  if columns is not None and (
    missing := [c for c in columns if c not in names]
  ):
    raise ValueError(f"no columns {missing} in the results; there are {names}.")


def read_results(
  output_dir: str | os.PathLike[str], columns: Sequence[str] | None = None
) -> pa.Table:
  """Reads a complete results directory into one table.

  Args:
    output_dir: Directory written by `ResultWriter` + `write_manifest`.
    columns: Columns to read (default: all).

  Returns:
    All rows, in (process, shard) order.

  Raises:
    OutputError: if the run is incomplete or its files do not match the
      manifest.
  """
  output_dir = os.fspath(output_dir)
  manifest = read_manifest(output_dir)
  tables = []
  for parquet, _ in _shard_files(output_dir, manifest):
    _check_columns(parquet, columns)
    tables.append(parquet.read(columns=columns))
  if not tables:
    raise OutputError(f"{output_dir}: the manifest lists no shards.")
  table = pa.concat_tables(tables)
  if table.num_rows != manifest["num_rows"]:
    raise OutputError(
      f"{output_dir}: {table.num_rows} rows, the manifest says "
      f"{manifest['num_rows']}."
    )
  return table


def share(num_rows: int, process_index: int, process_count: int) -> range:
  """Process `process_index`'s rows of `num_rows`: a contiguous range.

  The shares of processes 0 .. process_count - 1 are disjoint, in order,
  cover every row and differ in size by at most one, so a reduction's
  processes read the input once between them, and the concatenation of their
  outputs in process order is the input order.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index={process_index} must be in [0, process_count) with "
      f"process_count={process_count} >= 1."
    )
  return range(
    num_rows * process_index // process_count,
    num_rows * (process_index + 1) // process_count,
  )


def iter_results(
  output_dir: str | os.PathLike[str],
  columns: Sequence[str] | None = None,
  batch_rows: int = 65_536,
  rows: range | None = None,
) -> Iterator[pa.RecordBatch]:
  """Streams a complete results directory in batches (bounded memory).

  Args:
    output_dir: Directory written by `ResultWriter` + `write_manifest`.
    columns: Columns to read (default: all).
    batch_rows: Maximum rows per batch.
    rows: Only these rows (a step-1 range of row numbers in (process, shard)
      order, e.g. a process's `share`); shards outside it are not opened.

  Yields:
    Record batches in (process, shard) order.

  Raises:
    OutputError: as `read_results`.
  """
  output_dir = os.fspath(output_dir)
  manifest = read_manifest(output_dir)
  if rows is None:
    rows = range(manifest["num_rows"])
  if rows.step != 1:
    raise ValueError(f"rows={rows}: a range of step 1.")
  listed = sum(shard["num_rows"] for shard in manifest["shards"])
  if listed != manifest["num_rows"]:
    raise OutputError(
      f"{output_dir}: its shards hold {listed} rows, the manifest says "
      f"{manifest['num_rows']}."
    )
  wanted, first, total = [], None, 0  # shards overlapping `rows`
  for shard in manifest["shards"]:
    if total < rows.stop and total + shard["num_rows"] > rows.start:
      wanted.append(shard)
      first = total if first is None else first
    total += shard["num_rows"]
  total = first or 0  # rows of the directory before the next batch
  for parquet, path in _shard_files(output_dir, {"shards": wanted}):
    _check_columns(parquet, columns)
    shard_end = total + parquet.metadata.num_rows
    batches = parquet.iter_batches(batch_size=batch_rows, columns=columns)
    while total < min(shard_end, rows.stop):
      try:
        batch = next(batches, None)
      except (OSError, pa.ArrowException) as e:
        raise OutputError(
          f"{path}: unreadable after {total} rows of the directory ({e}); "
          "the shard is corrupt: recompute the directory."
        ) from e
      if batch is None:
        raise OutputError(
          f"{path}: ends after {total} rows of the directory, its footer "
          f"says {shard_end}; the shard is corrupt: recompute the directory."
        )
      start, total = total, total + batch.num_rows
      lo, hi = max(start, rows.start), min(total, rows.stop)
      if lo < hi:
        yield batch.slice(lo - start, hi - lo)
