"""TFDS corpora such as 'tfds:c4/en:3.1.0', keyed by the `url` feature.

TensorFlow and TFDS are imported inside the methods that read: importing them
costs ~8 s, which stages that never read TFDS should not pay.
"""

from __future__ import annotations

import collections
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


class TfdsCorpus(records_lib.Corpus):
  """A TFDS split read deterministically (see `open_corpus`).

  Each process reads one contiguous slice of the split from
  `tfds.even_splits(split, process_count)` (sizes differ by at most one), so
  it reads only its own files. Files are read in order, one at a time
  (`interleave_cycle_length=1`), so the order does not depend on TFDS's
  default read settings.
  """

  def __init__(
    self,
    spec: str,
    options: records_lib.Options,
    *,
    split: str | None = None,
    data_dir: str | None = None,
  ):
    super().__init__()
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
    self._options = options
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
      "share": "tfds.even_splits",
      **self._options.to_dict(),
      "id_field": self._id_field,
    }

  def records(
    self, process_index: int = 0, process_count: int = 1, start: int = 0
  ) -> Iterator[Record]:
    """See `Corpus.records`."""
    records_lib.check_share(process_index, process_count, start)
    self._stats = collections.Counter()
    checker = records_lib.RecordChecker(
      self._options, self._stats, ids_are_unique=False
    )
    return self._records(checker, process_index, process_count, start)

  def _records(
    self,
    checker: records_lib.RecordChecker,
    process_index: int,
    process_count: int,
    start: int,
  ) -> Iterator[Record]:
    import tensorflow as tf  # Lazy: see the module docstring.
    import tensorflow_datasets as tfds

    builder = self._builder()
    subsplits = tfds.even_splits(self._split, process_count)
    share = subsplits[process_index]
    # Index of this share's first example in the split, for error messages.
    offset = sum(
      builder.info.splits[s].num_examples for s in subsplits[:process_index]
    )
    ds = builder.as_dataset(
      split=share,
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

    index = 0
    if start:
      if checker.needs_all_ids:
        # Keep the duplicate set exact: a resumed run marks what an
        # uninterrupted one would.
        for ids, texts in tfds.as_numpy(ds.take(start).batch(_BATCH)):
          for raw_id, raw_text in zip(ids, texts, strict=True):
            self._build(
              checker,
              raw_id,
              raw_text,
              offset + index,
              count=False,
            )
            index += 1
      else:
        index = min(start, builder.info.splits[share].num_examples)
      ds = ds.skip(start)
      self._stats["skipped"] += index
    for ids, texts in tfds.as_numpy(ds.batch(_BATCH).prefetch(2)):
      for raw_id, raw_text in zip(ids, texts, strict=True):
        yield self._build(checker, raw_id, raw_text, offset + index)
        index += 1

  def _build(
    self,
    checker: records_lib.RecordChecker,
    raw_id: Any,
    raw_text: Any,
    index: int,
    *,
    count: bool = True,
  ) -> Record:
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
      record_id, text, self._split, problems, where, count=count
    )
