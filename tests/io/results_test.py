"""Tests for sharded, resumable result output."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_efficient.io import results
from data_efficient.io.results import (
  OutputError,
  ResultWriter,
  iter_results,
  read_manifest,
  read_results,
  write_manifest,
)

SCHEMA = pa.schema(
  [
    ("id", pa.string()),
    ("score", pa.float32()),
    ("problem", pa.string()),
    ("vec", pa.list_(pa.float32(), 3)),
  ]
)
CONFIG = {"model": "flan_t5_xl", "seed": 0, "corpus": {"files": ["a.jsonl"]}}


def _rows(n, offset=0):
  """`n` rows as a column dict; values depend only on the row index."""
  index = np.arange(offset, offset + n)
  return {
    "id": [f"doc.jsonl:{i}" for i in index],
    "score": (index / 7).astype(np.float32),
    "problem": [None if i % 5 else "empty" for i in index],
    "vec": np.stack([index, -index, index * 0.5], axis=1).astype(np.float32),
  }


def _write_all(writer, start, stop, batch):
  for first in range(start, stop, batch):
    writer.write(_rows(min(batch, stop - first), first))


# Rows per write (one write per chunk of whole blocks): 40 rows in all.
_WRITES = (5, 3, 5, 5, 2, 5, 1, 3, 6, 5)


def _open(directory, rows_per_shard=7):
  return ResultWriter(
    directory, SCHEMA, rows_per_shard=rows_per_shard, run_config=CONFIG
  )


def _write_sequence(writer, sizes, skip_rows=0):
  """Writes batches of `sizes` rows, but for the first `skip_rows` rows.

  `skip_rows` must be at the end of a batch, as a resumed run's would be.
  """
  first = 0
  for size in sizes:
    if first >= skip_rows:
      writer.write(_rows(size, first))
    first += size
    assert first <= skip_rows or first - size >= skip_rows


def _parts(directory):
  return sorted(n for n in os.listdir(directory) if n.endswith(".parquet"))


def _shard_bytes(directory):
  return {
    name: open(os.path.join(directory, name), "rb").read()
    for name in sorted(os.listdir(directory))
    if name.endswith(".parquet") or name.startswith("done-")
  }


def test_round_trip_with_several_processes(tmp_path):
  out = str(tmp_path / "scores")
  sizes = [23, 9, 0]  # Rows per process; the last has none.
  offsets = [0, 23, 32]
  for process, (size, offset) in enumerate(zip(sizes, offsets, strict=True)):
    writer = ResultWriter(
      out,
      SCHEMA,
      process_index=process,
      process_count=3,
      rows_per_shard=7,
      run_config=CONFIG,
    )
    assert writer.rows_done == 0
    _write_all(writer, offset, offset + size, 5)
    assert writer.close() == size
  manifest = write_manifest(out, {"code_version": "abc", "corpus": CONFIG})
  assert manifest == read_manifest(out)
  assert manifest["num_rows"] == 32
  assert manifest["code_version"] == "abc"
  # Process 0 writes 5+5 | 5+5 | 3 (close), process 1 5+4, process 2 nothing.
  assert [s["num_rows"] for s in manifest["shards"]] == [10, 10, 3, 9, 0]
  assert manifest["shards"][3]["file"] == "part-00001-of-00003-000000.parquet"

  table = read_results(out)
  assert table.schema == SCHEMA
  expected = _rows(32)
  assert table.column("id").to_pylist() == expected["id"]
  assert table.column("problem").to_pylist() == expected["problem"]
  np.testing.assert_array_equal(table.column("score"), expected["score"])
  np.testing.assert_array_equal(
    np.stack(table.column("vec").to_numpy(zero_copy_only=False)),
    expected["vec"],
  )
  assert read_results(out, columns=["id"]).column_names == ["id"]
  batches = list(iter_results(out, columns=["id", "score"], batch_rows=4))
  assert max(b.num_rows for b in batches) == 4
  assert (
    pa.Table.from_batches(batches).to_pydict()
    == read_results(out, columns=["id", "score"]).to_pydict()
  )
  with pytest.raises(ValueError, match=r"no columns \['nope'\]"):
    read_results(out, columns=["nope"])


def test_shares_cover_the_rows_in_order_and_read_only_their_shards(tmp_path):
  out = str(tmp_path / "scores")
  writer = _open(out)
  _write_sequence(writer, _WRITES)
  writer.close()
  write_manifest(out, {})
  ids = read_results(out, columns=["id"]).column("id").to_pylist()
  for count in (1, 2, 3, 7, 45):
    shares = [results.share(len(ids), i, count) for i in range(count)]
    assert [r for s in shares for r in s] == list(range(len(ids)))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    got = []
    for rows in shares:
      batches = list(iter_results(out, ["id"], batch_rows=3, rows=rows))
      assert all(b.num_rows <= 3 for b in batches)
      got += [i for b in batches for i in b.column(0).to_pylist()]
    assert got == ids
  # A share is read from its own shards: the others may even be gone.
  manifest = read_manifest(out)
  first = manifest["shards"][0]
  os.remove(os.path.join(out, manifest["shards"][-1]["file"]))
  head = range(first["num_rows"] - 2)
  batches = iter_results(out, ["id"], rows=head)
  assert [i for b in batches for i in b.column(0).to_pylist()] == ids[
    : len(head)
  ]
  with pytest.raises(ValueError, match="process_index=2"):
    results.share(10, 2, 2)


@pytest.mark.parametrize("killed_after", [0, 1, 2, 4, 7, 9, len(_WRITES)])
def test_resume_after_a_kill_writes_identical_bytes(tmp_path, killed_after):
  total = sum(_WRITES)
  uninterrupted = str(tmp_path / "uninterrupted")
  writer = _open(uninterrupted)
  _write_sequence(writer, _WRITES)
  writer.close()
  write_manifest(uninterrupted, {"run": 1})

  resumed = str(tmp_path / "resumed")
  writer = _open(resumed)
  _write_sequence(writer, _WRITES[:killed_after])
  del writer  # Killed: the buffered rows are lost...
  next_shard = results.shard_name(0, 1, len(_parts(resumed)))
  half_written = os.path.join(resumed, next_shard + ".tmp")
  with open(half_written, "wb") as f:  # ...while writing the next shard.
    f.write(b"PAR1\x00 half a shard")
  with pytest.raises(OutputError, match="incomplete"):
    read_results(resumed)

  writer = _open(resumed)
  assert not os.path.exists(half_written)
  # Rows on disk end at a write boundary (`_write_sequence` checks it).
  assert writer.rows_done <= sum(_WRITES[:killed_after])
  _write_sequence(writer, _WRITES, skip_rows=writer.rows_done)
  assert writer.close() == total
  write_manifest(resumed, {"run": 1})

  expected = _shard_bytes(uninterrupted)
  assert len(expected) == 6  # Shards of 8, 10, 7, 10, 5 rows; done record.
  assert _shard_bytes(resumed) == expected
  assert read_manifest(resumed) == read_manifest(uninterrupted)

  # Rerunning a finished process writes nothing new and changes nothing.
  writer = _open(resumed)
  assert writer.rows_done == total
  writer.write(_rows(0))
  assert writer.close() == total
  assert _shard_bytes(resumed) == expected
  with pytest.raises(OutputError, match="already finished with 40 rows"):
    _open(resumed).write(_rows(1))


@pytest.mark.parametrize(
  "sizes", [_WRITES, (20, 1, 1, 7, 6, 1), (1,) * 9, (3,)]
)
def test_shards_end_at_write_boundaries(tmp_path, sizes):
  out = str(tmp_path / "out")
  writer = _open(out)
  write_ends = np.cumsum(sizes).tolist()
  for size, end in zip(sizes, write_ends, strict=True):
    writer.write(_rows(size, end - size))
  writer.close()
  manifest = write_manifest(out, {})
  counts = [s["num_rows"] for s in manifest["shards"]]
  # At least rows_per_shard rows each, but for the last; no more rows than
  # needed to reach it, plus one write.
  assert all(n >= 7 for n in counts[:-1])
  assert all(n < 7 + max(sizes) for n in counts)
  shard_ends = np.cumsum(counts).tolist()
  assert set(shard_ends) <= set(write_ends)
  assert shard_ends[-1] == sum(sizes)
  assert read_results(out).column("id").to_pylist() == _rows(sum(sizes))["id"]


def test_shard_is_written_as_soon_as_rows_are_enough(tmp_path):
  writer = _open(str(tmp_path), rows_per_shard=4)
  shards_after_each_write = []
  for size in (3, 2, 4, 1, 9):
    writer.write(_rows(size))
    shards_after_each_write.append(
      [pq.read_metadata(tmp_path / n).num_rows for n in _parts(tmp_path)]
    )
  assert shards_after_each_write == [
    [],
    [5],
    [5, 4],
    [5, 4],
    [5, 4, 10],
  ]
  # A resumed writer starts after the last shard, at a write boundary.
  assert _open(str(tmp_path), rows_per_shard=4).rows_done == 19


def test_manifestless_directory_is_refused(tmp_path):
  out = str(tmp_path / "out")
  writer = ResultWriter(out, SCHEMA, rows_per_shard=4, run_config=CONFIG)
  writer.write(_rows(9))
  writer.close()
  for read in (read_results, read_manifest, lambda d: list(iter_results(d))):
    with pytest.raises(OutputError, match=f"{out}: no manifest.json.*rerun"):
      read(out)
  with pytest.raises(OutputError, match="no such results directory"):
    read_results(str(tmp_path / "missing"))


def test_corrupted_or_inconsistent_manifest_is_refused(tmp_path):
  out = str(tmp_path / "out")
  writer = ResultWriter(out, SCHEMA, rows_per_shard=4, run_config=CONFIG)
  writer.write(_rows(4))
  writer.write(_rows(5, 4))
  writer.close()
  manifest = write_manifest(out, {})
  path = os.path.join(out, results.MANIFEST)
  with open(path, "w") as f:
    f.write('{"num_rows": 9, "shards": [')
  with pytest.raises(OutputError, match="corrupted manifest"):
    read_results(out)
  manifest["num_rows"] = 10
  with open(path, "w") as f:
    json.dump(manifest, f)
  with pytest.raises(OutputError, match="9 rows, the manifest says 10"):
    read_results(out)
  with pytest.raises(OutputError, match="9 rows, the manifest says 10"):
    list(iter_results(out))
  manifest["num_rows"] = 9
  with open(path, "w") as f:
    json.dump(manifest, f)
  os.remove(os.path.join(out, results.shard_name(0, 1, 1)))
  with pytest.raises(
    OutputError, match="000001.parquet: listed in the manifest"
  ):
    read_results(out)


def test_manifest_waits_for_every_process(tmp_path):
  out = str(tmp_path / "out")
  for process in range(2):
    writer = ResultWriter(
      out,
      SCHEMA,
      process_index=process,
      process_count=2,
      run_config=CONFIG,
    )
    writer.write(_rows(3))
  writer.close()  # Only process 1 finished.
  with pytest.raises(OutputError, match="process 0 of 2 has not finished"):
    write_manifest(out, {})
  assert not os.path.exists(os.path.join(out, results.MANIFEST))


def test_run_config_mismatch_names_the_keys(tmp_path):
  out = str(tmp_path / "out")
  ResultWriter(out, SCHEMA, run_config=CONFIG).close()
  changed = dict(CONFIG, model="flan_t5_small")
  with pytest.raises(OutputError) as error:
    ResultWriter(out, SCHEMA, run_config=changed)
  message = str(error.value)
  assert message.startswith(f"{out}: holds results of a run with other")
  assert 'run_config.model: "flan_t5_xl" -> "flan_t5_small"' in message
  assert "seed" not in message
  with pytest.raises(OutputError, match=r"writer\.rows_per_shard: 50000 -> 10"):
    ResultWriter(out, SCHEMA, rows_per_shard=10, run_config=CONFIG)
  with pytest.raises(OutputError, match=r"writer\.process_count: 1 -> 2"):
    ResultWriter(out, SCHEMA, process_count=2, run_config=CONFIG)
  with pytest.raises(OutputError, match=r"writer\.schema"):
    ResultWriter(out, pa.schema([("id", pa.string())]), run_config=CONFIG)
  ResultWriter(out, SCHEMA, run_config=dict(CONFIG))  # Equal: resumes.


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
  regular_file = tmp_path / "file"
  regular_file.write_text("x")
  for out in (str(regular_file / "out"), str(regular_file)):
    with pytest.raises(OutputError, match=f"{out}: cannot write"):
      ResultWriter(out, SCHEMA, run_config=CONFIG)


def test_bad_batches_and_arguments(tmp_path):
  writer = ResultWriter(str(tmp_path), SCHEMA, run_config=CONFIG)
  rows = _rows(2)
  with pytest.raises(ValueError, match=r"missing \['vec'\]"):
    writer.write({k: v for k, v in rows.items() if k != "vec"})
  with pytest.raises(ValueError, match="differ in length"):
    writer.write(dict(rows, id=["only one"]))
  with pytest.raises(ValueError, match="column 'score'"):
    writer.write(dict(rows, score=["a", "b"]))
  with pytest.raises(ValueError, match="width 2"):
    writer.write(dict(rows, vec=np.zeros((2, 2), np.float32)))
  with pytest.raises(ValueError, match="JSON-serializable"):
    ResultWriter(str(tmp_path / "x"), SCHEMA, run_config={"f": object()})
  with pytest.raises(ValueError, match="process_index=1"):
    ResultWriter(str(tmp_path), SCHEMA, process_index=1, run_config=CONFIG)


def test_gap_or_short_shard_before_others_is_refused(tmp_path):
  out = str(tmp_path / "gap")
  writer = _open(out, rows_per_shard=2)
  for first in range(0, 6, 2):
    writer.write(_rows(2, first))
  os.remove(os.path.join(out, results.shard_name(0, 1, 1)))
  with pytest.raises(OutputError, match="shard 1 of process 0 is missing"):
    _open(out, rows_per_shard=2)

  out = str(tmp_path / "short")
  writer = _open(out, rows_per_shard=3)
  writer.write(_rows(3))
  writer.write(_rows(2, 3))
  writer.close()  # Shards of 3 and 2 rows: swap them.
  first, second = (os.path.join(out, n) for n in _parts(out))
  os.rename(first, first + ".x")
  os.rename(second, first)
  os.rename(first + ".x", second)
  with pytest.raises(
    OutputError, match="follows a shard with 2 rows, fewer than 3"
  ):
    _open(out, rows_per_shard=3)


def test_json_side_files_are_atomic_and_checked(tmp_path):
  results.write_json(tmp_path, "done-00000.json", {"rows": 3, "t": (1, 2)})
  assert results.read_json(tmp_path, "done-00000.json") == {
    "rows": 3,
    "t": [1, 2],
  }
  assert sorted(os.listdir(tmp_path)) == ["done-00000.json"]  # No temp file.
  with pytest.raises(OutputError, match="done-00001.json: missing"):
    results.read_json(tmp_path, "done-00001.json")
  (tmp_path / "bad.json").write_text("{")
  with pytest.raises(OutputError, match="bad.json: corrupted"):
    results.read_json(tmp_path, "bad.json")
