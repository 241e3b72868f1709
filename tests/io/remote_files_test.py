"""Tests for reading URLs (the gs:// code path, `io.paths`), via file://."""

import gzip
import json

import pytest

from data_efficient.io.corpus import open_corpus


@pytest.fixture
def url(tmp_path):
  (tmp_path / "a.jsonl").write_text(
    json.dumps({"text": "x"}) + "\n" + json.dumps({"text": "y"}) + "\n"
  )
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.txt.gz").write_bytes(gzip.compress(b"l1\n\xff\n"))
  return f"file://{tmp_path}"


@pytest.mark.parametrize("suffix", ["", "/", "/*/*.gz"])
def test_gfile_paths_read_like_local_ones(url, suffix):
  spec = url + suffix
  corpus = open_corpus(spec, on_error="mark")
  records = list(corpus.records())
  local = open_corpus(spec.removeprefix("file://"), on_error="mark")
  assert records == list(local.records())
  assert records[-1].id == "sub/b.txt.gz:2"
  assert records[-1].problem == "invalid_utf8"
  description = corpus.describe()
  assert description["root"].startswith("file://")
  assert description["file_sizes"][-1] == len(gzip.compress(b"l1\n\xff\n"))


def test_gfile_parquet_reads_like_local(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  table = pa.table({"text": [f"t{i}" for i in range(7)]})
  pq.write_table(table, tmp_path / "a.parquet", row_group_size=3)
  corpus = open_corpus(f"file://{tmp_path}")
  assert list(corpus.records(block_size=2)) == list(
    open_corpus(str(tmp_path)).records(block_size=2)
  )
  # Blocks of 2, 1, 2, 1, 1 rows, dealt round-robin.
  assert [corpus.share_size(i, 2, 2) for i in range(2)] == [5, 2]
