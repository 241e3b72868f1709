"""Tests for data_efficient.stages.density.exact."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.neighbors import KernelDensity

from data_efficient import sharding
from data_efficient.stages.density import exact, kernels


def _naive_sums(queries, keys, kernel, h, hashes_per_row=1):
  """The definition, one pair at a time, in float64."""
  queries = np.asarray(queries, np.float64)
  keys = np.asarray(keys, np.float64)
  out = np.zeros(len(queries))
  for i, q in enumerate(queries):
    for x in keys:
      c = math.sqrt(float(np.sum((q - x) ** 2)))
      if kernel == "gaussian":
        k = math.exp(-c * c / (2 * h * h))
      elif kernel == "laplacian":
        k = math.exp(-c / h)
      elif kernel == "cosine":
        cos = float(q @ x) / (np.linalg.norm(q) * np.linalg.norm(x))
        k = math.exp((cos - 1.0) / h)
      elif c == 0.0:
        k = 1.0
      else:
        t = h / c
        k = (
          1.0
          - math.erfc(t / math.sqrt(2.0))
          - 2.0 / (math.sqrt(2.0 * math.pi) * t) * (1 - math.exp(-t * t / 2))
        ) ** hashes_per_row
      out[i] += k
  return out


def _data(n, d, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((4, d)) * 2.0
  x = centers[rng.integers(0, 4, n)] + rng.standard_normal((n, d))
  return x.astype(np.float32)


@pytest.mark.parametrize("kernel", kernels.KERNELS)
def test_matches_naive_double_loop(kernel, mesh):
  keys = _data(90, 7)
  # Queries include keys (self terms) and points that are not keys.
  queries = np.concatenate([keys[:20], _data(43, 7, seed=1)])
  h = kernels.default_bandwidth(keys, kernel)
  got = exact.kernel_sums(
    queries, keys, kernel, h, mesh=mesh, query_block=16, key_block=24
  )
  want = _naive_sums(queries, keys, kernel, h)
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5)


def test_lsh_with_k_hashes_matches_naive_double_loop(mesh):
  keys = _data(90, 7)
  queries = np.concatenate([keys[:20], _data(43, 7, seed=1)])
  w = kernels.default_bandwidth(keys, "lsh", hashes_per_row=4)
  got = exact.kernel_sums(
    queries,
    keys,
    "lsh",
    w,
    hashes_per_row=4,
    mesh=mesh,
    query_block=16,
    key_block=24,
  )
  want = _naive_sums(queries, keys, "lsh", w, hashes_per_row=4)
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5)


@pytest.mark.parametrize("kernel", kernels.KERNELS)
@pytest.mark.parametrize("blocks", [(64, 128), (8, 1000), (1000, 8)])
def test_self_sums_match_float64_on_unit_vectors(kernel, blocks, mesh):
  x = _data(1003, 32, seed=2)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  h = kernels.default_bandwidth(x, kernel)
  got = exact.kernel_sums(
    x, x, kernel, h, mesh=mesh, query_block=blocks[0], key_block=blocks[1]
  )
  want = kernels.kernel_matrix(
    jnp.asarray(x, jnp.float32), x, kernel, h
  )  # float32 one-tile version, checked against float64 in kernels_test.
  ref64 = np.asarray(
    [_naive_row(x[i], x, kernel, h) for i in range(0, 1003, 97)]
  )
  np.testing.assert_allclose(np.asarray(got)[::97], ref64, rtol=1e-5)
  np.testing.assert_allclose(
    np.asarray(got), np.asarray(want).sum(1), rtol=1e-5
  )


def _naive_row(q, keys, kernel, h):
  keys = np.asarray(keys, np.float64)
  q = np.asarray(q, np.float64)
  if kernel == "cosine":
    cos = keys @ q / (np.linalg.norm(keys, axis=1) * np.linalg.norm(q))
    return np.exp((cos - 1) / h).sum()
  c = np.sqrt(((keys - q) ** 2).sum(1))
  if kernel == "gaussian":
    return np.exp(-(c**2) / (2 * h * h)).sum()
  if kernel == "laplacian":
    return np.exp(-c / h).sum()
  with np.errstate(divide="ignore", invalid="ignore"):
    t = h / c
    p = (
      1
      - np.vectorize(math.erfc)(t / math.sqrt(2))
      - 2 / (math.sqrt(2 * math.pi) * t) * (1 - np.exp(-t * t / 2))
    )
  return np.where(c == 0, 1.0, p).sum()


def test_gaussian_matches_scikit_learn_kernel_density(mesh):
  keys = _data(500, 8, seed=3).astype(np.float64)
  queries = _data(120, 8, seed=4).astype(np.float64)
  h = kernels.default_bandwidth(keys, "gaussian")
  kde = KernelDensity(kernel="gaussian", bandwidth=h, atol=0, rtol=0)
  log_density = kde.fit(keys).score_samples(queries)
  # KernelDensity normalises: density = sum / (N (2 pi h^2)^(d/2)).
  d = keys.shape[1]
  want = np.exp(log_density) * len(keys) * (2 * math.pi * h * h) ** (d / 2)
  got = exact.kernel_sums(queries, keys, "gaussian", h, mesh=mesh, key_block=96)
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5)


@pytest.mark.parametrize("form", exact.FORMS)
@pytest.mark.parametrize("kernel", kernels.KERNELS)
def test_same_result_on_one_and_eight_devices(kernel, form):
  assert len(jax.devices()) == 8
  x = _data(1000, 16, seed=5)
  h = kernels.default_bandwidth(x, kernel)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices=devices)
    sums = exact.kernel_sums(
      x, x[:700], kernel, h, mesh=mesh, query_block=64, key_block=96, form=form
    )
    assert sums.sharding.mesh.size == len(devices)
    results.append(np.asarray(sums))
  np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("kernel", kernels.KERNELS)
def test_both_forms_give_the_same_sums(kernel, mesh):
  x = _data(1003, 32, seed=8)
  h = kernels.default_bandwidth(x, kernel, hashes_per_row=3)
  pipelined, fused = (
    np.asarray(
      exact.kernel_sums(
        x,
        x,
        kernel,
        h,
        hashes_per_row=3,
        mesh=mesh,
        query_block=64,
        key_block=128,
        form=form,
      )
    )
    for form in ("pipelined", "fused")
  )
  # The same tiles added in the same order; only XLA's fusion differs.
  np.testing.assert_allclose(fused, pipelined, rtol=1e-6)


@pytest.fixture
def fresh_form_cache(monkeypatch, tmp_path):
  """No forced form, an empty on-disk cache in tmp_path, none in memory."""
  monkeypatch.delenv(exact.FORM_ENV, raising=False)
  monkeypatch.setenv(exact.CACHE_ENV, str(tmp_path))
  monkeypatch.setattr(exact, "_forms", {})
  return tmp_path / "exact_forms.json"


def test_form_is_measured_once_per_host_and_tile(
  fresh_form_cache, monkeypatch, mesh
):
  measured = []

  def fake_measure(device, query_block, key_block, dim):
    measured.append((query_block, key_block, dim))
    # fused wins on the wider key tile, ties (< 5%) on the other.
    return {"pipelined": 100.0, "fused": 120.0 if key_block > 1024 else 104.0}

  monkeypatch.setattr(exact, "measure_forms", fake_measure)
  choose = functools.partial(exact.choose_form, mesh, 9000, 5000, 8)
  assert choose(key_block=2048) == "fused"
  assert choose(key_block=2048) == "fused"  # in memory
  monkeypatch.setattr(exact, "_forms", {})
  assert choose(key_block=2048) == "fused"  # on disk
  assert measured == [(4096, 2048, 8)]
  assert choose() == "pipelined"  # a near tie keeps the pipelined form
  assert choose(query_block=64) == "pipelined"  # small tiles: no measurement
  assert measured == [(4096, 2048, 8), (4096, 1024, 8)]
  [(key, entry)] = [
    item
    for item in json.loads(fresh_form_cache.read_text()).items()
    if "x2048x" in item[0]
  ]
  assert jax.__version__ in key and mesh.devices.flat[0].platform in key
  assert entry == {
    "form": "fused",
    "gflops": {"pipelined": 100.0, "fused": 120.0},
  }


def test_form_from_the_environment_and_a_real_measurement(
  fresh_form_cache, monkeypatch, mesh
):
  rates = exact.measure_forms(mesh.devices.flat[0], 1024, 1024, 4)
  assert sorted(rates) == sorted(exact.FORMS)
  assert all(rate > 0 for rate in rates.values())
  monkeypatch.setenv(exact.FORM_ENV, "fused")
  assert exact.choose_form(mesh, 10, 10, 4) == "fused"
  monkeypatch.setenv(exact.FORM_ENV, "fastest")
  with pytest.raises(ValueError, match=exact.FORM_ENV):
    exact.choose_form(mesh, 10, 10, 4)
  assert not fresh_form_cache.exists()


def test_model_axis_mesh_matches_data_only_mesh(mesh):
  x = _data(333, 8, seed=6)
  h = kernels.default_bandwidth(x, "gaussian")
  want = np.asarray(exact.kernel_sums(x, x, "gaussian", h, mesh=mesh))
  model_mesh = sharding.make_mesh(model_parallelism=2)
  got = exact.kernel_sums(x, x, "gaussian", h, mesh=model_mesh, query_block=32)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_streaming_key_chunks_add_up(mesh):
  x = _data(900, 8, seed=7)
  h = kernels.default_bandwidth(x, "laplacian")
  whole = exact.kernel_sums(x, x, "laplacian", h, mesh=mesh, key_block=128)
  total = jnp.zeros(len(x))
  for start in range(0, len(x), 250):  # chunks of 250, last one 150
    chunk = x[start : start + 250]
    total += exact.kernel_sums(x, chunk, "laplacian", h, mesh=mesh)
  np.testing.assert_allclose(np.asarray(total), np.asarray(whole), rtol=1e-6)


def test_empty_inputs(mesh):
  x = _data(10, 4)
  assert exact.kernel_sums(x[:0], x, "gaussian", 1.0, mesh=mesh).shape == (0,)
  np.testing.assert_array_equal(
    exact.kernel_sums(x, x[:0], "gaussian", 1.0, mesh=mesh), np.zeros(10)
  )


@pytest.mark.parametrize(
  "queries, keys, kwargs, match",
  [
    (np.ones((4, 3)), np.ones((4, 5)), {}, "d=3"),
    (np.ones(4), np.ones((4, 1)), {}, r"\[n, d\]"),
    (np.ones((4, 3)), np.full((4, 3), np.nan), {}, "NaN"),
    (np.ones((4, 3)), np.ones((4, 3)), {"query_block": 0}, "query_block"),
    (np.ones((4, 3)), np.ones((4, 3)), {"kernel": "box"}, "kernel"),
    (np.ones((4, 3)), np.ones((4, 3)), {"bandwidth": 0.0}, "bandwidth"),
    (np.ones((4, 3)), np.ones((4, 3)), {"form": "fastest"}, "form"),
  ],
)
def test_bad_input_raises(queries, keys, kwargs, match, mesh):
  args = {"kernel": "gaussian", "bandwidth": 1.0} | kwargs
  with pytest.raises(ValueError, match=match):
    exact.kernel_sums(queries, keys, mesh=mesh, **args)
