"""Tests of `io.dealing`: rows dealt into bucket files, in bounded files."""

import numpy as np
import pyarrow as pa

from data_efficient.io import dealing

SCHEMA = pa.schema([("row", pa.int64()), ("id", pa.string())])


def test_every_bucket_gets_its_rows_in_input_order(tmp_path, monkeypatch):
  monkeypatch.setattr(dealing, "OPEN_FILES", 3)  # 10 buckets: 4 input passes
  rng = np.random.default_rng(0)
  buckets = rng.integers(0, 10, 500)
  buckets[buckets == 7] = 8  # bucket 7 stays empty
  passes = []

  def batches():
    passes.append(1)
    for start in range(0, 500, 64):
      rows = np.arange(start, min(500, start + 64))
      batch = pa.RecordBatch.from_arrays(
        [pa.array(rows), pa.array([f"id-{r}" for r in rows])], schema=SCHEMA
      )
      yield batch, buckets[rows]

  def path_of(b):
    return str(tmp_path / f"bucket-{b}.arrow")

  dealing.deal(batches, SCHEMA, 10, path_of)
  assert len(passes) == 4
  for b in range(10):
    table = dealing.read(path_of(b))
    assert table.schema == SCHEMA
    want = np.flatnonzero(buckets == b)
    assert table.column("row").to_pylist() == want.tolist()
    assert table.column("id").to_pylist() == [f"id-{r}" for r in want]
  assert dealing.read(path_of(7)).num_rows == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
    f"bucket-{b}.arrow" for b in range(10)
  )
