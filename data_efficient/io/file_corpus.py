"""Corpora of files: local paths, or gs:// URLs (`paths`).

`FileCorpus` holds what every file corpus shares (finding the files, dealing
them to processes, provenance); `LinesCorpus` reads JSON Lines and plain
text, plain, gzip or Zstandard compressed (streamed); `table_corpus` reads
Parquet and Arrow files.

Ids are stable across machines and runs: the id field where one is given,
else `<path relative to the corpus root>:<line>` (1-based), or the relative
path alone for one-document-per-file text. The corpus root is the directory
given, the directory part of a glob before its first wildcard, or the
directory holding a single file (so a single file's ids use its basename).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import posixpath
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

import zstandard

from data_efficient.io import paths, zstd
from data_efficient.io import records as records_lib
from data_efficient.io.records import InputError, Record

JSONL_SUFFIXES = (
  ".jsonl",
  ".jsonl.gz",
  ".jsonl.zst",
  ".json",
  ".json.gz",
  ".json.zst",
)
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow",)  # Arrow IPC streams, as `datasets` writes them.
SUFFIXES = JSONL_SUFFIXES + TEXT_SUFFIXES + PARQUET_SUFFIXES + ARROW_SUFFIXES
SHARE_MODES = ("auto", "files", "records")

_GLOB_CHARS = "*?["
_MISSING = object()
# Errors that mean "this file cannot be read any further" (I/O, truncated or
# corrupt gzip or Zstandard data).
_READ_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)
# `bytes_read` is updated every this many lines (a tell() each).
_LINES_PER_TELL = 1024


def _is_supported(path: str) -> bool:
  return path.endswith(SUFFIXES)


def resolve_files(spec: str) -> tuple[str, list[str]]:
  """Resolves a file, directory or glob into (root, sorted relative paths).

  Args:
    spec: A file of one of `SUFFIXES`, a directory (searched recursively for
      such files), or a glob of them.

  Returns:
    The corpus root and the supported files under it, relative to it, sorted.

  Raises:
    InputError: if nothing supported is found.
  """
  remote = paths.is_remote(spec)
  formats = ", ".join(SUFFIXES)
  if any(c in spec for c in _GLOB_CHARS):
    prefix = spec[: min(spec.find(c) for c in _GLOB_CHARS if c in spec)]
    root = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
    matches = paths.glob(spec)
    rels = [m[len(root) + 1 :] if root else m for m in matches]
    # (Object stores have no directories: skip one request per file there.)
    rels = [
      r
      for r in rels
      if _is_supported(r) and (remote or not paths.isdir(join(root, r)))
    ]
    root = root or "."
  elif paths.isdir(spec):
    root = spec.rstrip("/") or "/"
    rels = [r for r in paths.walk_files(root) if _is_supported(r)]
  elif paths.exists(spec):
    if not _is_supported(spec):
      raise InputError(
        f"{spec}: unsupported file type; use one of {formats} (JSON Lines, "
        "one document per line, Parquet or Arrow)."
      )
    root, name = posixpath.split(spec) if remote else os.path.split(spec)
    return root or ".", [name]
  else:
    raise InputError(
      f"{spec}: no such file or directory; check the path (a file, a "
      f"directory, or a glob of {formats} files)."
    )
  if not rels:
    raise InputError(
      f"{spec}: no {formats} files found; check the path or the glob."
    )
  return root, sorted(rels)


def join(root: str, rel: str) -> str:
  """The path of file `rel` of a corpus rooted at `root`."""
  return posixpath.join(root, rel) if root else rel


@contextlib.contextmanager
def open_binary(path: str) -> Iterator[BinaryIO]:
  """Opens a local or remote file, decompressing .gz and .zst (streamed)."""
  with _open_stored(path) as (f, _):
    yield f


@contextlib.contextmanager
def _open_stored(path: str) -> Iterator[tuple[BinaryIO, BinaryIO]]:
  """(the decompressed stream, the stored file under it) of `path`."""
  with contextlib.ExitStack() as stack:
    stored = stack.enter_context(paths.open_file(path))
    f = stored
    if path.endswith(".gz"):
      f = stack.enter_context(gzip.GzipFile(fileobj=stored, mode="rb"))
    elif path.endswith(".zst"):
      f = stack.enter_context(
        io.BufferedReader(zstd.ZstdReader(stored), 1 << 20)
      )
    yield f, stored


class FileCorpus(records_lib.Corpus):
  """Files dealt to processes whole or by blocks (see `open_corpus`).

  Subclasses read the records (and name their kind in `describe`).
  """

  def __init__(
    self,
    spec: str,
    root: str,
    files: list[str],
    options: records_lib.Options,
    *,
    share: str = "auto",
  ):
    """Creates the corpus.

    Args:
      spec: What the user gave, for provenance.
      root: The corpus root (ids are relative to it).
      files: The files, relative to `root`, in reading order.
      options: Reader settings.
      share: See `open_corpus`.
    """
    super().__init__(options)
    if share not in SHARE_MODES:
      raise ValueError(f"share={share!r}: use one of {SHARE_MODES}.")
    self._spec = spec
    self._share = share
    self._root, self._files = root, files

  @property
  def files(self) -> list[str]:
    """The corpus files, relative to the root, in reading order."""
    return list(self._files)

  def share_mode(self, process_count: int) -> str:
    """'files' (round-robin files) or 'records' (round-robin blocks).

    'auto' splits by files when there are at least as many files as
    processes (each process reads only its own files), else by records (each
    process reads every file but parses only the records of its own blocks).

    Args:
      process_count: Number of processes splitting the corpus.
    """
    if self._share != "auto":
      return self._share
    return "files" if len(self._files) >= process_count else "records"

  def _positional_ids(self) -> bool:
    return self._options.id_field is None

  def _kind(self) -> str:
    return "files"

  def _file_size(self, rel: str) -> int:
    """Bytes of corpus file `rel`, as stored."""
    return paths.size(join(self._root, rel))

  def describe(self) -> dict[str, Any]:
    """Provenance: root, files (relative, sorted) with sizes, and settings."""
    root = self._root
    if not paths.is_remote(root):
      root = os.path.abspath(root)
    return {
      "kind": self._kind(),
      "spec": self._spec,
      "root": root,
      "files": list(self._files),
      "file_sizes": [self._file_size(f) for f in self._files],
      "share": self._share,
      **self._options.to_dict(),
    }


class LinesCorpus(FileCorpus):
  """JSON Lines and/or plain-text files (see `open_corpus`).

  Blocks are `(file index, index in the file // block_size)`, and are dealt
  as `share_mode` says. By 'files', a process reads whole files (so whole
  blocks). By 'records', the blocks of the whole corpus, in order, are dealt
  round-robin: its `b`-th block goes to process `b % process_count` (with
  `block_size=1`, its `b`-th record).
  """

  def __init__(
    self,
    spec: str,
    root: str,
    files: list[str],
    options: records_lib.Options,
    *,
    one_doc_per_file: bool = False,
    share: str = "auto",
  ):
    """Creates the corpus; see `FileCorpus` and `open_corpus`."""
    super().__init__(spec, root, files, options, share=share)
    self._one_doc_per_file = one_doc_per_file

  def describe(self) -> dict[str, Any]:
    """Provenance: root, files (relative, sorted) with sizes, and settings."""
    return {**super().describe(), "one_doc_per_file": self._one_doc_per_file}

  def share_bytes(
    self, process_index: int = 0, process_count: int = 1
  ) -> int | None:
    """See `Corpus.share_bytes`: by 'records', every process reads every
    file."""
    by_files = self.share_mode(process_count) == "files"
    return sum(
      self._file_size(rel)
      for i, rel in enumerate(self._files)
      if not by_files or i % process_count == process_index
    )

  def _records(
    self,
    checker: records_lib.RecordChecker,
    process_index: int,
    process_count: int,
    start: int,
    block_size: int,
  ) -> Iterator[Record]:
    by_files = self.share_mode(process_count) == "files"
    corpus_block = -1  # Ordinal of the current block in the whole corpus.
    share_index = 0  # Position in this process's share.
    for file_index, rel in enumerate(self._files):
      if by_files and file_index % process_count != process_index:
        continue
      for position, (line, raw) in enumerate(self._raw_records(rel)):
        if not by_files:
          if position % block_size == 0:
            corpus_block += 1
          if corpus_block % process_count != process_index:
            continue
        block = (file_index, position // block_size)
        share_index += 1
        if share_index <= start:
          self._stats["skipped"] += 1
          # Ids of skipped records still enter the duplicate set, so a resumed
          # run marks exactly what an uninterrupted one would.
          if checker.needs_all_ids:
            self._build(checker, rel, line, raw, block, count=False)
          continue
        yield self._build(checker, rel, line, raw, block)

  def _raw_records(
    self, rel: str
  ) -> Iterator[tuple[int | None, bytes | BaseException]]:
    """Yields (line, raw bytes) of a file; (line, error) if reading fails.

    `line` is None for a whole-file document. A read error ends the file.
    """
    whole_file = self._one_doc_per_file and rel.endswith(TEXT_SUFFIXES)
    line = 0
    before = self._bytes_read  # of the files read before this one
    try:
      with _open_stored(join(self._root, rel)) as (f, stored):
        if whole_file:
          document = f.read()
          self._bytes_read = before + stored.tell()
          yield None, document
          return
        for line, raw in enumerate(f, 1):  # noqa: B007
          if line % _LINES_PER_TELL == 0:
            self._bytes_read = before + stored.tell()
          yield line, raw
        self._bytes_read = before + stored.tell()
    except _READ_ERRORS as e:
      yield (None if whole_file else line + 1), e

  def _build(
    self,
    checker: records_lib.RecordChecker,
    rel: str,
    line: int | None,
    raw: bytes | BaseException,
    block: tuple[int, int],
    *,
    count: bool = True,
  ) -> Record:
    """Decodes and checks one raw record of file `rel`."""
    path = join(self._root, rel)
    where = path if line is None else f"{path}:{line}"
    positional_id = rel if line is None else f"{rel}:{line}"
    problems: list[str] = []
    if isinstance(raw, BaseException):
      checker.problem(
        problems,
        records_lib.READ_ERROR,
        where,
        f"cannot read the file from here on: {raw!r}",
        "Repair or re-download the file",
      )
      return checker.finish(
        positional_id,
        "",
        rel,
        problems,
        where,
        readable=False,
        count=count,
        block=block,
      )
    if line is not None:
      raw = raw[:-1] if raw.endswith(b"\n") else raw
      raw = raw[:-1] if raw.endswith(b"\r") else raw
    text = checker.decode(raw, problems, where)
    if line == 1:
      text = text.removeprefix("\ufeff")  # Byte order mark.
    if rel.endswith(TEXT_SUFFIXES):
      return checker.finish(
        positional_id, text, rel, problems, where, count=count, block=block
      )
    return self._build_json(
      checker, text, positional_id, rel, problems, where, block, count
    )

  def _build_json(
    self,
    checker: records_lib.RecordChecker,
    line_text: str,
    positional_id: str,
    rel: str,
    problems: list[str],
    where: str,
    block: tuple[int, int],
    count: bool,
  ) -> Record:
    """Parses one JSON Lines line into a checked record."""
    if not line_text.strip():  # A blank line: an empty document.
      return checker.finish(
        positional_id, "", rel, problems, where, count=count, block=block
      )
    try:
      obj = json.loads(line_text)
    except json.JSONDecodeError as e:
      obj = _MISSING
      detail = f"malformed JSON: {e.msg} at column {e.colno}"
    except RecursionError:
      obj = _MISSING
      detail = "malformed JSON: nested too deeply"
    else:
      detail = f"{records_lib.type_name(obj)} where a JSON object was expected"
    if not isinstance(obj, dict):
      checker.problem(
        problems,
        records_lib.MALFORMED_JSON,
        where,
        detail,
        "Make each line one JSON object",
      )
      return checker.finish(
        positional_id,
        "",
        rel,
        problems,
        where,
        readable=False,
        count=count,
        block=block,
      )

    return checker.finish_fields(
      obj,
      positional_id,
      rel,
      where,
      problems=problems,
      count=count,
      block=block,
    )
