"""process_sum and process_gather in a real 2-process job (gloo on CPU)."""

import local_job
import numpy as np
import pytest

_JOB = local_job.job("""
import json
import numpy as np
i = a.process_id
counts = np.arange(6, dtype=np.int32).reshape(2, 3) * (i + 1)
total = sharding.process_sum({"c": counts, "f": np.float32([i + 0.5])})
rows = np.full((i + 1, 2), 10 * i, np.int32)  # 1 row, then 2 rows
gathered = sharding.process_gather(rows)
try:
  sharding.process_sum(np.zeros(2, np.int64))
  wide = "accepted"
except ValueError as e:
  wide = str(e)
strings = sharding.process_gather_strings(["", "\u00e9" * 3] if i else ["a"])
print("RESULT " + json.dumps({
    "c": total["c"].tolist(), "c_dtype": str(total["c"].dtype),
    "f": total["f"].tolist(), "gathered": gathered.tolist(), "wide": wide,
    "strings": strings}))
""")


@pytest.mark.slow
def test_sum_and_gather_across_two_processes():
  outputs = local_job.run(["-c", _JOB], 2)
  got = local_job.results(outputs)
  assert len(got) == 2 and got[0] == got[1]  # every process gets the sums
  assert got[0]["strings"] == ["a", "", "\u00e9" * 3]
  want = (np.arange(6).reshape(2, 3) * 3).tolist()  # x 1 + x 2
  assert got[0]["c"] == want and got[0]["c_dtype"] == "int32"
  assert got[0]["f"] == [2.0]
  assert got[0]["gathered"] == [[0, 0], [10, 10], [10, 10]]
  assert "32-bit" in got[0]["wide"]


def test_one_process_returns_its_own_arrays():
  from data_efficient import sharding

  x = np.arange(4, dtype=np.int32)
  np.testing.assert_array_equal(sharding.process_sum({"x": x})["x"], x)
  np.testing.assert_array_equal(sharding.process_gather(x), x)


_HELPERS_JOB = local_job.job("""
import json
import numpy as np
import pyarrow as pa
i = a.process_id
exact = sharding.process_sum_exact([3_000_000_000 + i, 5, 0]).tolist()
rows = {"key": np.float64([1 / 3, 0.1 + i][: 2 * i]),
        "id": pa.array(["x", "é" * 3000][: 2 * i], pa.string())}
table = sharding.process_gather_table(pa.table(rows)).to_pydict()
failed = []
for name in ("a block that fails on process 1", "one that does not"):
  try:
    with sharding.all_or_none(name):
      if i == 1 and "fails" in name:
        raise ValueError("bad score in shard 7")
    failed.append(None)
  except Exception as e:
    failed.append(f"{type(e).__name__}: {e}")
print("RESULT " + json.dumps({"exact": exact, "table": table,
                              "failed": failed}))
""")


@pytest.mark.slow
def test_exact_sums_tables_and_failures_across_two_processes():
  outputs = local_job.run(["-c", _HELPERS_JOB], 2)
  got = local_job.results(outputs)
  assert got[0]["exact"] == got[1]["exact"] == [6_000_000_001, 10, 0]
  want = {"key": [1 / 3, 1.1], "id": ["x", "é" * 3000]}
  assert got[0]["table"] == got[1]["table"] == want
  assert got[1]["failed"] == ["ValueError: bad score in shard 7", None]
  assert got[0]["failed"] == [
    "ProcessError: process 1 of 2 failed in a block that fails on process "
    "1: ValueError: bad score in shard 7",
    None,
  ]
