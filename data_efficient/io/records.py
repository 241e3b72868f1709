"""Records, input errors, and the checks every corpus reader shares.

A reader turns raw input into `(id, text)` pairs; `RecordChecker` applies the
same validation to all of them, so JSONL, text, Parquet, Arrow and TFDS
corpora report the same problem categories under the same `on_error` policy:

* 'raise': the first real problem raises `InputError` naming where it is and
  how to fix it.
* 'mark': the record is still yielded, with `Record.problem` set (and empty
  text where nothing could be read), so downstream stages write a row for it
  and summaries count it.

Empty or whitespace-only text, and truncation by `max_chars`, are never
errors: the record is marked under both policies.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

from data_efficient.io import id_set

# Problem categories (values of `Record.problem`, keys of `Corpus.stats`).
EMPTY = "empty"
WHITESPACE = "whitespace"
TOO_LONG = "too_long"
INVALID_UTF8 = "invalid_utf8"
NUL_BYTES = "nul_bytes"
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
NOT_A_STRING = "not_a_string"
DUPLICATE_ID = "duplicate_id"
READ_ERROR = "read_error"

# Marked but never raised: the input is readable, just not useful (or was
# truncated on request).
NEVER_RAISED = frozenset({EMPTY, WHITESPACE, TOO_LONG})

ON_ERROR_POLICIES = ("raise", "mark")

# Records whose text could not be read carry no information to rank by:
# `select` leaves them out unless told otherwise.
DEFAULT_EXCLUDED_PROBLEMS = (
  MALFORMED_JSON,
  MISSING_FIELD,
  NOT_A_STRING,
  READ_ERROR,
  DUPLICATE_ID,
)

_SURROGATES = re.compile("[\ud800-\udfff]")

_FIX_HINT = "or pass on_error='mark' to keep it as a marked record"
_MISSING = object()
# How messages name the type of a field's value (JSON's names, which also fit
# the Python values of Arrow columns).
_TYPE_NAMES = {
  dict: "an object",
  list: "an array",
  str: "a string",
  bytes: "bytes",
  int: "a number",
  float: "a number",
  bool: "a boolean",
  type(None): "null",
}


def type_name(value: Any) -> str:
  """The type of a field's value as messages name it ('an array', 'null')."""
  return _TYPE_NAMES.get(type(value), f"a {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class Record:
  """One example of a corpus.

  Attributes:
    id: Stable identifier: the id field, the TFDS `url`, or
      `<relative path>:<line>` (1-based; for Parquet and Arrow, the 0-based
      row).
    text: The document ('' where nothing could be read).
    problem: None for a clean record, else the problem categories found,
      comma-separated in detection order (e.g. 'empty', or
      'invalid_utf8,too_long').
    source: Where it came from: the file's relative path, the value of
      `source_field`, or the TFDS split.
    block: The block holding it (see `Corpus.records`): `(file index, index
      in the file // block_size)` for JSONL and text (the file index in
      sorted file order), `(file index, block in the file)` for Parquet and
      Arrow (blocks follow row groups, see `table_corpus`), `index in the
      split // block_size` for TFDS; None for records not read from a
      corpus.
  """

  id: str
  text: str
  problem: str | None = None
  source: str | None = None
  block: Hashable | None = None

  @property
  def problems(self) -> tuple[str, ...]:
    """The problem categories as a tuple (empty for a clean record)."""
    return tuple(self.problem.split(",")) if self.problem else ()


class InputError(ValueError):
  """A problem with the input corpus; the message says where and how to fix."""


class Corpus(abc.ABC):
  """A corpus that each of several processes reads a disjoint share of.

  Subclasses implement `_records` (and `describe`), and say whether their
  default ids are unique by construction (`_positional_ids`).
  """

  def __init__(self, options: Options) -> None:
    self._options = options
    self._stats: collections.Counter[str] = collections.Counter()
    self._bytes_read = 0

  @property
  def stats(self) -> collections.Counter[str]:
    """Counts from the latest `records()` iteration.

    'records': records yielded; 'skipped': records passed over by `start`;
    one key per problem category (each category of a record counted once).
    Reset when `records()` is called again.
    """
    return self._stats

  @property
  def bytes_read(self) -> int:
    """Bytes of the share's files read so far by the latest `records()`
    iteration (as stored: compressed bytes of .gz and .zst files), for
    progress against `share_bytes`. Reset when `records()` is called."""
    return self._bytes_read

  @abc.abstractmethod
  def describe(self) -> dict[str, Any]:
    """JSON-able provenance for manifests (kind, files or TFDS name, ...)."""

  def share_size(
    self, process_index: int = 0, process_count: int = 1, block_size: int = 1
  ) -> int | None:
    """Records in this process's share (see `records`), when known without
    reading them (TFDS split metadata, Parquet footers, Arrow batch
    headers); None otherwise. Progress bars use it for their ETA."""
    del process_index, process_count, block_size
    return None

  def share_bytes(
    self, process_index: int = 0, process_count: int = 1
  ) -> int | None:
    """Bytes of the files this process reads for its share (as stored), for
    corpora whose record count is unknown until read (JSON Lines, text);
    None otherwise. Progress bars measure `bytes_read` against it."""
    del process_index, process_count
    return None

  def records(
    self,
    process_index: int = 0,
    process_count: int = 1,
    start: int = 0,
    block_size: int = 1,
  ) -> Iterator[Record]:
    """Yields this process's share of the records, in a deterministic order.

    The shares of processes `0 .. process_count - 1` are disjoint and together
    hold every record exactly once.

    Records come in blocks, which depend on the corpus and `block_size`
    alone, never on the process count: a block is up to `block_size`
    consecutive records of one file (a file's last block may be shorter;
    blocks never span files), or of a TFDS split in its canonical order
    (aligned to multiples of `block_size` of the index in the split). Every
    share consists of whole blocks, in corpus order, and consecutive records
    with equal `Record.block` are exactly one block: a consumer that cuts its
    work where `block` changes sees the same pieces whatever the process
    count. A share may be empty.

    Args:
      process_index: This process, in `[0, process_count)`.
      process_count: Number of processes splitting the corpus.
      start: Number of records at the beginning of this share to skip (the
        resume point); the records yielded equal `list(share)[start:]`,
        problem marks included. Any `start` works; a consumer that must
        resume at its own chunk boundaries passes one at a block boundary.
      block_size: Most records per block (1: every record is a block).
    """
    check_share(process_index, process_count, start, block_size)
    self._stats = collections.Counter()
    self._bytes_read = 0
    checker = RecordChecker(
      self._options, self._stats, ids_are_unique=self._positional_ids()
    )
    return self._records(
      checker, process_index, process_count, start, block_size
    )

  def _positional_ids(self) -> bool:
    """Whether ids are unique by construction (not checked for duplicates)."""
    return False

  @abc.abstractmethod
  def _records(
    self,
    checker: RecordChecker,
    process_index: int,
    process_count: int,
    start: int,
    block_size: int,
  ) -> Iterator[Record]:
    """`records`, given the validated arguments and a fresh checker."""


def check_share(
  process_index: int, process_count: int, start: int, block_size: int
) -> None:
  """Validates the arguments of `Corpus.records`."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index={process_index} must be in [0, process_count) with "
      f"process_count={process_count} >= 1."
    )
  if start < 0:
    raise ValueError(f"start={start} must be >= 0.")
  if block_size < 1:
    raise ValueError(f"block_size={block_size} must be >= 1.")


@dataclasses.dataclass(frozen=True)
class Options:
  """Reader settings shared by every corpus kind (see `open_corpus`)."""

  text_field: str = "text"
  id_field: str | None = None
  source_field: str | None = None
  on_error: str = "raise"
  max_chars: int | None = None
  check_duplicates: bool = True

  def __post_init__(self):
    if self.on_error not in ON_ERROR_POLICIES:
      raise ValueError(
        f"on_error={self.on_error!r}: use one of {ON_ERROR_POLICIES}."
      )
    if self.max_chars is not None and self.max_chars < 1:
      raise ValueError(f"max_chars={self.max_chars} must be >= 1 or None.")

  def to_dict(self) -> dict[str, Any]:
    """The settings as a JSON-able dict, for provenance."""
    return dataclasses.asdict(self)


def _has_surrogates(s: str) -> bool:
  """Whether `s` holds lone surrogates (JSON '\\ud800'), not valid UTF-8."""
  if s.isascii():
    return False
  try:
    s.encode("utf-8")
  except UnicodeEncodeError:
    return True
  return False


def _replace_surrogates(s: str) -> str:
  return _SURROGATES.sub("\ufffd", s)


class RecordChecker:
  """Validates records of one `records()` iteration and counts problems.

  Holds the per-iteration state: the duplicate-id set and the stats counter.
  Duplicates are found within one process's share only; duplicates across
  processes are found when the shards are merged downstream.
  """

  def __init__(
    self,
    options: Options,
    stats: collections.Counter[str],
    *,
    ids_are_unique: bool,
  ):
    """Creates a checker.

    Args:
      options: Reader settings.
      stats: Counter to update (the corpus's `stats`).
      ids_are_unique: True where ids are unique by construction (`path:line`),
        so the duplicate check is skipped.
    """
    self.options = options
    self._stats = stats
    self._ids = (
      id_set.IdHashSet()
      if options.check_duplicates and not ids_are_unique
      else None
    )

  @property
  def needs_all_ids(self) -> bool:
    """Whether skipped records must still be checked to see their ids."""
    return self._ids is not None

  def problem(
    self, problems: list[str], kind: str, where: str, detail: str, fix: str
  ) -> None:
    """Raises `InputError` under 'raise', else records `kind` in `problems`.

    Args:
      problems: The record's problem list, appended to under 'mark'.
      kind: Problem category.
      where: Location, e.g. 'data/a.jsonl:12'.
      detail: What is wrong.
      fix: How to fix it (the 'mark' alternative is appended).
    """
    if self.options.on_error == "raise" and kind not in NEVER_RAISED:
      raise InputError(f"{where}: {detail} ({kind}). {fix}, {_FIX_HINT}.")
    problems.append(kind)

  def decode(self, raw: bytes, problems: list[str], where: str) -> str:
    """Decodes UTF-8; under 'mark', invalid bytes become U+FFFD."""
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError as e:
      self.problem(
        problems,
        INVALID_UTF8,
        where,
        f"invalid UTF-8 at byte {e.start} ({raw[e.start : e.start + 4]!r})",
        "Re-encode the input as UTF-8",
      )
      return raw.decode("utf-8", "replace")

  def finish_fields(
    self,
    fields: Mapping[str, Any],
    positional_id: str,
    default_source: str,
    where: str,
    *,
    field_names: Sequence[str] | None = None,
    problems: list[str] | None = None,
    count: bool = True,
    block: Hashable | None = None,
  ) -> Record:
    """Checks a record given as named fields (a JSON object, a table row).

    The id, text and source come from the fields `Options` names. Text or
    ids held as bytes are decoded as UTF-8.

    Args:
      fields: The record's fields.
      positional_id: Its id when `id_field` is unset or unusable.
      default_source: Its source when `source_field` is unset or empty.
      where: Its location, for error messages.
      field_names: The fields that exist, for messages (default: `fields`).
      problems: Problems found so far (modified).
      count: See `finish`.
      block: See `finish`.

    Returns:
      The record, with `problem` set where any were found.

    Raises:
      InputError: under 'raise', for a missing or unusable field, or as
        `finish` does.
    """
    opts = self.options
    problems = [] if problems is None else problems
    names = sorted(fields if field_names is None else field_names)[:20]
    record_id = positional_id
    if opts.id_field is not None:
      value = fields.get(opts.id_field, _MISSING)
      if isinstance(value, bytes):
        value = self.decode(value, problems, where)
      if value is _MISSING or value == "":
        self.problem(
          problems,
          MISSING_FIELD,
          where,
          f"no id field {opts.id_field!r} (fields: {names})",
          "Set id_field to the field that holds the id",
        )
      elif isinstance(value, bool) or not isinstance(value, str | int):
        self.problem(
          problems,
          NOT_A_STRING,
          where,
          f"id field {opts.id_field!r} is {type_name(value)}, not a string "
          "or integer",
          "Make the id a string",
        )
      else:
        record_id = str(value)

    source = default_source
    if opts.source_field is not None:
      value = fields.get(opts.source_field)
      if isinstance(value, str) and value:
        source = value

    text = fields.get(opts.text_field, _MISSING)
    if isinstance(text, bytes):
      text = self.decode(text, problems, where)
    readable = True
    if text is _MISSING:
      self.problem(
        problems,
        MISSING_FIELD,
        where,
        f"no text field {opts.text_field!r} (fields: {names})",
        "Set text_field to the field that holds the text",
      )
      text, readable = "", False
    elif not isinstance(text, str):
      self.problem(
        problems,
        NOT_A_STRING,
        where,
        f"text field {opts.text_field!r} is {type_name(text)}, not a string",
        "Make the text a string",
      )
      text, readable = "", False
    return self.finish(
      record_id,
      text,
      source,
      problems,
      where,
      readable=readable,
      count=count,
      block=block,
    )

  def finish(
    self,
    record_id: str,
    text: str,
    source: str | None,
    problems: list[str],
    where: str,
    *,
    readable: bool = True,
    count: bool = True,
    block: Hashable | None = None,
  ) -> Record:
    """Applies the content checks and returns the record.

    Args:
      record_id: The record's id.
      text: Its decoded text.
      source: Its source.
      problems: Problems found while reading it (modified).
      where: Its location, for error messages.
      readable: False where the text could not be read at all (it is then ''
        but not marked 'empty').
      count: Whether to count it in the stats (False for records skipped by
        `start`, which are checked only to keep the duplicate set exact).
      block: Its block (see `Corpus.records`).

    Returns:
      The record, with `problem` set where any were found.

    Raises:
      InputError: under 'raise', for invalid text, NUL bytes or a duplicate id.
    """
    if _has_surrogates(record_id) or _has_surrogates(text):
      self.problem(
        problems,
        INVALID_UTF8,
        where,
        "lone UTF-16 surrogate escape (e.g. '\\ud800'), not valid UTF-8",
        "Fix the escape sequences",
      )
      record_id = _replace_surrogates(record_id)
      text = _replace_surrogates(text)
    if "\x00" in text:
      self.problem(
        problems,
        NUL_BYTES,
        where,
        f"NUL byte in the text at character {text.index(chr(0))}",
        "Remove NUL bytes from the input",
      )
    if self._ids is not None and self._ids.add(record_id):
      self.problem(
        problems,
        DUPLICATE_ID,
        where,
        f"id {record_id[:200]!r} was already seen in this process's share",
        "Make ids unique (or leave id_field unset to use path:line ids)",
      )
    if readable:
      if not text:
        problems.append(EMPTY)
      elif text.isspace():
        problems.append(WHITESPACE)
    max_chars = self.options.max_chars
    if max_chars is not None and len(text) > max_chars:
      text = text[:max_chars]
      problems.append(TOO_LONG)
    if count:
      self._stats["records"] += 1
      self._stats.update(problems)
    return Record(
      id=record_id,
      text=text,
      problem=",".join(problems) if problems else None,
      source=source,
      block=block,
    )
