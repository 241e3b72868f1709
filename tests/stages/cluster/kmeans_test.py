"""Tests of `clustering`: parity with NumPy k-means, sharding, determinism."""

import jax
import numpy as np
import pytest

from data_efficient import sharding
from data_efficient.stages import configs
from data_efficient.stages.cluster import kmeans


def blobs(n=600, d=16, centers=12, seed=0, spread=0.15):
  """Points around `centers` random directions, in random order."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(centers, d))
  means /= np.linalg.norm(means, axis=1, keepdims=True)
  labels = rng.integers(0, centers, size=n)
  x = means[labels] + spread * rng.normal(size=(n, d)) / np.sqrt(d)
  return (3.0 * x).astype(np.float32)


def reference_kmeans(x, init, iterations, spherical):
  """Lloyd's algorithm in NumPy float64: (centroids, assignments)."""
  x = x.astype(np.float64)
  if spherical:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
  c = init.astype(np.float64)

  def assign(c):
    if spherical:
      return np.argmax(x @ c.T, axis=1)
    return np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)

  for _ in range(iterations):
    a = assign(c)
    for j in range(len(c)):
      members = x[a == j]
      if len(members):
        s = members.sum(0)
        c[j] = s / np.linalg.norm(s) if spherical else members.mean(0)
  return c, assign(c)


def mesh(devices):
  return sharding.make_mesh(devices=jax.devices()[:devices])


@pytest.fixture
def npy(tmp_path):
  path = str(tmp_path / "x.npy")
  np.save(path, blobs())
  return path


@pytest.mark.parametrize("spherical", [True, False])
@pytest.mark.parametrize("devices", [1, 8])
def test_matches_numpy_lloyd_on_1_and_8_devices(npy, spherical, devices):
  config = configs.KMeansConfig(
    clusters=10, iterations=6, seed=3, spherical=spherical, init="random"
  )
  init = kmeans.init_centroids(npy, config, batch_rows=128)
  result = kmeans.fit(npy, config, mesh(devices), batch_rows=128)
  want_c, want_a = reference_kmeans(np.load(npy), init, 6, spherical)
  np.testing.assert_allclose(result.centroids, want_c, rtol=1e-5, atol=1e-5)
  got_a = np.concatenate(
    [
      c
      for _, _, c, _ in kmeans.assign(
        npy, result.centroids, mesh(devices), spherical=spherical,
        batch_rows=100,
      )
    ]
  )  # fmt: skip
  np.testing.assert_array_equal(got_a, want_a)
  assert len(result.inertia) == 6
  assert result.inertia[-1] <= result.inertia[0]


def test_same_seed_same_centroids_whatever_the_devices(npy):
  config = configs.KMeansConfig(clusters=12, iterations=3, seed=7)
  one = kmeans.fit(npy, config, mesh(1), batch_rows=256)
  eight = kmeans.fit(npy, config, mesh(8), batch_rows=256)
  again = kmeans.fit(npy, config, mesh(8), batch_rows=256)
  np.testing.assert_array_equal(eight.centroids, again.centroids)
  np.testing.assert_allclose(one.centroids, eight.centroids, atol=1e-6)
  other = kmeans.fit(
    npy, configs.KMeansConfig(clusters=12, iterations=3, seed=8), mesh(8)
  )
  assert not np.allclose(other.centroids, eight.centroids)


def test_init_is_independent_of_batching_and_row_order(tmp_path):
  x = blobs(seed=1)
  a, b = str(tmp_path / "a.npy"), str(tmp_path / "b.npy")
  np.save(a, x)
  np.save(b, x)
  config = configs.KMeansConfig(clusters=8, init_sample=50, seed=2)
  c1 = kmeans.init_centroids(a, config, batch_rows=64)
  c2 = kmeans.init_centroids(b, config, batch_rows=1000)
  np.testing.assert_array_equal(c1, c2)
  ids, sample = kmeans.sample_rows(a, 50, seed=2, batch_rows=37)
  assert len(set(ids)) == 50
  np.testing.assert_array_equal(sample, x[ids.astype(int)])


def test_kmeans_plus_plus_picks_distinct_rows_spread_over_blobs():
  x = blobs(n=400, centers=6, spread=0.01, seed=4)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  c = np.asarray(kmeans.kmeans_plus_plus(x, 6, jax.random.key(0)))
  rows = [int(np.flatnonzero((x == ci).all(1))[0]) for ci in c]
  assert len(set(rows)) == 6
  # One seed per blob: pairwise distances are all blob-sized.
  d = np.linalg.norm(c[:, None] - c[None], axis=-1)
  assert d[~np.eye(6, dtype=bool)].min() > 0.3


def test_empty_cluster_keeps_its_centroid(tmp_path):
  x = np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32)
  path = str(tmp_path / "x.npy")
  np.save(path, x)
  far = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
  sums, counts, _ = kmeans.lloyd_pass(path, far, mesh(8), batch_rows=2)
  np.testing.assert_array_equal(counts, [2, 1, 0])
  new = np.asarray(kmeans._update(far, sums, counts, True))
  np.testing.assert_array_equal(new[2], far[2])


def test_bad_inputs_are_clear_errors(tmp_path):
  x = blobs(n=20)
  x[5, 1] = np.nan
  path = str(tmp_path / "x.npy")
  np.save(path, x)
  with pytest.raises(ValueError, match=r"id '5' \(row 5\) contains NaN"):
    kmeans.fit(path, configs.KMeansConfig(clusters=2, iterations=1), mesh(1))
  np.save(path, blobs(n=20))
  with pytest.raises(ValueError, match="fewer than clusters="):
    kmeans.init_centroids(path, configs.KMeansConfig(clusters=30))
  with pytest.raises(ValueError, match="init"):
    configs.KMeansConfig(init="farthest")
