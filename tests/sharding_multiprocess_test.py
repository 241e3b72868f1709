"""process_sum and process_gather in a real 2-process job (gloo on CPU)."""

import json

import multiprocess
import numpy as np
import pytest

_JOB = """
import argparse, json
import numpy as np
p = argparse.ArgumentParser()
p.add_argument("--coordinator_address")
p.add_argument("--num_processes", type=int)
p.add_argument("--process_id", type=int)
a = p.parse_args()
from data_efficient import sharding
sharding.initialize_distributed(
    a.coordinator_address, a.num_processes, a.process_id)
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
try:
  with sharding.fail_together("the block"):
    if i == 1:
      raise ValueError("only on process 1")
  failed = "nothing"
except Exception as e:
  failed = f"{type(e).__name__}: {e}"
print("RESULT " + json.dumps({
    "c": total["c"].tolist(), "c_dtype": str(total["c"].dtype),
    "f": total["f"].tolist(), "gathered": gathered.tolist(), "wide": wide,
    "strings": strings, "failed": failed}))
"""


@pytest.mark.slow
def test_sum_and_gather_across_two_processes():
  outputs = multiprocess.run(["-c", _JOB], 2)
  got = [
    json.loads(line.split("RESULT ", 1)[1])
    for output in outputs
    for line in output.splitlines()
    if line.startswith("RESULT ")
  ]
  failed = [g.pop("failed") for g in got]
  assert len(got) == 2 and got[0] == got[1]  # every process gets the sums
  # Both processes raise (neither waits for the other): their own error, or
  # one naming the process that failed.
  assert failed == [
    "RuntimeError: the block failed on process 1: see its output for the "
    "error.",
    "ValueError: only on process 1",
  ]
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
