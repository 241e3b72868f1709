"""Tests for the Parquet corpus reader, on files written by pyarrow."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_efficient.io import table_corpus
from data_efficient.io.corpus import InputError, Record, open_corpus

# (file, rows, row group size): groups of 3, 3, 1; of 10; of 2, 2, 1.
_FILES = (("a.parquet", 7, 3), ("b.parquet", 10, 10), ("sub/c.parquet", 5, 2))


def _write(path, table, row_group_size=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(table, path, row_group_size=row_group_size)
  return str(path)


@pytest.fixture
def tree(tmp_path):
  """Parquet files with several row groups; returns (root, (id, text)s)."""
  expected = []
  for name, rows, group in _FILES:
    texts = [f"{name} {i}" for i in range(rows)]
    table = pa.table(
      {
        "text": texts,
        "url": [f"http://{name}/{i}" for i in range(rows)],
        "subset": ["web" if i % 2 else "" for i in range(rows)],
        "n": list(range(rows)),
      }
    )
    _write(tmp_path / name, table, group)
    expected += [(f"{name}:{i}", t) for i, t in enumerate(texts)]
  return str(tmp_path), expected


def test_ids_are_relative_paths_and_rows(tree):
  root, expected = tree
  corpus = open_corpus(root)
  records = list(corpus.records())
  assert [(r.id, r.text) for r in records] == expected
  assert all(r.problem is None for r in records)
  assert [r.source for r in records[:2]] == ["a.parquet"] * 2
  assert corpus.stats["records"] == len(expected)
  assert [(r.id, r.text) for r in open_corpus(root).records()] == expected
  single = open_corpus(os.path.join(root, "sub", "c.parquet"))
  assert [r.id for r in single.records()][:2] == ["c.parquet:0", "c.parquet:1"]


def test_columns_give_id_text_and_source(tree):
  root, _ = tree
  corpus = open_corpus(root, id_field="url", source_field="subset")
  records = list(corpus.records())
  assert records[:2] == [
    Record("http://a.parquet/0", "a.parquet 0", None, "a.parquet", (0, 0)),
    Record("http://a.parquet/1", "a.parquet 1", None, "web", (0, 1)),
  ]
  numbered = list(
    open_corpus(root, id_field="n", check_duplicates=False).records()
  )
  assert [r.id for r in numbered[:3]] == ["0", "1", "2"]


@pytest.mark.parametrize(
  "groups, block_size, blocks",
  [
    ([3, 3, 1], 4, [(0, 3), (3, 7)]),  # Small groups merge while they fit.
    ([10], 4, [(0, 4), (4, 8), (8, 10)]),  # A large group is cut.
    ([1, 10, 1, 1], 4, [(0, 1), (1, 5), (5, 9), (9, 11), (11, 13)]),
    ([2, 0, 2, 2], 4, [(0, 4), (4, 6)]),
    ([], 4, []),
  ],
)
def test_block_ranges_follow_row_groups(groups, block_size, blocks):
  ranges = table_corpus.block_ranges(groups, block_size)
  assert [(r.start, r.stop) for r in ranges] == blocks


@pytest.mark.parametrize("id_field", [None, "url"])
@pytest.mark.parametrize("share", ["files", "records"])
@pytest.mark.parametrize("block_size", [1, 4])
def test_shares_are_whole_blocks_and_sized(
  tree, check_block_shares, share, id_field, block_size
):
  root, expected = tree
  corpus = open_corpus(root, share=share, id_field=id_field)
  whole = check_block_shares(
    lambda i, n, start: list(corpus.records(i, n, start, block_size)),
    block_size=block_size,
  )
  assert len(whole) == len(expected)
  for count in (1, 2, 3):
    for index in range(count):
      share_records = list(corpus.records(index, count, block_size=block_size))
      assert corpus.share_size(index, count, block_size) == len(share_records)


def test_blocks_are_row_groups_merged_or_cut(tree):
  root, _ = tree
  records = list(open_corpus(root).records(block_size=4))
  sizes = {}
  for r in records:
    sizes[r.block] = sizes.get(r.block, 0) + 1
  # a: groups 3+3+1 -> 3, 4; b: 10 -> 4, 4, 2; c: 2+2+1 -> 4, 1.
  assert list(sizes.values()) == [3, 4, 4, 4, 2, 4, 1]


def test_resume_from_start_equals_slicing(tree):
  root, _ = tree
  corpus = open_corpus(root, share="records")
  full = list(corpus.records(1, 2, block_size=4))
  for start in range(len(full) + 2):
    assert list(corpus.records(1, 2, start, block_size=4)) == full[start:]
    assert corpus.stats["skipped"] == min(start, len(full))
    assert corpus.stats["records"] == len(full[start:])


def _corrupt_row_group(path, group):
  """Overwrites the first data page header of row group `group`."""
  column = pq.ParquetFile(path).metadata.row_group(group).column(0)
  data = bytearray(open(path, "rb").read())
  offset = column.data_page_offset
  data[offset : offset + 16] = b"\xff" * 16
  with open(path, "wb") as f:
    f.write(bytes(data))


def test_corrupt_row_group_raises_or_marks_its_rows(tree):
  root, expected = tree
  path = os.path.join(root, "a.parquet")
  _corrupt_row_group(path, 1)  # Rows 3-5.
  with pytest.raises(InputError) as error:
    list(open_corpus(root).records(block_size=3))
  message = str(error.value)
  assert message.startswith(f"{path} rows 3-5: cannot read these rows: ")
  assert "(read_error)" in message and "on_error='mark'" in message
  corpus = open_corpus(root, on_error="mark")
  records = list(corpus.records(block_size=3))
  assert [r.id for r in records] == [i for i, _ in expected]
  marked = [r for r in records if r.problem]
  assert [(r.id, r.problem, r.text) for r in marked] == [
    (f"a.parquet:{i}", "read_error", "") for i in (3, 4, 5)
  ]
  assert corpus.stats["read_error"] == 3


def test_truncated_file_raises_or_is_one_marked_record(tree):
  root, expected = tree
  path = os.path.join(root, "b.parquet")
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(InputError) as error:
    list(open_corpus(root).records())
  message = str(error.value)
  assert message.startswith(f"{path} row 0: cannot read the file from this row")
  assert "Parquet magic bytes not found in footer" in message
  corpus = open_corpus(root, on_error="mark")
  records = list(corpus.records())
  ids = [i for i, _ in expected if not i.startswith("b.")]
  assert [r.id for r in records] == ids[:7] + ["b.parquet:0"] + ids[7:]
  assert records[7].problem == "read_error"
  assert corpus.share_size() == len(records)


def test_column_problems_are_marked_per_row(tmp_path):
  table = pa.table(
    {
      "text": pa.array([b"ok", b"caf\xe9", None], pa.binary()),
      "id": ["x", "y", "x"],
    }
  )
  path = _write(tmp_path / "d.parquet", table)
  with pytest.raises(InputError, match=r"d\.parquet row 1: invalid UTF-8"):
    list(open_corpus(path).records())
  corpus = open_corpus(path, id_field="id", on_error="mark")
  assert [(r.text, r.problem) for r in corpus.records()] == [
    ("ok", None),
    ("caf\ufffd", "invalid_utf8"),
    ("", "not_a_string,duplicate_id"),
  ]
  with pytest.raises(
    InputError,
    match=r"row 0: no text field 'body' \(fields: \['id', 'text'\]\)",
  ):
    list(open_corpus(path, text_field="body").records())


def test_describe_mixed_kinds_and_options(tree):
  root, _ = tree
  description = open_corpus(root).describe()
  assert json.loads(json.dumps(description)) == description
  assert description["kind"] == "parquet"
  assert description["files"] == [name for name, _, _ in _FILES]
  with open(os.path.join(root, "notes.jsonl"), "w") as f:
    f.write('{"text": "x"}\n')
  with pytest.raises(InputError, match="holds JSON Lines or text and Parquet"):
    open_corpus(root)
  with pytest.raises(ValueError, match="one_doc_per_file applies to text"):
    open_corpus(os.path.join(root, "*.parquet"), one_doc_per_file=True)
