"""Tests of the `density` stage: .npy and embed inputs, both estimators."""

import json

import numpy as np
import pytest

from data_efficient import cli
from data_efficient.io import results
from data_efficient.stages.density import kernels


def unit_vectors(n, d=16, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def density(tmp_path, src, *args, name="den"):
  out = tmp_path / name
  assert cli.main(["density", "--embeddings", str(src), "--output", str(out),
                   "--no_progress", *args]) == 0  # fmt: skip
  table = results.read_results(out)
  return table, results.read_manifest(out)


def test_exact_gaussian_equals_a_naive_sum(tmp_path):
  x = unit_vectors(300)
  np.save(tmp_path / "x.npy", x)
  table, manifest = density(
      tmp_path, tmp_path / "x.npy", "--estimator", "exact",
      "--kernel", "gaussian", "--bandwidth", "0.5", "--batch_rows", "128",
  )  # fmt: skip
  d2 = ((x[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1)
  want = np.exp(-d2 / (2 * 0.5**2)).sum(1)
  np.testing.assert_allclose(
    table.column("density").to_numpy(), want, rtol=1e-5
  )
  assert table.column("id").to_pylist() == [str(i) for i in range(300)]
  assert manifest["run_config"]["bandwidth"] == 0.5


def test_sketch_defaults_record_the_bandwidth_and_count_every_point(tmp_path):
  x = unit_vectors(500, seed=1)
  np.save(tmp_path / "x.npy", x)
  table, manifest = density(
    tmp_path, tmp_path / "x.npy", "--rows", "64", "--buckets", "512"
  )
  config = manifest["run_config"]
  assert config["estimator"] == "sketch" and config["kernel"] == "lsh"
  assert config["bandwidth"] == pytest.approx(
    kernels.default_bandwidth(x, "lsh", seed=0)
  )
  scores = table.column("density").to_numpy()
  assert scores.min() >= 1.0  # every point shares its own bucket
  assert table.num_rows == 500


def test_rerun_with_other_flags_into_the_same_dir_is_refused(tmp_path):
  np.save(tmp_path / "x.npy", unit_vectors(50))
  density(tmp_path, tmp_path / "x.npy", "--rows", "8", "--buckets", "64")
  with pytest.raises(Exception, match="rows"):
    density(tmp_path, tmp_path / "x.npy", "--rows", "16", "--buckets", "64")


def test_nan_embeddings_are_an_error(tmp_path):
  x = unit_vectors(20)
  x[7, 3] = np.nan
  np.save(tmp_path / "x.npy", x)
  with pytest.raises(ValueError, match="NaN|finite"):
    density(tmp_path, tmp_path / "x.npy", "--estimator", "exact",
            "--kernel", "gaussian", "--bandwidth", "1")  # fmt: skip


def test_density_ips_selection_over_the_stage_output(tmp_path, capsys):
  rng = np.random.default_rng(0)
  centers = unit_vectors(3, seed=9) * 4
  sizes = [900, 90, 10]
  x = np.concatenate(
    [
      c + 0.3 * rng.normal(size=(n, 16))
      for c, n in zip(centers, sizes, strict=True)
    ]
  ).astype(np.float32)
  labels = np.repeat([0, 1, 2], sizes)
  np.save(tmp_path / "x.npy", x)
  density(tmp_path, tmp_path / "x.npy", "--estimator", "exact",
          "--kernel", "gaussian")  # fmt: skip
  shares = {}
  for sampler in ("density-ips", "random"):
    out = tmp_path / sampler
    cli.main(["select", "--scores", str(tmp_path / "den"), "--sampler", sampler,
              "--rate", "0.1", "--seed", "3", "--output", str(out)])  # fmt: skip
    ids = np.asarray(results.read_results(out).column("id").to_pylist(), int)
    shares[sampler] = np.bincount(labels[ids], minlength=3) / len(ids)
  print(json.dumps({k: v.round(3).tolist() for k, v in shares.items()}))
  # Inverse propensity moves the sample towards uniform cluster shares.
  assert shares["density-ips"][2] > 3 * shares["random"][2]
  assert shares["density-ips"][0] < shares["random"][0] - 0.2
