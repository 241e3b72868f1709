"""Tests for the JSON Lines and plain-text corpus readers."""

import collections
import dataclasses
import gzip
import json
import os
import random

import pytest
import zstandard

from data_efficient.io import corpus as corpus_lib
from data_efficient.io.corpus import InputError, Record, open_corpus


def _write(path, data: bytes) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if str(path).endswith(".zst"):
    data = zstandard.ZstdCompressor().compress(data)
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(data)
  return str(path)


def _jsonl(*docs) -> bytes:
  return b"".join(json.dumps(d).encode() + b"\n" for d in docs)


@pytest.fixture
def tree(tmp_path):
  """A directory of mixed files; returns (root, expected (id, text) pairs)."""
  _write(tmp_path / "b.jsonl", _jsonl({"text": "b1"}, {"text": "b2"}))
  _write(tmp_path / "a.txt", b"a1\r\na2\na3")  # CRLF, no final newline.
  _write(
    tmp_path / "sub" / "c.jsonl.gz",
    _jsonl(*({"text": f"c{i}"} for i in range(1, 6))),
  )
  _write(tmp_path / "sub" / "d.jsonl.zst", _jsonl({"text": "d1"}))
  _write(tmp_path / "notes.csv", b"ignored,not,a,corpus,file\n")
  expected = (
    [("a.txt:1", "a1"), ("a.txt:2", "a2"), ("a.txt:3", "a3")]
    + [("b.jsonl:1", "b1"), ("b.jsonl:2", "b2")]
    + [(f"sub/c.jsonl.gz:{i}", f"c{i}") for i in range(1, 6)]
    + [("sub/d.jsonl.zst:1", "d1")]
  )
  return str(tmp_path), expected


def test_directory_ids_are_relative_paths_and_lines(tree):
  root, expected = tree
  corpus = open_corpus(root)
  records = list(corpus.records())
  assert [(r.id, r.text) for r in records] == expected
  assert all(r.problem is None for r in records)
  assert records[0].source == "a.txt"
  assert records[-1].source == "sub/d.jsonl.zst"
  assert corpus.stats == collections.Counter(records=11)


def test_describe_is_json_and_lists_sorted_files(tree):
  root, _ = tree
  description = open_corpus(root, on_error="mark").describe()
  assert json.loads(json.dumps(description)) == description
  assert description["kind"] == "files"
  assert description["files"] == [
    "a.txt",
    "b.jsonl",
    "sub/c.jsonl.gz",
    "sub/d.jsonl.zst",
  ]
  assert description["file_sizes"][0] == 9  # b"a1\r\na2\na3"
  assert description["on_error"] == "mark"
  assert description["text_field"] == "text"


def test_glob_ids_are_relative_to_the_glob_directory(tree):
  root, expected = tree
  records = list(open_corpus(os.path.join(root, "*.jsonl")).records())
  assert [r.id for r in records] == ["b.jsonl:1", "b.jsonl:2"]
  records = list(open_corpus(os.path.join(root, "**", "*.gz")).records())
  assert [(r.id, r.text) for r in records] == expected[5:10]


def test_single_file_ids_use_its_basename(tree):
  root, _ = tree
  records = list(open_corpus(os.path.join(root, "b.jsonl")).records())
  assert [r.id for r in records] == ["b.jsonl:1", "b.jsonl:2"]


def test_id_field_text_field_and_source_field(tmp_path):
  path = _write(
    tmp_path / "d.jsonl",
    _jsonl(
      {"url": "http://x/1", "body": "one", "subset": "web"},
      {"url": 7, "body": "two"},
    ),
  )
  corpus = open_corpus(
    path, id_field="url", text_field="body", source_field="subset"
  )
  assert list(corpus.records()) == [
    Record("http://x/1", "one", None, "web", (0, 0)),
    Record("7", "two", None, "d.jsonl", (0, 1)),
  ]


def test_one_document_per_file(tmp_path):
  _write(tmp_path / "x" / "1.txt", b"first\ndoc\n")
  _write(tmp_path / "x" / "2.txt.gz", b"second")
  _write(tmp_path / "x" / "3.txt.zst", b"third\n")
  corpus = open_corpus(str(tmp_path), one_doc_per_file=True)
  assert [(r.id, r.text) for r in corpus.records()] == [
    ("x/1.txt", "first\ndoc\n"),
    ("x/2.txt.gz", "second"),
    ("x/3.txt.zst", "third\n"),
  ]


