"""Tests for data_efficient.stages.density.kernels."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from data_efficient.stages.density import kernels


def _datar(c, w):
  """Datar et al.'s formula, as printed, in float64 (c > 0)."""
  t = w / c
  return (
    1.0
    - 2.0 * stats.norm.cdf(-t)
    - 2.0 / (math.sqrt(2.0 * math.pi) * t) * (1.0 - math.exp(-t * t / 2.0))
  )


@pytest.mark.parametrize("c", [0.05, 0.3, 1.0, 2.5, 10.0, 100.0])
def test_lsh_probability_matches_datar_formula(c):
  got = float(kernels.lsh_collision_probability(jnp.float32(c), 1.3))
  np.testing.assert_allclose(got, _datar(c, 1.3), rtol=2e-5)


def test_lsh_probability_limits_and_monotone():
  c = jnp.array([0.0, 1e-30, 0.1, 1.0, 10.0, 1e30, jnp.inf])
  p = np.asarray(kernels.lsh_collision_probability(c, 1.0))
  assert p[0] == 1.0 and p[-1] == 0.0
  assert np.all(np.diff(p) <= 0) and np.all((p >= 0) & (p <= 1))
  # Far away p ~ t / sqrt(2 pi), t = w / c.
  np.testing.assert_allclose(p[4], 0.1 / math.sqrt(2 * math.pi), rtol=0.01)


@pytest.mark.parametrize("c", [0.2, 1.0, 3.0])
def test_lsh_probability_matches_simulated_hashes(c):
  rng = np.random.default_rng(0)
  n, w = 400_000, 1.0
  # a.x ~ N(0, |x|^2): put x at the origin and y at distance c along e_1.
  ax = np.zeros(n)
  ay = rng.standard_normal(n) * c
  b = rng.uniform(0, w, n)
  hit = np.floor((ax + b) / w) == np.floor((ay + b) / w)
  p = float(kernels.lsh_collision_probability(jnp.float32(c), w))
  se = math.sqrt(p * (1 - p) / n)
  assert abs(hit.mean() - p) < 5 * se, (hit.mean(), p)


def _reference_matrix(x, y, kernel, h):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if kernel == "cosine":
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return np.exp((x @ y.T - 1.0) / h)
  d = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
  if kernel == "gaussian":
    return np.exp(-(d**2) / (2 * h * h))
  if kernel == "laplacian":
    return np.exp(-d / h)
  return np.vectorize(lambda c: 1.0 if c == 0 else _datar(c, h))(d)


@pytest.mark.parametrize("kernel", kernels.KERNELS)
def test_kernel_matrix_matches_float64_formula(kernel):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((40, 6)).astype(np.float32)
  y = np.concatenate([x[:5], rng.standard_normal((30, 6))]).astype(np.float32)
  h = kernels.default_bandwidth(y, kernel)
  got = np.asarray(kernels.kernel_matrix(x, y, kernel, h))
  np.testing.assert_allclose(
    got, _reference_matrix(x, y, kernel, h), rtol=1e-4, atol=1e-6
  )
  # A point against itself is exactly 1, also for the non-smooth kernels.
  np.testing.assert_array_equal(np.diagonal(got[:5, :5]), 1.0)


def test_lsh_kernel_with_k_hashes_is_the_kth_power():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((30, 6)).astype(np.float32)
  one = np.asarray(kernels.kernel_matrix(x, x, "lsh", 2.0), np.float64)
  five = kernels.kernel_matrix(x, x, "lsh", 2.0, hashes_per_row=5)
  np.testing.assert_allclose(np.asarray(five), one**5, rtol=1e-5, atol=1e-12)
  np.testing.assert_array_equal(np.diagonal(five), 1.0)
  # Other kernels ignore K.
  np.testing.assert_array_equal(
    kernels.kernel_matrix(x, x, "gaussian", 2.0, hashes_per_row=5),
    kernels.kernel_matrix(x, x, "gaussian", 2.0),
  )


@pytest.mark.parametrize(
  "kernel, hashes_per_row",
  [(k, 1) for k in kernels.KERNELS] + [("lsh", 12)],
)
@pytest.mark.parametrize("value", [0.1, 0.5, None])
def test_default_bandwidth_gives_value_at_median_distance(
  kernel, hashes_per_row, value
):
  rng = np.random.default_rng(2)
  x = rng.standard_normal((300, 5)) * 3.0 + 1.0
  h = kernels.default_bandwidth(
    x, kernel, hashes_per_row=hashes_per_row, median_kernel_value=value
  )
  m = kernels.median_pairwise_distance(
    x, normalize=kernels.normalize_inputs(kernel)
  )
  got = kernels.kernel_from_squared_distances(
    jnp.float32(m * m), kernel, h, hashes_per_row
  )
  if value is None:  # 0.1, and 0.03 for the sharpened LSH kernel
    value = 0.03 if hashes_per_row > 1 else 0.1
    assert value == kernels.default_kernel_value(kernel, hashes_per_row)
  np.testing.assert_allclose(float(got), value, rtol=1e-4)


def test_median_distance_uses_a_seeded_sample():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((3000, 4))
  a = kernels.median_pairwise_distance(x, sample_size=500, seed=7)
  b = kernels.median_pairwise_distance(x, sample_size=500, seed=7)
  full = kernels.median_pairwise_distance(x, sample_size=3000)
  assert a == b
  assert abs(a - full) / full < 0.05


@pytest.mark.parametrize(
  "kernel, bandwidth, match",
  [
    ("epanechnikov", 1.0, "kernel"),
    ("gaussian", 0.0, "bandwidth"),
    ("gaussian", -1.0, "bandwidth"),
    ("lsh", float("nan"), "bandwidth"),
  ],
)
def test_bad_kernel_or_bandwidth_raises(kernel, bandwidth, match):
  with pytest.raises(ValueError, match=match):
    kernels.kernel_matrix(np.ones((2, 3)), np.ones((2, 3)), kernel, bandwidth)


@pytest.mark.parametrize("hashes_per_row", [0, 1.5, True])
def test_bad_hash_count_raises(hashes_per_row):
  with pytest.raises(ValueError, match="hashes_per_row"):
    kernels.kernel_matrix(
      np.ones((2, 3)), np.ones((2, 3)), "lsh", 1.0, hashes_per_row
    )


def test_default_bandwidth_rejects_duplicates_and_tiny_input():
  with pytest.raises(ValueError, match="duplicate"):
    kernels.default_bandwidth(np.ones((10, 3)), "gaussian")
  with pytest.raises(ValueError, match="at least 2"):
    kernels.default_bandwidth(np.ones((1, 3)), "gaussian")
