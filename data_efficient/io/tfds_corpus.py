"""TFDS corpora such as 'tfds:c4/en:3.1.0', keyed by the `url` feature.

TensorFlow and TFDS are imported inside the methods that read: importing them
costs ~8 s, which stages that never read TFDS should not pay.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from data_efficient.io import records as records_lib
from data_efficient.io.records import InputError, Record

_DEFAULT_SPLIT = "train"
_BATCH = 256  # Examples per host transfer; bounds Python overhead per record.
_VERSION = re.compile(r"\d+\.\d+\.\d+")


def parse_tfds_spec(spec: str) -> tuple[str, str | None, str | None]:
  """Parses 'tfds:NAME[:VERSION][:SPLIT]' into (name, version, split).

  The split may itself hold ':' (e.g. 'train[:1000]'), so a version, when
  given, must look like 'X.Y.Z'.

  Args:
    spec: e.g. 'tfds:c4/en:3.1.0', 'tfds:c4/en:3.1.0:validation'.

  Raises:
    InputError: if there is no dataset name.
  """
  rest = spec.removeprefix("tfds:")
  name, _, rest = rest.partition(":")
  version = None
  if rest:
    head, _, tail = rest.partition(":")
    if _VERSION.fullmatch(head):
      version, rest = head, tail
  if not name:
    raise InputError(
      f"{spec!r}: no dataset name; write e.g. 'tfds:c4/en:3.1.0[:split]'."
    )
  return name, version, rest or None


def share_range(
  num_examples: int, process_index: int, process_count: int, block_size: int
) -> tuple[int, int]:
  """This process's contiguous run of whole blocks, as [first, end) indices.

  The `ceil(num_examples / block_size)` blocks are split into contiguous runs
  whose lengths differ by at most one block; a run may be empty.

  Args:
    num_examples: Examples in the split.
    process_index: This process, in `[0, process_count)`.
    process_count: Number of processes splitting the split.
    block_size: Examples per block (the last block may hold fewer).
  """
  num_blocks = -(-num_examples // block_size)
  first = process_index * num_blocks // process_count * block_size
  end = (process_index + 1) * num_blocks // process_count * block_size
  return min(first, num_examples), min(end, num_examples)


def _slice_split(
  parts: list[tuple[str, int, int]], first: int, end: int
) -> str:
  """The split spec selecting examples [first, end) of `parts` concatenated.

  Args:
    parts: (split name, from, to) absolute ranges, read in this order.
    first: First index wanted, in the concatenation.
    end: One past the last index wanted.
  """
  specs = []
  offset = 0
  for name, from_, to in parts:
    lo = max(first - offset, 0) + from_
    hi = min(end - offset, to - from_) + from_
    if lo < hi:
      specs.append(f"{name}[{lo}:{hi}]")
    offset += to - from_
  return "+".join(specs)


class TfdsCorpus(records_lib.Corpus):
  """A TFDS split read deterministically (see `open_corpus`).

  Blocks are `index in the split // block_size`. Each process reads one
  contiguous run of whole blocks of the split (see `share_range`), as an
  explicit absolute slice, so it reads only its own
  files. Files are read in order, one at a time (`interleave_cycle_length=1`),
  so the order does not depend on TFDS's default read settings.
  """

  def __init__(
    self,
    spec: str,
    options: records_lib.Options,
    *,
    split: str | None = None,
    data_dir: str | None = None,
  ):
    super().__init__(options)
    name, version, spec_split = parse_tfds_spec(spec)
    if split is not None and spec_split is not None and split != spec_split:
      raise InputError(
        f"{spec!r} names split {spec_split!r} but split={split!r} was also "
        "given; give the split once."
      )
    self._spec = spec
    self._name = name
    self._version = version
    self._split = split or spec_split or _DEFAULT_SPLIT
    self._data_dir = data_dir
    self._id_field = options.id_field or "url"
    self._builder_cache = None

  def _builder(self):
    if self._builder_cache is None:
      import tensorflow_datasets as tfds  # Lazy: see the module docstring.

      full = f"{self._name}:{self._version}" if self._version else self._name
      self._builder_cache = tfds.builder(full, data_dir=self._data_dir)
      features = self._builder_cache.info.features
      fields = (
        ("text", self._options.text_field),
        ("id", self._id_field),
      )
      for role, field in fields:
        if field not in features:
          raise InputError(
            f"tfds {full}: no {role} feature {field!r} (features: "
            f"{sorted(features)}); set {role}_field to one of them."
          )
    return self._builder_cache

  def describe(self) -> dict[str, Any]:
    """Provenance: TFDS name, resolved version, split and data_dir."""
    builder = self._builder()
    return {
      "kind": "tfds",
      "spec": self._spec,
      "name": self._name,
      "version": str(builder.info.version),
      "split": self._split,
      "data_dir": self._data_dir,
      "share": "contiguous blocks",
      **self._options.to_dict(),
      "id_field": self._id_field,
    }

  def share_size(
    self, process_index: int = 0, process_count: int = 1, block_size: int = 1
  ) -> int:
    """See `Corpus.share_size`: from the split's example counts."""
    _, first, end = self._share(process_index, process_count, block_size)
    return end - first

  def _share(
    self, process_index: int, process_count: int, block_size: int
  ) -> tuple[list[tuple[str, int, int]], int, int]:
    """(the split's absolute parts, first, end) of this process's share."""
    parts = self._absolute_parts()
    first, end = share_range(
      sum(to - from_ for _, from_, to in parts),
      process_index,
      process_count,
      block_size,
    )
    return parts, first, end

  def _absolute_parts(self) -> list[tuple[str, int, int]]:
    """The split as (split name, from, to) absolute ranges, in read order."""
    import tensorflow_datasets as tfds  # Lazy: see the module docstring.

    infos = self._builder().info.splits
    parts = []
    for part in tfds.core.ReadInstruction.from_spec(self._split).to_absolute(
      infos
    ):
      # TFDS writes None for a split's own start and end.
      to = infos[part.splitname].num_examples if part.to is None else part.to
      parts.append((part.splitname, part.from_ or 0, to))
    return parts

  def _records(
    self,
    checker: records_lib.RecordChecker,
    process_index: int,
    process_count: int,
    start: int,
    block_size: int,
  ) -> Iterator[Record]:
    import tensorflow as tf  # Lazy: see the module docstring.
    import tensorflow_datasets as tfds

    builder = self._builder()
    # `offset`: index of this share's first example in the split.
    parts, offset, end = self._share(process_index, process_count, block_size)
    if offset == end:
      return
    ds = builder.as_dataset(
      split=_slice_split(parts, offset, end),
      shuffle_files=False,
      read_config=tfds.ReadConfig(
        interleave_cycle_length=1, try_autocache=False
      ),
    )
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    id_field, text_field = self._id_field, self._options.text_field
    ds = ds.map(lambda ex: (ex[id_field], ex[text_field]))

    index = offset
    if start:
      if checker.needs_all_ids:
        # Keep the duplicate set exact: a resumed run marks what an
        # uninterrupted one would.
        for ids, texts in tfds.as_numpy(ds.take(start).batch(_BATCH)):
          for raw_id, raw_text in zip(ids, texts, strict=True):
            self._build(
              checker, raw_id, raw_text, index, block_size, count=False
            )
            index += 1
      else:
        index = min(offset + start, end)
      ds = ds.skip(start)
      self._stats["skipped"] += index - offset
    for ids, texts in tfds.as_numpy(ds.batch(_BATCH).prefetch(2)):
      for raw_id, raw_text in zip(ids, texts, strict=True):
        yield self._build(checker, raw_id, raw_text, index, block_size)
        index += 1

  def _build(
    self,
    checker: records_lib.RecordChecker,
    raw_id: Any,
    raw_text: Any,
    index: int,
    block_size: int,
    *,
    count: bool = True,
  ) -> Record:
    """Decodes and checks example `index` of the split."""
    problems: list[str] = []
    version = self._builder().info.version
    where = f"tfds {self._name}:{version} split {self._split!r} example {index}"
    if isinstance(raw_id, bytes):
      record_id = checker.decode(raw_id, problems, f"{where} (id)")
    else:
      record_id = str(raw_id)
    where = f"{where} ({self._id_field} {record_id[:200]!r})"
    if isinstance(raw_text, bytes):
      text = checker.decode(raw_text, problems, where)
    else:
      text = str(raw_text)
    return checker.finish(
      record_id,
      text,
      self._split,
      problems,
      where,
      count=count,
      block=index // block_size,
    )
