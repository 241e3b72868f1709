"""Tests for data_efficient.stages.density.sketch (RACE)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_efficient import sharding
from data_efficient.stages.density import exact, kernels, sketch

_N, _D = 2000, 16
# One block size for every call, so chunks of any size share one compile.
_BLOCK = 256


def _clustered(n=_N, d=_D, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((5, d)) * 3.0
  x = centers[rng.integers(0, 5, n)] + rng.standard_normal((n, d))
  return x.astype(np.float32)


_K = sketch.DEFAULT_HASHES_PER_ROW


@pytest.fixture(scope="module", params=[1, _K], ids=lambda k: f"K{k}")
def data(request, mesh):
  """(x, K, default width for K, exact sums of the lsh^K kernel)."""
  k = request.param
  x = _clustered()
  width = kernels.default_bandwidth(x, "lsh", hashes_per_row=k)
  truth = exact.kernel_sums(x, x, "lsh", width, hashes_per_row=k, mesh=mesh)
  return x, k, width, np.asarray(truth, np.float64)


def _row_estimates(s, x):
  """[n, rows] per-row debiased counts; their mean over rows is `scores`."""
  hits = np.take_along_axis(
    np.asarray(s.counts), np.asarray(sketch.bucket_indices(s, x)).T, axis=1
  ).T.astype(np.float64)
  q = 1.0 / s.buckets
  return (hits - q * sketch.num_examples(s)) / (1.0 - q)


def test_scores_are_unbiased_for_the_collision_kernel_sum(data, mesh):
  x, k, width, truth = data
  # Few buckets, so the bucket-collision correction (N/B ~ 8) matters.
  per_row = []
  for seed in range(4):
    s = sketch.init(
      _D, width, rows=1000, buckets=256, hashes_per_row=k, seed=seed
    )
    s = sketch.add(s, x, mesh=mesh, block=_BLOCK)
    rows = _row_estimates(s, x)
    np.testing.assert_allclose(
      rows.mean(1),
      np.asarray(sketch.scores(s, x, mesh=mesh, block=_BLOCK)),
      rtol=1e-5,
    )
    per_row.append(rows)
  per_row = np.concatenate(per_row, axis=1)  # [n, 4000] independent rows
  mean = per_row.mean(1)
  # Rows are i.i.d. given the data, so each point's mean is ~normal with
  # standard error std/sqrt(4000): |z| < 5 for all 2000 points fails by
  # chance with probability ~1e-3 (and the seeds are fixed).
  se = per_row.std(1, ddof=1) / np.sqrt(per_row.shape[1])
  z = (mean - truth) / se
  rel = (mean - truth) / truth
  print(f"max |z| {np.abs(z).max():.2f}, mean rel err {rel.mean():+.4f}")
  assert np.abs(z).max() < 5.0
  assert np.abs(rel).max() < 0.05
  # Without the correction the bias is visible: about +N/B.
  raw = sketch.scores(s, x, debias=False, mesh=mesh, block=_BLOCK)
  debiased = sketch.scores(s, x, mesh=mesh, block=_BLOCK)
  raw, debiased = np.asarray(raw, np.float64), np.asarray(debiased, np.float64)
  assert np.all(raw > debiased)
  np.testing.assert_allclose(
    raw, debiased * (1 - 1 / 256) + _N / 256, rtol=1e-5
  )


def test_error_shrinks_as_one_over_sqrt_rows(data, mesh):
  x, k, width, truth = data

  def rms_rel_error(rows):
    errs = []
    for seed in range(3):
      s = sketch.init(
        _D, width, rows=rows, buckets=4096, hashes_per_row=k, seed=10 + seed
      )
      s = sketch.add(s, x, mesh=mesh, block=_BLOCK)
      est = sketch.scores(s, x, mesh=mesh, block=_BLOCK)
      est = np.asarray(est, np.float64)
      errs.append(np.mean(((est - truth) / truth) ** 2))
    return np.sqrt(np.mean(errs))

  small, large = rms_rel_error(50), rms_rel_error(800)
  print(f"rms relative error: R=50 {small:.4f}, R=800 {large:.4f}")
  # 1/sqrt(R) predicts a ratio of sqrt(800/50) = 4.
  assert 2.5 < small / large < 6.0


def test_merge_and_chunks_equal_whole(data, mesh):
  x, k, width, _ = data
  empty = sketch.init(_D, width, rows=64, buckets=512, hashes_per_row=k, seed=3)

  def add(s, chunk):
    return sketch.add(s, chunk, mesh=mesh, block=_BLOCK)

  whole = add(empty, x)
  halves = sketch.merge(add(empty, x[:777]), add(empty, x[777:]))
  chained = add(add(empty, x[:1500]), x[1500:])
  for other in (halves, chained):
    np.testing.assert_array_equal(np.asarray(other.counts), whole.counts)
  assert sketch.num_examples(whole) == _N
  np.testing.assert_array_equal(np.asarray(whole.counts).sum(1), _N)


def test_identical_on_one_and_eight_devices(data):
  x, k, width, _ = data
  assert len(jax.devices()) == 8
  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices=devices)
    s = sketch.init(_D, width, rows=128, buckets=1024, hashes_per_row=k, seed=5)
    s = sketch.add(s, x[:1234], mesh=mesh, block=128)
    out.append(
      (
        np.asarray(s.counts),
        np.asarray(sketch.scores(s, x, mesh=mesh, block=128)),
      )
    )
  np.testing.assert_array_equal(out[0][0], out[1][0])
  np.testing.assert_array_equal(out[0][1], out[1][1])


def test_hash_parameters_depend_on_seed_and_row_only():
  a = sketch.init(8, 0.5, rows=10, buckets=64, seed=1)
  b = sketch.init(8, 0.5, rows=30, buckets=64, seed=1)
  c = sketch.init(8, 0.5, rows=10, buckets=64, seed=2)
  assert a.projections.shape == (8, _K, 10) and a.hashes_per_row == _K
  np.testing.assert_array_equal(a.projections, b.projections[..., :10])
  np.testing.assert_array_equal(a.offsets, b.offsets[:, :10])
  np.testing.assert_array_equal(a.salts, b.salts[:10])
  assert not np.array_equal(a.projections, c.projections)
  assert np.all((a.offsets >= 0) & (a.offsets < 0.5))


def _reference_buckets(s, x):
  """[n, rows] buckets by the module docstring's recipe, in NumPy."""
  a = np.asarray(s.projections, np.float64)  # [d, K, rows]
  b = np.asarray(s.offsets, np.float64)  # [K, rows]
  h = np.floor(
    (np.einsum("dkr,nd->krn", a, x) + b[:, :, None]) / s.width
  ).astype(np.int64)
  v = np.broadcast_to(np.asarray(s.salts, np.uint64)[:, None], h.shape[1:])
  for hk in h:  # v_k = murmur3_fmix32(v_{k-1} ^ h_k), 32-bit
    v = v ^ (hk.astype(np.uint64) & 0xFFFFFFFF)
    v ^= v >> 16
    v = (v * 0x85EBCA6B) & 0xFFFFFFFF
    v ^= v >> 13
    v = (v * 0xC2B2AE35) & 0xFFFFFFFF
    v ^= v >> 16
  return ((v * s.buckets) >> 32).T  # floor(v B / 2^32)


