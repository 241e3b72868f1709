"""Parquet and Arrow corpora: one record per table row.

Parquet files (FineWeb, DCLM, most Hugging Face exports), Arrow IPC stream
files, and the directories `datasets.Dataset.save_to_disk` writes (their
`state.json` lists the Arrow files; read with pyarrow alone, without
`datasets` or a network). `text_field`, `id_field` and `source_field` name
columns; string or binary text columns are checked like JSON Lines text.

Ids: the id column where one is given, else `<relative path>:<row>`, the
row's 0-based index in its file (as pyarrow slices and DuckDB's
`file_row_number` count it); the path is relative to the corpus root as for
JSON Lines (to the dataset directory for `save_to_disk` output).

Blocks follow the files' own groups (Parquet row groups, Arrow record
batches): consecutive groups of a file are merged while they fit in
`block_size` rows, and a larger group is cut into pieces of `block_size`
rows (its last piece shorter). Group sizes come from file metadata (a
Parquet footer; an Arrow stream's batch headers, memory-mapped), so blocks,
shares and `share_size` are known before any row is read, and a process
reads only the groups that hold its blocks.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_efficient.io import file_corpus, paths
from data_efficient.io import records as records_lib
from data_efficient.io.records import InputError, Record

# Errors pyarrow raises for unreadable or corrupt files.
_READ_ERRORS = (OSError, pa.ArrowException)
_FIX = "Repair or re-download the file"


@dataclasses.dataclass(frozen=True)
class _Layout:
  """What a file's metadata says: its groups, columns and readability.

  Attributes:
    group_sizes: Rows of each readable group, in order.
    columns: The column names.
    error: Why the file cannot be read past its readable groups (None if it
      can); one marked record, the row after them, stands for the rest.
  """

  group_sizes: tuple[int, ...]
  columns: tuple[str, ...]
  error: BaseException | None = None

  @property
  def readable_rows(self) -> int:
    return sum(self.group_sizes)


def block_ranges(group_sizes: list[int], block_size: int) -> list[range]:
  """The rows of each block of a file (see the module docstring).

  Args:
    group_sizes: Rows of each group of the file, in order.
    block_size: Most rows per block.

  Returns:
    Row ranges (0-based, in the file) covering every row once, in order.
  """
  blocks = []
  first = row = 0  # The open block is rows [first, row).
  for size in group_sizes:
    if size > block_size or row + size - first > block_size:
      if row > first:
        blocks.append(range(first, row))
      first = row
    if size > block_size:
      blocks += [
        range(lo, min(lo + block_size, row + size))
        for lo in range(row, row + size, block_size)
      ]
      first = row + size
    row += size
  if row > first:
    blocks.append(range(first, row))
  return blocks


def _open_input(path: str, *, memory_map: bool) -> Any:
  """A pyarrow input file: a URL's file object (`paths`, read in ranges,
  not whole objects); local files by path or memory-mapped."""
  if paths.is_remote(path):
    return paths.open_file(path)
  return pa.memory_map(path) if memory_map else path


class _ParquetFile:
  """One Parquet file, read a row range at a time (its row groups cached)."""

  def __init__(self, path: str):
    self._file = pq.ParquetFile(_open_input(path, memory_map=False))
    metadata = self._file.metadata
    self.layout = _Layout(
      tuple(
        metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)
      ),
      tuple(self._file.schema_arrow.names),
    )
    self._starts = list(
      itertools.accumulate(self.layout.group_sizes, initial=0)
    )
    self._cached: tuple[range, list[str], pa.Table] | None = None

  def read(self, rows: range, columns: list[str]) -> pa.Table:
    """Rows `rows` of `columns` (reads the row groups that hold them)."""
    first = bisect.bisect_right(self._starts, rows.start) - 1
    last = bisect.bisect_left(self._starts, rows.stop) - 1
    groups = range(first, last + 1)
    if self._cached is None or self._cached[:2] != (groups, columns):
      table = self._file.read_row_groups(groups, columns=columns)
      self._cached = groups, columns, table
    offset = rows.start - self._starts[first]
    return self._cached[2].slice(offset, len(rows))


class _ArrowStreamFile:
  """One Arrow IPC stream file (memory-mapped where local)."""

  def __init__(self, path: str):
    reader = pa.ipc.open_stream(_open_input(path, memory_map=True))
    batches, error = [], None
    try:
      batches.extend(reader)
    except _READ_ERRORS as e:
      error = e
    self._table = pa.Table.from_batches(batches, schema=reader.schema)
    self.layout = _Layout(
      tuple(b.num_rows for b in batches), tuple(reader.schema.names), error
    )

  def read(self, rows: range, columns: list[str]) -> pa.Table:
    """Rows `rows` of `columns`."""
    return self._table.select(columns).slice(rows.start, len(rows))


class TableCorpus(file_corpus.FileCorpus):
  """Parquet or Arrow stream files (see the module docstring).

  Blocks are `(file index, block in the file)`, as the module docstring
  says, and are dealt as `share_mode` says: whole files, or the corpus's
  blocks round-robin.
  """

  @functools.cached_property
  def _layouts(self) -> dict[str, _Layout]:
    """Each file's layout, read once (see `_layout`)."""
    return {}

  def _kind(self) -> str:
    parquet = self._files[0].endswith(file_corpus.PARQUET_SUFFIXES)
    return "parquet" if parquet else "arrow"

  def _open(self, rel: str) -> _ParquetFile | _ArrowStreamFile:
    path = file_corpus.join(self._root, rel)
    if rel.endswith(file_corpus.PARQUET_SUFFIXES):
      return _ParquetFile(path)
    return _ArrowStreamFile(path)

  def _layout(self, rel: str) -> _Layout:
    if rel not in self._layouts:
      try:
        self._layouts[rel] = self._open(rel).layout
      except _READ_ERRORS as e:  # No metadata: one marked record for all.
        self._layouts[rel] = _Layout((), (), e)
    return self._layouts[rel]

  def _block_ranges(self, rel: str, block_size: int) -> list[range]:
    layout = self._layout(rel)
    blocks = block_ranges(list(layout.group_sizes), block_size)
    if layout.error is not None:
      blocks.append(range(layout.readable_rows, layout.readable_rows + 1))
    return blocks

  def _share_blocks(
    self, process_index: int, process_count: int, block_size: int
  ) -> Iterator[tuple[int, str, int, range]]:
    """(file index, file, block in the file, rows) of this process's blocks.

    By 'files', a process takes whole files; by 'records', the blocks of the
    whole corpus, in order, are dealt round-robin.
    """
    by_files = self.share_mode(process_count) == "files"
    corpus_block = 0
    for file_index, rel in enumerate(self._files):
      if by_files and file_index % process_count != process_index:
        continue
      for block_index, rows in enumerate(self._block_ranges(rel, block_size)):
        if by_files or corpus_block % process_count == process_index:
          yield file_index, rel, block_index, rows
        corpus_block += 1

  def share_size(
    self, process_index: int = 0, process_count: int = 1, block_size: int = 1
  ) -> int:
    """See `Corpus.share_size`: from the files' metadata."""
    shares = self._share_blocks(process_index, process_count, block_size)
    return sum(len(rows) for *_, rows in shares)

  def _records(
    self,
    checker: records_lib.RecordChecker,
    process_index: int,
    process_count: int,
    start: int,
    block_size: int,
  ) -> Iterator[Record]:
    share_index = 0  # Position in this process's share.
    opened: tuple[str, Any] | None = None  # (file, reader or open error).
    for file_index, rel, block_index, rows in self._share_blocks(
      process_index, process_count, block_size
    ):
      skip = min(max(start - share_index, 0), len(rows))
      share_index += len(rows)
      self._stats["skipped"] += skip
      if skip == len(rows) and not checker.needs_all_ids:
        continue
      if opened is None or opened[0] != rel:
        try:
          opened = rel, self._open(rel)
        except _READ_ERRORS as e:
          opened = rel, e
      yield from self._block_records(
        checker, rel, opened[1], rows, (file_index, block_index), skip
      )

  def _block_records(
    self,
    checker: records_lib.RecordChecker,
    rel: str,
    reader: Any,
    rows: range,
    block: tuple[int, int],
    skip: int,
  ) -> Iterator[Record]:
    """Checked records of one block but its first `skip`.

    Those are checked too (not counted) where ids are checked for
    duplicates, so a resumed run marks what an uninterrupted one would.
    """
    path = file_corpus.join(self._root, rel)
    layout = self._layout(rel)
    kept = rows[skip:]
    read = rows if checker.needs_all_ids else kept
    if rows.start == layout.readable_rows:  # The unreadable rest of the file.
      records = [
        self._unreadable(
          checker,
          rel,
          row,
          f"{path} row {row}",
          f"cannot read the file from this row on: {layout.error!r}",
          block,
          count=row in kept,
        )
        for row in read
      ]
    else:
      records = self._read_records(checker, rel, reader, read, kept, block)
    for row, record in zip(read, records, strict=True):
      if row in kept:
        yield record

  def _read_records(
    self,
    checker: records_lib.RecordChecker,
    rel: str,
    reader: Any,
    read: range,
    kept: range,
    block: tuple[int, int],
  ) -> Iterator[Record]:
    """Checked records of rows `read` of a block (counted if `kept`)."""
    path = file_corpus.join(self._root, rel)
    layout = self._layout(rel)
    opts = self._options
    columns = list(
      dict.fromkeys(
        c
        for c in (opts.text_field, opts.id_field, opts.source_field)
        if c is not None and c in layout.columns
      )
    )
    error = reader if isinstance(reader, BaseException) else None
    if error is None and read:
      try:
        table = reader.read(read, columns)
        values = {c: table.column(c).to_pylist() for c in columns}
      except _READ_ERRORS as e:
        error = e
    if error is not None:
      where = f"{path} row {read.start}"
      if len(read) > 1:
        where = f"{path} rows {read.start}-{read.stop - 1}"
      for row in read:
        yield self._unreadable(
          checker,
          rel,
          row,
          where,
          f"cannot read these rows: {error!r}",
          block,
          count=row in kept,
        )
      return
    for i, row in enumerate(read):
      yield checker.finish_fields(
        {c: v[i] for c, v in values.items()},
        f"{rel}:{row}",
        rel,
        f"{path} row {row}",
        field_names=layout.columns,
        count=row in kept,
        block=block,
      )

  def _unreadable(
    self,
    checker: records_lib.RecordChecker,
    rel: str,
    row: int,
    where: str,
    detail: str,
    block: tuple[int, int],
    *,
    count: bool,
  ) -> Record:
    """A record whose row cannot be read (raises under 'raise')."""
    problems: list[str] = []
    checker.problem(problems, records_lib.READ_ERROR, where, detail, _FIX)
    return checker.finish(
      f"{rel}:{row}",
      "",
      rel,
      problems,
      where,
      readable=False,
      count=count,
      block=block,
    )


