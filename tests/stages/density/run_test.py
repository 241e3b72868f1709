"""Tests of the `density` stage: .npy and embed inputs, both estimators."""

import json

import numpy as np
import pytest

from data_efficient import sharding
from data_efficient.io import results
from data_efficient.stages import configs, sampling, select
from data_efficient.stages.density import exact, kernels, run


def unit_vectors(n, d=16, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_density(tmp_path, src, **settings):
  out = tmp_path / "den"
  manifest = run.density(
    configs.DensityConfig(
      embeddings=str(src), output=str(out), progress=False, **settings
    )
  )
  assert manifest == results.read_manifest(out)
  return results.read_results(out), manifest


def test_exact_gaussian_equals_a_naive_sum(tmp_path):
  x = unit_vectors(300)
  np.save(tmp_path / "x.npy", x)
  table, manifest = run_density(
    tmp_path,
    tmp_path / "x.npy",
    estimator="exact",
    kernel="gaussian",
    bandwidth=0.5,
    batch_rows=128,
  )
  d2 = ((x[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1)
  want = np.exp(-d2 / (2 * 0.5**2)).sum(1)
  np.testing.assert_allclose(
    table.column("density").to_numpy(), want, rtol=1e-5
  )
  assert table.column("id").to_pylist() == [str(i) for i in range(300)]
  assert manifest["run_config"]["bandwidth"] == 0.5
  # Recorded beside the run config, not in it: either form may resume.
  assert manifest["exact_form"] in exact.FORMS
  assert "exact_form" not in manifest["run_config"]


def test_sketch_defaults_record_the_bandwidth_and_count_every_point(tmp_path):
  x = unit_vectors(500, seed=1)
  np.save(tmp_path / "x.npy", x)
  table, manifest = run_density(
    tmp_path, tmp_path / "x.npy", rows=64, buckets=512
  )
  config = manifest["run_config"]
  assert config["estimator"] == "sketch" and config["kernel"] == "lsh"
  assert config["hashes_per_row"] == 12
  assert config["median_kernel_value"] == 0.03
  assert config["bandwidth"] == pytest.approx(
    kernels.default_bandwidth(x, "lsh", hashes_per_row=12, seed=0)
  )
  scores = table.column("density").to_numpy()
  assert scores.min() >= 1.0  # every point shares its own bucket
  assert table.num_rows == 500


def test_nan_embeddings_are_an_error(tmp_path):
  x = unit_vectors(20)
  x[7, 3] = np.nan
  np.save(tmp_path / "x.npy", x)
  with pytest.raises(ValueError, match="NaN|finite"):
    run_density(
      tmp_path,
      tmp_path / "x.npy",
      estimator="exact",
      kernel="gaussian",
      bandwidth=1.0,
    )


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
  run_density(
    tmp_path, tmp_path / "x.npy", estimator="exact", kernel="gaussian"
  )
  shares = {}
  for sampler in ("density-ips", "random"):
    out = tmp_path / sampler
    select.select(
      configs.SelectConfig(
        scores=(str(tmp_path / "den"),),
        sampler=sampler,
        rate=0.1,
        seed=3,
        output=str(out),
      )
    )
    ids = np.asarray(results.read_results(out).column("id").to_pylist(), int)
    shares[sampler] = np.bincount(labels[ids], minlength=3) / len(ids)
  print(json.dumps({k: v.round(3).tolist() for k, v in shares.items()}))
  # Inverse propensity moves the sample towards uniform cluster shares.
  assert shares["density-ips"][2] > 3 * shares["random"][2]
  assert shares["density-ips"][0] < shares["random"][0] - 0.2


def _mixture(d, sizes, spread, seed=0):
  """Unit vectors in clusters of `sizes` around random unit centres.

  A member is the normalised centre + spread * g / sqrt(d), g ~ N(0, I):
  two members are ~ spread sqrt(2 / (1 + spread^2)) apart, two centres ~
  sqrt(2).
  """
  rng = np.random.default_rng(seed)
  centers = unit_vectors(len(sizes), d, seed=seed + 100)
  x = np.concatenate(
    [
      c + spread / np.sqrt(d) * rng.normal(size=(n, d))
      for c, n in zip(centers, sizes, strict=True)
    ]
  )
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


# (dim, cluster sizes, spread): rarest cluster last.
MIXTURES = {
  "d32_3_separated": (32, (1800, 180, 20), 0.3),
  "d768_3_separated": (768, (1800, 180, 20), 0.3),
  "d128_6_geometric": (128, (1000, 500, 240, 140, 80, 40), 0.5),
  "d768_10_clusters": (
    768,
    (600, 400, 300, 200, 150, 120, 90, 70, 50, 20),
    0.6,
  ),
  # 8% of the points have their nearest neighbour in another cluster.
  "d32_4_overlapping": (32, (1400, 400, 150, 50), 2.0),
}


def _rarest_cluster_lift(density, labels, rate=0.1, seeds=16):
  """Mean over IPS seeds of the rarest cluster's sample share / its share."""
  ids = np.asarray([str(i) for i in range(len(labels))])
  rare = labels == labels.max()
  k = sampling.rate_to_k(rate, len(ids))
  kept = [
    rare[sampling.inverse_propensity_sample(ids, density, k, s).astype(int)]
    for s in range(seeds)
  ]
  return float(np.mean(kept) / rare.mean())


@pytest.mark.parametrize("name", MIXTURES)
def test_default_sketch_rebalances_nearly_as_well_as_exact_gaussian(
  tmp_path, name
):
  x, labels = _mixture(*MIXTURES[name])
  path = str(tmp_path / "x.npy")
  np.save(path, x)
  lifts = {}
  # The default sketch (K, width rule, raw counts) with fewer rows, and the
  # exact Gaussian sums with their default bandwidth.
  for config in (
    configs.DensityConfig(rows=250, embeddings=path, output=""),
    configs.DensityConfig(
      estimator="exact", kernel="gaussian", embeddings=path, output=""
    ),
  ):
    config = run.resolve_bandwidth(path, config)
    ((_, _, density),) = run.density_scores(
      path, config, sharding.make_mesh(), progress=False
    )
    lifts[config.estimator] = _rarest_cluster_lift(density, labels)
  print(name, lifts)
  assert lifts["exact"] > 1.1  # there is something to rebalance
  assert lifts["sketch"] >= 0.8 * lifts["exact"]


def test_runs_before_hashes_per_row_still_resume(tmp_path):
  """K = 1 records what runs made before K existed recorded, so their
  directories resume; the default K is a different run, refused by name."""
  np.save(tmp_path / "x.npy", unit_vectors(50))
  sketch = {"rows": 8, "buckets": 64}
  _, manifest = run_density(
    tmp_path, tmp_path / "x.npy", **sketch, hashes_per_row=1
  )
  config = manifest["run_config"]
  assert "hashes_per_row" not in config
  assert config["median_kernel_value"] == 0.1
  with pytest.raises(Exception, match="hashes_per_row"):
    run_density(tmp_path, tmp_path / "x.npy", **sketch)
