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


@pytest.fixture(scope="module")
def data(mesh):
  x = _clustered()
  width = kernels.default_bandwidth(x, "lsh")
  truth = np.asarray(
    exact.kernel_sums(x, x, "lsh", width, mesh=mesh), np.float64
  )
  return x, width, truth


def _row_estimates(s, x):
  """[n, rows] per-row debiased counts; their mean over rows is `scores`."""
  hits = np.take_along_axis(
    np.asarray(s.counts), np.asarray(sketch.bucket_indices(s, x)).T, axis=1
  ).T.astype(np.float64)
  q = 1.0 / s.buckets
  return (hits - q * sketch.num_examples(s)) / (1.0 - q)


def test_scores_are_unbiased_for_the_collision_kernel_sum(data, mesh):
  x, width, truth = data
  # Few buckets, so the bucket-collision correction (N/B ~ 8) matters.
  per_row = []
  for seed in range(4):
    s = sketch.init(_D, width, rows=1000, buckets=256, seed=seed)
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
  x, width, truth = data

  def rms_rel_error(rows):
    errs = []
    for seed in range(3):
      s = sketch.init(_D, width, rows=rows, buckets=4096, seed=10 + seed)
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
  x, width, _ = data
  empty = sketch.init(_D, width, rows=64, buckets=512, seed=3)

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
  x, width, _ = data
  assert len(jax.devices()) == 8
  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices=devices)
    s = sketch.init(_D, width, rows=128, buckets=1024, seed=5)
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
  np.testing.assert_array_equal(a.projections, b.projections[:, :10])
  np.testing.assert_array_equal(a.offsets, b.offsets[:10])
  np.testing.assert_array_equal(a.salts, b.salts[:10])
  assert not np.array_equal(a.projections, c.projections)
  assert np.all((a.offsets >= 0) & (a.offsets < 0.5))


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
  with pytest.raises(ValueError, match="at least one"):
    sketch.merge()


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"buckets": 1 << 17}, "buckets"),
    ({"buckets": 1}, "buckets"),
    ({"rows": 0}, "rows"),
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