def test_byte_order_mark_is_not_text(tmp_path):
  path = _write(tmp_path / "d.jsonl", b'\xef\xbb\xbf{"text": "x"}\n')
  assert [r.text for r in open_corpus(path).records()] == ["x"]


def _shares(corpus, count, start=0):
  return [list(corpus.records(i, count, start)) for i in range(count)]


@pytest.mark.parametrize("share", ["auto", "files", "records"])
@pytest.mark.parametrize("process_count", [1, 2, 3, 4])
def test_shares_are_disjoint_and_cover_the_corpus(tree, share, process_count):
  root, expected = tree
  corpus = open_corpus(root, share=share)
  shares = _shares(corpus, process_count)
  ids = [r.id for share_records in shares for r in share_records]
  assert sorted(ids) == sorted(i for i, _ in expected)
  assert len(ids) == len(set(ids))
  assert shares == _shares(corpus, process_count)  # Deterministic.


def test_auto_share_splits_by_records_when_files_are_few(tmp_path):
  path = _write(tmp_path / "one.txt", b"".join(b"%d\n" % i for i in range(7)))
  corpus = open_corpus(path)
  assert corpus.share_mode(2) == "records"
  shares = _shares(corpus, 2)
  assert [r.text for r in shares[0]] == ["0", "2", "4", "6"]
  assert [r.text for r in shares[1]] == ["1", "3", "5"]


@pytest.mark.parametrize("share", ["files", "records"])
@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_start_equals_slicing(tree, share, process_count):
  root, _ = tree
  corpus = open_corpus(root, share=share)
  for index, full in enumerate(_shares(corpus, process_count)):
    for start in (0, 1, 2, len(full) - 1, len(full), len(full) + 5):
      start = max(start, 0)
      resumed = list(corpus.records(index, process_count, start))
      assert resumed == full[start:]
      assert corpus.stats["records"] == len(full[start:])
      assert corpus.stats["skipped"] == min(start, len(full))


_BLOCK_FILE_LENGTHS = (7, 3, 5, 1, 8)