@pytest.mark.parametrize("hashes_per_row", [1, 3])
def test_buckets_follow_the_documented_recipe(hashes_per_row):
  x = _clustered(n=300, d=8)
  s = sketch.init(
    8, 0.4, rows=24, buckets=1000, hashes_per_row=hashes_per_row, seed=2
  )
  # a.x / w in float64 and in float32 differ near a bucket edge: compare
  # the examples whose projections are not within 1e-4 of one.
  a = np.asarray(s.projections, np.float64)
  frac = np.einsum("dkr,nd->krn", a, x) + np.asarray(s.offsets)[..., None]
  frac = frac / s.width % 1.0
  clear = np.all((frac > 1e-4) & (frac < 1 - 1e-4), axis=(0, 1))
  assert clear.mean() > 0.5
  got = np.asarray(sketch.bucket_indices(s, x))
  np.testing.assert_array_equal(got[clear], _reference_buckets(s, x)[clear])


def test_one_hash_per_row_is_the_single_hash_sketch():
  """K = 1 draws the parameters the sketch had before K existed: row r's
  from split(fold_in(key(seed), r), 3), so old sketches keep their counts."""
  one = sketch.init(8, 0.5, rows=10, buckets=64, hashes_per_row=1, seed=1)
  assert one.projections.shape == (8, 1, 10) and one.offsets.shape == (1, 10)
  key = jax.random.fold_in(jax.random.key(1), 4)  # row 4
  k_a, k_b, k_s = jax.random.split(key, 3)
  np.testing.assert_array_equal(
    one.projections[:, 0, 4], jax.random.normal(k_a, (8,), jnp.float32)
  )
  np.testing.assert_allclose(
    one.offsets[0, 4], 0.5 * jax.random.uniform(k_b, (), jnp.float32)
  )
  assert one.salts[4] == jax.random.bits(k_s, (), jnp.uint32)


def test_buckets_in_range_and_spread():
  x = _clustered(n=3000, d=8)
  s = sketch.init(8, 0.05, rows=16, buckets=1000, seed=0)
  bk = np.asarray(sketch.bucket_indices(s, x))
  assert bk.shape == (3000, 16) and bk.min() >= 0 and bk.max() < 1000
  # A narrow width gives many distinct hash values, hence many buckets.
  assert np.mean([len(np.unique(bk[:, r])) for r in range(16)]) > 300


def test_merge_rejects_different_parameters():
  a = sketch.init(8, 0.5, rows=10, buckets=64, seed=1)
  with pytest.raises(ValueError, match="hash parameters"):
    sketch.merge(a, sketch.init(8, 0.5, rows=10, buckets=64, seed=2))
  with pytest.raises(ValueError, match="hash parameters"):
    sketch.merge(a, sketch.init(8, 0.6, rows=10, buckets=64, seed=1))
  with pytest.raises(ValueError, match="hash parameters"):
    sketch.merge(
      a, sketch.init(8, 0.5, rows=10, buckets=64, hashes_per_row=2, seed=1)
    )
  with pytest.raises(ValueError, match="at least one"):
    sketch.merge()


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"buckets": 1 << 17}, "buckets"),
    ({"buckets": 1}, "buckets"),
    ({"rows": 0}, "rows"),
    ({"hashes_per_row": 0}, "hashes_per_row"),
    ({"width": 0.0}, "width"),
    ({"width": float("inf")}, "width"),
  ],
)
def test_init_rejects_bad_sizes(kwargs, match):
  args = {"dim": 4, "width": 1.0} | kwargs
  with pytest.raises(ValueError, match=match):
    sketch.init(**args)


def test_bad_embeddings_raise(mesh):
  s = sketch.init(4, 1.0, rows=4, buckets=16)
  with pytest.raises(ValueError, match=r"\[n, 4\]"):
    sketch.add(s, np.ones((3, 5), np.float32), mesh=mesh)
  bad = np.ones((3, 4), np.float32)
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match="row 2"):
    sketch.scores(s, bad, mesh=mesh)
  assert sketch.add(s, np.ones((0, 4)), mesh=mesh) is s
  assert sketch.scores(s, jnp.ones((0, 4)), mesh=mesh).shape == (0,)
