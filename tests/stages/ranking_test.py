"""Tests for data_efficient.stages.ranking."""

import numpy as np
import pyarrow as pa
import pytest

from data_efficient.stages import ranking, sampling


def kept(keys, ids, k, batch, **limits):
  """The ids `kth` keeps, streaming `batch` rows at a time."""

  def batches():
    for start in range(0, len(ids), batch):
      rows = slice(start, start + batch)
      yield keys[rows], pa.array(ids[rows])

  row = ranking.kth(batches, k, **limits)
  mask = ranking.at_or_before(keys, pa.array(ids), row)
  return sorted(ids[mask])


@pytest.mark.parametrize("ties", ["none", "some", "all"])
@pytest.mark.parametrize("k", [0, 1, 57, 300, 599, 600])
def test_kth_keeps_what_the_in_memory_top_k_keeps(ties, k):
  rng = np.random.default_rng(k)
  ids = np.array([f"u/{rng.integers(10**6)}/{i}" for i in range(600)])
  keys = {
    "none": rng.random(600),
    "some": rng.integers(0, 5, 600) * 0.5,
    "all": np.zeros(600),
  }[ties]
  want = list(sampling._top_k_by_key(ids, keys, k))
  # Small samples and collections: several narrowing passes.
  limits = {"sample_rows": 32, "collect_rows": 20, "collect_bytes": 10**6}
  order = rng.permutation(600)
  assert kept(keys, ids, k, 64, **limits) == want
  assert kept(keys[order], ids[order], k, 7, **limits) == want
  assert kept(keys, ids, k, 600) == want  # Collected in one pass.


def test_kth_refuses_too_large_k_and_repeated_rows():
  keys, ids = np.zeros(50), np.array(["same"] * 50)
  with pytest.raises(ValueError, match="more than the 50 rows"):
    kept(keys, ids, 51, 10)
  with pytest.raises(ValueError, match="share one key and id"):
    kept(keys, ids, 5, 10, sample_rows=8, collect_rows=4)


@pytest.mark.parametrize("sample_rows", [2, 3, 5])
def test_kth_narrows_with_a_sample_of_a_few_rows(sample_rows):
  """A sample of a few rows (a process's share of the job's sample, when it
  holds few of the rows inside) still narrows the interval every pass."""
  rng = np.random.default_rng(sample_rows)
  ids = np.array([f"id{i:03d}" for i in range(200)])
  keys = rng.integers(0, 3, 200) * 1.0
  for k in (1, 77, 200):
    want = list(sampling._top_k_by_key(ids, keys, k))
    limits = {"sample_rows": sample_rows, "collect_rows": 4}
    assert kept(keys, ids, k, 16, **limits) == want
