"""Corpus readers with stable ids; sharded, resumable result output.

Reading: `open_corpus(spec)` gives a `Corpus` whose `records()` yields each
process's disjoint share of `Record(id, text, problem, source, block)`, in
whole blocks that do not depend on the process count.
Writing: one `ResultWriter` per process writes Parquet shards; one process
then calls `write_manifest`; `read_results` / `iter_results` read them back.
"""

from data_efficient.io.corpus import (
  Corpus,
  InputError,
  Record,
  open_corpus,
)
from data_efficient.io.results import (
  OutputError,
  ResultWriter,
  iter_results,
  read_json,
  read_manifest,
  read_results,
  write_json,
  write_manifest,
)

__all__ = [
  "Corpus",
  "InputError",
  "OutputError",
  "Record",
  "ResultWriter",
  "iter_results",
  "open_corpus",
  "read_json",
  "read_manifest",
  "read_results",
  "write_json",
  "write_manifest",
]