class SavedDatasetCorpus(TableCorpus):
  """A directory written by `datasets.Dataset.save_to_disk`."""

  def _kind(self) -> str:
    return "hf_dataset"

  def describe(self) -> dict[str, Any]:
    """Provenance: as for files, plus the dataset's fingerprint."""
    state = _read_json(file_corpus.join(self._root, _STATE))
    return {**super().describe(), "fingerprint": state.get("_fingerprint")}


_STATE = "state.json"
_DATASET_DICT = "dataset_dict.json"


def _read_json(path: str) -> Any:
  with file_corpus.open_binary(path) as f:
    return json.load(f)


def saved_dataset_files(spec: str) -> tuple[str, list[str]] | None:
  """(root, Arrow files) of a `save_to_disk` directory; None if not one.

  Args:
    spec: A path; a dataset directory holds `state.json`.

  Raises:
    InputError: for a `DatasetDict` directory (name a split's directory) or
      an incomplete save.
  """
  if not paths.isdir(spec):
    return None
  root = spec.rstrip("/") or "/"
  exists = paths.exists
  if exists(file_corpus.join(root, _DATASET_DICT)):
    splits = _read_json(file_corpus.join(root, _DATASET_DICT)).get("splits")
    raise InputError(
      f"{spec}: a Hugging Face DatasetDict (splits {splits}); give one "
      f"split's directory, e.g. {file_corpus.join(root, str(splits[0]))}."
    )
  if not exists(file_corpus.join(root, _STATE)):
    return None
  state = _read_json(file_corpus.join(root, _STATE))
  files = [entry["filename"] for entry in state.get("_data_files", [])]
  missing = [f for f in files if not exists(file_corpus.join(root, f))]
  if missing or not files:
    problem = (
      f"the data files {missing} listed in {_STATE} are missing"
      if files
      else f"{_STATE} lists no data files"
    )
    raise InputError(
      f"{spec}: {problem}; the save is incomplete: save the dataset again."
    )
  return root, files