@pytest.mark.parametrize("share", ["files", "records"])
@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_shares_are_whole_blocks(tmp_path, check_block_shares, suffix, share):
  for index, length in enumerate(_BLOCK_FILE_LENGTHS):
    name = f"f{index}{suffix}" + {2: ".gz", 4: ".zst"}.get(index, "")
    texts = [f"{index}-{line}" for line in range(length)]
    if suffix == ".jsonl":  # Ids from a field: skipping still checks them.
      data = _jsonl(*({"id": t, "text": t} for t in texts))
    else:
      data = "".join(t + "\n" for t in texts).encode()
    _write(tmp_path / name, data)
  id_field = "id" if suffix == ".jsonl" else None
  corpus = open_corpus(str(tmp_path), share=share, id_field=id_field)
  whole = check_block_shares(
    lambda i, n, start: list(corpus.records(i, n, start, block_size=3)),
    block_size=3,
  )
  assert [r.block for r in whole] == [
    (index, line // 3)
    for index, length in enumerate(_BLOCK_FILE_LENGTHS)
    for line in range(length)
  ]
  unblocked = [dataclasses.replace(r, block=None) for r in whole]
  assert unblocked == [
    dataclasses.replace(r, block=None) for r in corpus.records()
  ]


def test_records_share_deals_out_blocks(tmp_path):
  path = _write(tmp_path / "one.txt", b"".join(b"%d\n" % i for i in range(7)))
  corpus = open_corpus(path, share="records")
  texts = [
    [r.text for r in corpus.records(i, 3, block_size=3)] for i in range(3)
  ]
  assert texts == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
  texts = [
    [r.text for r in corpus.records(i, 4, block_size=3)] for i in range(4)
  ]
  assert texts == [["0", "1", "2"], ["3", "4", "5"], ["6"], []]


def test_start_keeps_duplicate_marks_of_skipped_ids(tmp_path):
  ids = ["a", "b", "a", "c", "b"]
  path = _write(
    tmp_path / "d.jsonl", _jsonl(*({"id": i, "text": i} for i in ids))
  )
  corpus = open_corpus(path, id_field="id", on_error="mark")
  full = list(corpus.records())
  assert [r.problem for r in full] == [
    None,
    None,
    "duplicate_id",
    None,
    "duplicate_id",
  ]
  for start in range(len(ids) + 1):
    assert list(corpus.records(start=start)) == full[start:]


# Hostile inputs: (file name, file bytes, line, problem, expected marked text).
_HOSTILE = {
  "invalid_utf8_json": (
    "d.jsonl",
    b'{"text": "ok"}\n{"text": "caf\xe9 \xff"}\n',
    2,
    "invalid_utf8",
    "caf\ufffd \ufffd",
  ),
  "invalid_utf8_text": (
    "d.txt",
    b"fine\nbad \xc3\x28 byte\n",
    2,
    "invalid_utf8",
    "bad \ufffd( byte",
  ),
  "lone_surrogate_escape": (
    "d.jsonl",
    b'{"text": "x \\ud800 y"}\n',
    1,
    "invalid_utf8",
    "x \ufffd y",
  ),
  "nul_escape_json": (
    "d.jsonl",
    b'{"text": "a"}\n{"text": "a\\u0000b"}\n',
    2,
    "nul_bytes",
    "a\x00b",
  ),
  "nul_byte_text": ("d.txt", b"a\x00b\n", 1, "nul_bytes", "a\x00b"),
  "malformed_json": (
    "d.jsonl",
    b'{"text": "a"}\n{"text": "unterminated\n{"text": "c"}\n',
    2,
    "malformed_json",
    "",
  ),
  "json_array_line": ("d.jsonl", b"[1, 2]\n", 1, "malformed_json", ""),
  "deeply_nested_json": (
    "d.jsonl",
    b"[" * 200_000 + b"\n",
    1,
    "malformed_json",
    "",
  ),
  "missing_text_field": (
    "d.jsonl",
    b'{"body": "x"}\n',
    1,
    "missing_field",
    "",
  ),
  "non_string_text": (
    "d.jsonl",
    b'{"text": {"nested": 1}}\n',
    1,
    "not_a_string",
    "",
  ),
  # Compressed files damaged after their first lines (built in the test).
  "truncated_gzip": ("d.jsonl.gz", None, None, "read_error", ""),
  "truncated_zstd": ("d.jsonl.zst", None, None, "read_error", ""),
  "corrupt_zstd": ("d.json.zst", None, None, "read_error", ""),
}


def _damaged(filename) -> bytes:
  """40 compressed lines, cut (or overwritten, for .json.zst) halfway."""
  data = _jsonl(*({"text": f"{i} {os.urandom(2000).hex()}"} for i in range(40)))
  if filename.endswith(".gz"):
    full = gzip.compress(data)
    half = len(full) // 2
  else:  # Several frames, as streaming writers make: one per 2 lines.
    compressor = zstandard.ZstdCompressor()
    lines = data.splitlines(keepends=True)
    frames = [
      compressor.compress(b"".join(lines[i : i + 2]))
      for i in range(0, len(lines), 2)
    ]
    full = b"".join(frames)
    half = sum(map(len, frames[:10]))
    if filename.endswith(".json.zst"):
      # Over the 11th frame's header: these frames have no checksum, so
      # damage inside their data would go unseen.
      return full[:half] + b"\xff" * 64 + full[half + 64 :]
    # Inside the 11th frame: a cut between two frames leaves a valid,
    # shorter file.
    half += len(frames[10]) // 2
  return full[:half]


def _hostile_file(tmp_path, name):
  filename, data, line, problem, text = _HOSTILE[name]
  if data is None:
    path = str(tmp_path / filename)
    (tmp_path / filename).write_bytes(_damaged(filename))
  else:
    path = _write(tmp_path / filename, data)
  return path, line, problem, text


@pytest.mark.parametrize("name", sorted(_HOSTILE))
def test_hostile_input_raises_naming_file_and_line(tmp_path, name):
  path, line, problem, _ = _hostile_file(tmp_path, name)
  if problem == "read_error":
    # Lines before the damage come out; the error names the next line.
    line = len(list(open_corpus(path, on_error="mark").records()))
    with pytest.raises(InputError) as error:
      list(open_corpus(path).records())
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: cannot read the file")
    assert "(read_error)" in message
    return
  with pytest.raises(InputError, match="on_error='mark'") as error:
    list(open_corpus(path).records())
  assert str(error.value).startswith(f"{path}:{line}: ")
  assert f"({problem})" in str(error.value)


@pytest.mark.parametrize("name", sorted(_HOSTILE))
def test_hostile_input_is_marked_and_counted(tmp_path, name):
  path, line, problem, text = _hostile_file(tmp_path, name)
  corpus = open_corpus(path, on_error="mark")
  records = list(corpus.records())
  if problem == "read_error":
    # The lines before the damage, then one record for the rest.
    marked = records[-1]
    assert marked.problem == "read_error" and marked.text == ""
    assert marked.id == f"{os.path.basename(path)}:{len(records)}"
    assert 2 <= len(records) < 40
    assert all(r.problem is None for r in records[:-1])
  else:
    marked = records[line - 1]
    assert marked.id == f"{os.path.basename(path)}:{line}"
    assert marked.problem == problem
    assert marked.text == text
    assert sum(r.problem is not None for r in records) == 1
  assert corpus.stats[problem] == 1
  assert corpus.stats["records"] == len(records)


def test_duplicate_id_raises_or_is_marked(tmp_path):
  path = _write(
    tmp_path / "d.jsonl",
    _jsonl(
      {"id": "x", "text": "1"},
      {"id": "y", "text": "2"},
      {"id": "x", "text": "3"},
    ),
  )
  with pytest.raises(InputError, match=r"d\.jsonl:3: id 'x' was already seen"):
    list(open_corpus(path, id_field="id").records())
  corpus = open_corpus(path, id_field="id", on_error="mark")
  assert [r.problem for r in corpus.records()] == [None, None, "duplicate_id"]
  assert corpus.stats["duplicate_id"] == 1
  unchecked = open_corpus(path, id_field="id", check_duplicates=False)
  assert len(list(unchecked.records())) == 3


def test_missing_id_field_falls_back_to_position(tmp_path):
  path = _write(tmp_path / "d.jsonl", _jsonl({"text": "t"}))
  with pytest.raises(InputError, match=r"d\.jsonl:1: no id field 'url'"):
    list(open_corpus(path, id_field="url").records())
  corpus = open_corpus(path, id_field="url", on_error="mark")
  assert list(corpus.records()) == [
    Record("d.jsonl:1", "t", "missing_field", "d.jsonl", (0, 0))
  ]


@pytest.mark.parametrize("on_error", ["raise", "mark"])
def test_empty_and_whitespace_are_marked_never_raised(tmp_path, on_error):
  path = _write(
    tmp_path / "d.jsonl",
    _jsonl({"text": ""}, {"text": " \t\n\u3000"})
    + b"\n"
    + _jsonl({"text": "x"}),
  )
  corpus = open_corpus(path, on_error=on_error)
  records = list(corpus.records())
  assert [r.problem for r in records] == [
    "empty",
    "whitespace",
    "empty",
    None,
  ]
  assert [r.id for r in records] == [f"d.jsonl:{i}" for i in range(1, 5)]
  assert corpus.stats == collections.Counter(records=4, empty=2, whitespace=1)
  text = _write(tmp_path / "t.txt", b"\n  \nx\n")
  assert [
    r.problem for r in open_corpus(text, on_error=on_error).records()
  ] == [
    "empty",
    "whitespace",
    None,
  ]


def test_five_megabyte_line_and_max_chars(tmp_path):
  big = "word " * 1_000_000  # 5 MB.
  path = _write(tmp_path / "d.jsonl", _jsonl({"text": big}, {"text": "short"}))
  records = list(open_corpus(path).records())
  assert records[0].text == big and records[0].problem is None
  corpus = open_corpus(path, max_chars=1000)  # Under 'raise': marked only.
  records = list(corpus.records())
  assert records[0].text == big[:1000] and records[0].problem == "too_long"
  assert records[1] == Record("d.jsonl:2", "short", None, "d.jsonl", (0, 1))
  assert corpus.stats["too_long"] == 1
  text_path = _write(tmp_path / "t.txt", big.encode() + b"\n")
  assert [r.text for r in open_corpus(text_path).records()] == [big]


def test_several_problems_are_all_marked_and_counted(tmp_path):
  path = _write(tmp_path / "d.txt", b"\xff" * 20 + b"\n")
  corpus = open_corpus(path, on_error="mark", max_chars=5)
  (record,) = corpus.records()
  assert record.problem == "invalid_utf8,too_long"
  assert record.problems == ("invalid_utf8", "too_long")
  assert record.text == "\ufffd" * 5
  assert corpus.stats == collections.Counter(
    records=1, invalid_utf8=1, too_long=1
  )


@pytest.mark.parametrize(
  "text",
  [
    "Emoji 👍🏽 and flags 🇯🇵, CJK 漢字かなカナ, Arabic العربية, Hindi हिन्दी",
    "<html><script>alert('x')</script><p onclick=\"x()\">&amp;</p></html>",
    "zero\u200bwidth, RTL \u202eoverride, combining e\u0301",
    '\\n is not a newline; " quotes " and tabs\t.',
  ],
)
@pytest.mark.parametrize("filename", ["d.jsonl", "d.txt"])
def test_unusual_but_valid_text_is_kept_exactly(tmp_path, text, filename):
  data = (
    _jsonl({"text": text})
    if filename.endswith(".jsonl")
    else (text.encode() + b"\n")
  )
  path = _write(tmp_path / filename, data)
  assert list(open_corpus(path).records()) == [
    Record(f"{filename}:1", text, None, filename, (0, 0))
  ]


def test_stats_count_every_record_of_a_mixed_file(tmp_path):
  lines = [
    b'{"text": "good"}',
    b'{"text": ""}',
    b"not json",
    b'{"text": "also good"}',
    b'{"other": 1}',
    b'{"text": "\xff"}',
  ]
  path = _write(tmp_path / "d.jsonl", b"\n".join(lines) + b"\n")
  corpus = open_corpus(path, on_error="mark")
  records = list(corpus.records())
  assert len(records) == len(lines)
  assert corpus.stats == collections.Counter(
    records=6, empty=1, malformed_json=1, missing_field=1, invalid_utf8=1
  )


def test_bad_specs_are_clear_errors(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(InputError, match=f"{missing}: no such file or directory"):
    open_corpus(missing)
  with pytest.raises(InputError, match="no .* files found"):
    open_corpus(str(tmp_path))  # An empty directory.
  with pytest.raises(InputError, match="no .* files found"):
    open_corpus(str(tmp_path / "*.jsonl"))
  csv = _write(tmp_path / "x.csv", b"a,b\n")
  with pytest.raises(InputError, match="unsupported file type"):
    open_corpus(csv)
  with pytest.raises(ValueError, match="on_error='skip'"):
    open_corpus(csv, on_error="skip")
  with pytest.raises(ValueError, match="split/data_dir apply to 'tfds:'"):
    open_corpus(csv, split="train")


def test_bad_share_arguments(tree):
  corpus = open_corpus(tree[0])
  with pytest.raises(ValueError, match="process_index=2"):
    corpus.records(2, 2)
  with pytest.raises(ValueError, match="start=-1"):
    corpus.records(0, 1, -1)
  with pytest.raises(ValueError, match="block_size=0"):
    corpus.records(block_size=0)


def test_public_names():
  assert set(corpus_lib.__all__) >= {
    "Corpus",
    "InputError",
    "Record",
    "open_corpus",
  }


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_progress_of_a_lines_corpus_is_the_bytes_it_has_read(tmp_path, suffix):
  docs = [{"text": f"document {i} " + "word " * (i % 50)} for i in range(5000)]
  # Random text, so that compression leaves many blocks to read.
  rng = random.Random(0)
  for d in docs:
    d["noise"] = "".join(rng.choice("abcdefgh") for _ in range(40))
  paths = [_write(tmp_path / f"{n}{suffix}", _jsonl(*docs)) for n in "ab"]
  sizes = [os.path.getsize(p) for p in paths]
  corpus = open_corpus(str(tmp_path))
  assert corpus.share_size() is None  # unknown until read: bytes instead
  assert corpus.share_bytes() == sum(sizes)
  assert corpus.share_bytes(1, 2) == sizes[1]  # by files: its own file
  seen = [corpus.bytes_read for _ in corpus.records()]
  assert seen == sorted(seen)
  assert 0 < seen[len(docs) // 2] < sizes[0]  # inside the first file
  assert sizes[0] <= seen[len(docs) + len(docs) // 2] < sum(sizes)
  assert corpus.bytes_read == sum(sizes)
