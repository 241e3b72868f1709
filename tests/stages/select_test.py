"""Tests of the `select` stage over score and density directories."""

import numpy as np
import pyarrow as pa
import pytest

from data_efficient.io import results, scores
from data_efficient.stages import configs, select


def write_dir(path, stage, column, ids, values, problems=None):
  schema = pa.schema(
    [("id", pa.string()), ("problem", pa.string()), (column, pa.float32())]
  )
  writer = results.ResultWriter(
    path, schema, rows_per_shard=4, run_config={"stage": stage}
  )
  writer.write(
    {
      "id": ids,
      "problem": problems or [None] * len(ids),
      column: np.asarray(values, np.float32),
    }
  )
  writer.close()
  extra = {"score_column": column} if stage == "score" else {}
  results.write_manifest(path, {"stage": stage, **extra})
  return str(path)


IDS = [f"d{i}" for i in range(10)]
QUALITY = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5, 0.05]
DENSITY = [5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0, 10.0]


@pytest.fixture
def dirs(tmp_path):
  problems = [None] * 9 + ["malformed_json"]
  q = write_dir(tmp_path / "q", "score", "p_yes", IDS[::-1], QUALITY[::-1],
                problems[::-1])  # fmt: skip
  d = write_dir(tmp_path / "d", "density", "density", IDS, DENSITY, problems)
  return q, d


def run(tmp_path, **settings):
  out = tmp_path / "sel"
  manifest = select.select(configs.SelectConfig(output=str(out), **settings))
  assert manifest == results.read_manifest(out)
  return results.read_results(out).column("id").to_pylist(), manifest


def test_askllm_topk_keeps_the_highest_scores(tmp_path, dirs):
  ids, manifest = run(
    tmp_path, scores=(dirs[0],), sampler="askllm-topk", rate=0.3
  )
  assert ids == ["d0", "d2", "d4"]
  assert manifest["counts"] == {
    "num_examples": 10,
    "num_excluded": 1,
    "num_selected": 3,
  }
  assert manifest["sampler"] == "askllm-topk" and manifest["seed"] == 0


def test_density_topk_and_bottomk_skip_excluded_rows(tmp_path, dirs):
  ids, _ = run(tmp_path, scores=(dirs[1],), sampler="density-bottomk", k=2)
  assert ids == ["d1", "d3"]
  top = select.choose("density-topk", [scores.read_scores(dirs[1])], k=2)[0]
  assert list(top) == ["d5", "d6"]  # d9 (density 10) is malformed: excluded


def test_seeded_samplers_are_deterministic_and_differ_by_seed(tmp_path, dirs):
  inputs = [scores.read_scores(d) for d in dirs]
  for sampler in ("density-ips", "random", "askllm-then-ips"):
    a = select.choose(sampler, inputs, k=4, seed=1)[0]
    b = select.choose(sampler, inputs[::-1], k=4, seed=1)[0]
    np.testing.assert_array_equal(a, b)
    assert "d9" not in a and len(set(a)) == 4
  seeds = {
    tuple(select.choose("random", inputs, k=4, seed=s)[0]) for s in range(5)
  }
  assert len(seeds) > 1


def test_askllm_then_ips_samples_within_the_quality_top(dirs):
  inputs = [scores.read_scores(d) for d in dirs]
  chosen, counts = select.choose(
    "askllm-then-ips", inputs, k=3, seed=0, quality_rate=0.4
  )
  assert set(chosen) <= {"d0", "d2", "d4", "d6"}
  assert counts["quality_rate"] == 0.4


def test_bad_requests_are_clear_errors(tmp_path, dirs):
  q = scores.read_scores(dirs[0])
  with pytest.raises(ValueError, match="needs density"):
    select.choose("density-ips", [q], k=1)
  with pytest.raises(ValueError, match="eligible"):
    select.choose("askllm-topk", [q], k=10)
  other = write_dir(tmp_path / "o", "density", "density", IDS[:9], DENSITY[:9])
  with pytest.raises(ValueError, match="different examples"):
    select.choose("askllm-then-ips", [q, scores.read_scores(other)], k=1)
