"""Tests for local and gs:// paths, gs:// on a local Cloud Storage emulator."""

import numpy as np
import pyarrow as pa
import pytest

from data_efficient.io import paths, results


def _tree(root):
  """Writes the same small tree under `root` (local or gs://)."""
  for name, data in (("a.json", b"{}"), ("sub/b.txt", b"x"), ("c.bin", b"")):
    with paths.atomic_write(paths.join(root, name)) as f:
      f.write(data)


def test_remote_paths_behave_like_local_ones(tmp_path, gcs_dir):
  local = str(tmp_path)
  (tmp_path / "sub").mkdir()
  for root in (local, gcs_dir):
    _tree(root)
  for root in (local, gcs_dir):
    assert sorted(paths.listdir(root)) == ["a.json", "c.bin", "sub"]
    assert sorted(paths.walk_files(root)) == ["a.json", "c.bin", "sub/b.txt"]
    assert paths.isdir(root) and paths.isdir(paths.join(root, "sub"))
    assert paths.isfile(paths.join(root, "a.json"))
    assert not paths.exists(paths.join(root, "missing"))
    assert paths.read_bytes(paths.join(root, "sub/b.txt")) == b"x"
    assert paths.size(paths.join(root, "a.json")) == 2
    with paths.open_file(paths.join(root, "a.json"), "r") as f:
      assert f.read() == "{}"
    matches = paths.glob(paths.join(root, "*.json"))
    assert matches == [paths.join(root, "a.json")]
    paths.remove(paths.join(root, "c.bin"))
    assert not paths.exists(paths.join(root, "c.bin"))
    with pytest.raises(FileNotFoundError):
      paths.read_bytes(paths.join(root, "c.bin"))


def test_a_failed_write_leaves_no_object(gcs_dir):
  target = paths.join(gcs_dir, "manifest.json")
  with pytest.raises(RuntimeError, match="interrupted"):
    with paths.atomic_write(target) as f:
      f.write(b'{"half": ')
      raise RuntimeError("interrupted")
  assert not paths.exists(target)


SCHEMA = pa.schema([("id", pa.string()), ("score", pa.float32())])


def _write(out, rows, *, close=True):
  writer = results.ResultWriter(
    out, SCHEMA, rows_per_shard=4, run_config={"seed": 0}
  )
  start = writer.rows_done
  for lo in range(start, rows, 2):
    writer.write(
      {
        "id": [f"r{i}" for i in range(lo, lo + 2)],
        "score": np.arange(lo, lo + 2, dtype=np.float32),
      }
    )
  if close:
    writer.close()
    return results.write_manifest(out, {"stage": "test"})
  return None


def _shard_bytes(out):
  return {
    name: paths.read_bytes(paths.join(out, name))
    for name in sorted(paths.listdir(out))
    if name.endswith(".parquet")
  }


def test_results_on_gcs_match_local_bytes_and_resume(tmp_path, gcs_dir):
  local = _write(str(tmp_path / "local"), 10)
  # An interrupted run: shards, but no done record and no manifest.
  _write(gcs_dir, 6, close=False)
  with pytest.raises(results.OutputError, match="incomplete"):
    results.read_manifest(gcs_dir)
  assert len(_shard_bytes(gcs_dir)) == 1
  writer = results.ResultWriter(
    gcs_dir, SCHEMA, rows_per_shard=4, run_config={"seed": 0}
  )
  assert writer.rows_done == 4  # The whole shard; the buffered rows redo.
  remote = _write(gcs_dir, 10)
  assert remote["shards"] == local["shards"]
  assert _shard_bytes(gcs_dir) == _shard_bytes(str(tmp_path / "local"))
  table = results.read_results(gcs_dir)
  assert table.column("id").to_pylist() == [f"r{i}" for i in range(10)]
  assert results.read_manifest(gcs_dir) == remote
  with pytest.raises(results.OutputError, match="seed: 0 -> 1"):
    results.ResultWriter(gcs_dir, SCHEMA, run_config={"seed": 1})


def test_one_503_is_retried_by_the_filesystem_library(gcs_emulator, gcs_dir):
  _write(gcs_dir, 4)
  with gcs_emulator.failing(1):
    table = results.read_results(gcs_dir)
  assert table.num_rows == 4
  assert len(gcs_emulator.failures) == 1
  before = len(gcs_emulator.failures)
  with gcs_emulator.failing(1):
    results.write_json(gcs_dir, "extra.json", {"a": 1})
  assert len(gcs_emulator.failures) == before + 1
  assert results.read_json(gcs_dir, "extra.json") == {"a": 1}
