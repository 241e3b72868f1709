"""Opening a corpus (JSON Lines, text, Parquet, Arrow, TFDS) with stable ids.

Usage:

  corpus = open_corpus("data/*.jsonl.gz", id_field="url", on_error="mark")
  records = corpus.records(
    process_index, process_count, start=resume, block_size=chunk_size
  )
  for _, block in itertools.groupby(records, key=lambda r: r.block):
    ...  # One whole block, the same whatever the process count.
  print(corpus.stats)  # Counter({'records': ..., 'empty': ..., ...})

Every record is yielded, problems included (see `records.py` for the
`on_error` policies): nothing is dropped silently, and `Corpus.stats` counts
every record and every problem category.
"""

from __future__ import annotations

from data_efficient.io import file_corpus, table_corpus, tfds_corpus
from data_efficient.io.records import (
  NEVER_RAISED,
  Corpus,
  InputError,
  Options,
  Record,
)

__all__ = [
  "NEVER_RAISED",
  "Corpus",
  "InputError",
  "Record",
  "open_corpus",
]


def open_corpus(
  spec: str,
  *,
  text_field: str = "text",
  id_field: str | None = None,
  source_field: str | None = None,
  on_error: str = "raise",
  max_chars: int | None = None,
  check_duplicates: bool = True,
  one_doc_per_file: bool = False,
  share: str = "auto",
  split: str | None = None,
  data_dir: str | None = None,
) -> Corpus:
  """Opens a corpus for reading; validates the spec (files are found now).

  Args:
    spec: A file, a directory (searched recursively) or a glob of files of
      one kind, local or gs://: JSON Lines (.jsonl, .json, each also .gz or
      .zst), plain text (.txt, .txt.gz, .txt.zst), Parquet (.parquet) or
      Arrow IPC streams (.arrow); a directory written by Hugging Face
      `datasets`' `save_to_disk` (one split); or
      'tfds:NAME[:VERSION][:SPLIT]', e.g. 'tfds:c4/en:3.1.0' (split 'train'
      unless given).
    text_field: JSON field (Parquet or Arrow column, TFDS feature) holding
      the text.
    id_field: JSON field (column, TFDS feature) holding a unique id.
      Default: '<relative path>:<line>' (1-based) for JSON Lines and text,
      '<relative path>:<row>' (0-based) for Parquet and Arrow; 'url' for
      TFDS.
    source_field: JSON field (column) naming each record's source (e.g. the
      subset of a mixture); default: the file's relative path (the split for
      TFDS).
    on_error: 'raise' (InputError naming file and line, and how to fix) or
      'mark' (yield the record with `problem` set, text '' if unreadable).
    max_chars: Truncate longer texts to this many characters and mark them
      'too_long' (under either policy).
    check_duplicates: Check that ids are unique within each process's share
      (64-bit hashes, ~8 bytes per id). Positional ids are unique by
      construction and never checked. Duplicates across processes are found
      when the shards are merged. False makes `start` skipping cheaper
      (skipped records are then not parsed at all).
    one_doc_per_file: Plain-text files hold one document each (id: the
      relative path) instead of one per line.
    share: How files are split among processes: 'files' (round-robin over
      the sorted files), 'records' (round-robin over the blocks of
      `records(block_size=...)`, single records by default; every process
      reads every file), or 'auto' ('files' when there are at least as many
      files as processes). A TFDS split is always cut into contiguous runs
      of whole blocks, one per process.
    split: TFDS split (or sub-split, e.g. 'train[:1%]'), instead of in `spec`.
    data_dir: TFDS data directory.

  Returns:
    The corpus; call `records()` to read this process's share.

  Raises:
    InputError: if no input matches `spec`.
    ValueError: for invalid settings.
  """
  options = Options(
    text_field=text_field,
    id_field=id_field,
    source_field=source_field,
    on_error=on_error,
    max_chars=max_chars,
    check_duplicates=check_duplicates,
  )
  if spec.startswith("tfds:"):
    if one_doc_per_file:
      raise ValueError("one_doc_per_file applies to text files, not TFDS.")
    return tfds_corpus.TfdsCorpus(spec, options, split=split, data_dir=data_dir)
  if split is not None or data_dir is not None:
    raise ValueError(
      f"split/data_dir apply to 'tfds:' specs only, not to {spec!r}."
    )
  saved = table_corpus.saved_dataset_files(spec)
  if saved is not None:
    corpus_class = table_corpus.SavedDatasetCorpus
    root, files = saved
  else:
    root, files = file_corpus.resolve_files(spec)
    corpus_class = _file_corpus_class(spec, files)
  if corpus_class is file_corpus.LinesCorpus:
    return corpus_class(
      spec, root, files, options, one_doc_per_file=one_doc_per_file, share=share
    )
  if one_doc_per_file:
    raise ValueError(f"one_doc_per_file applies to text files, not {spec!r}.")
  return corpus_class(spec, root, files, options, share=share)


def _file_corpus_class(spec: str, files: list[str]) -> type:
  """The reader of `files`; they must be of one kind."""
  kinds = {
    "Parquet": file_corpus.PARQUET_SUFFIXES,
    "Arrow": file_corpus.ARROW_SUFFIXES,
    "JSON Lines or text": file_corpus.JSONL_SUFFIXES
    + file_corpus.TEXT_SUFFIXES,
  }
  found = {
    k for f in files for k, suffixes in kinds.items() if f.endswith(suffixes)
  }
  if len(found) > 1:
    raise InputError(
      f"{spec}: holds {' and '.join(sorted(found))} files; read one kind at "
      "a time (e.g. a glob such as 'DIR/**/*.parquet')."
    )
  if found == {"JSON Lines or text"}:
    return file_corpus.LinesCorpus
  return table_corpus.TableCorpus
