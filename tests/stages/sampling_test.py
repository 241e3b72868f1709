"""Tests for data_efficient.stages.sampling."""

import numpy as np
import pytest
from scipy import stats

from data_efficient.stages import sampling
from data_efficient.stages.density import exact, kernels


def _ids(n):
  return np.array([f"doc-{i:05d}" for i in range(n)])


def test_k1_frequencies_follow_inverse_scores():
  ids = _ids(8)
  scores = np.array([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 0.5])
  seeds = 6000
  picked = [
    sampling.inverse_propensity_sample(ids, scores, 1, s)[0]
    for s in range(seeds)
  ]
  counts = np.array([picked.count(i) for i in ids])
  expected = (1 / scores) / (1 / scores).sum() * seeds
  p_value = stats.chisquare(counts, expected).pvalue
  print(f"chi-square p = {p_value:.3f}")
  assert p_value > 1e-3


def test_k2_inclusion_is_sequential_without_replacement():
  ids = _ids(5)
  scores = np.array([1.0, 1.0, 2.0, 5.0, 10.0])
  w = (1 / scores) / (1 / scores).sum()
  # P(i in sample) = w_i + sum_{j != i} w_j w_i / (1 - w_j).
  incl = np.array(
    [
      w[i] + sum(w[j] * w[i] / (1 - w[j]) for j in range(5) if j != i)
      for i in range(5)
    ]
  )
  seeds = 4000
  hits = np.zeros(5)
  for s in range(seeds):
    chosen = sampling.inverse_propensity_sample(ids, scores, 2, s)
    assert len(chosen) == 2 and len(set(chosen)) == 2
    hits += np.isin(ids, chosen)
  z = (hits / seeds - incl) / np.sqrt(incl * (1 - incl) / seeds)
  assert np.abs(z).max() < 4.5, z


def _proportions(selected, cluster_of):
  labels = np.array([cluster_of[i] for i in selected])
  return np.bincount(labels, minlength=3) / len(labels)


def test_ips_sample_balances_clusters(mesh):
  rng = np.random.default_rng(0)
  sizes = [1800, 180, 20]  # 90% / 9% / 1%
  centers = rng.standard_normal((3, 8)) * 20.0
  labels = np.repeat(np.arange(3), sizes)
  x = (centers[labels] + rng.standard_normal((2000, 8))).astype(np.float32)
  h = kernels.default_bandwidth(x, "gaussian")
  density = np.asarray(exact.kernel_sums(x, x, "gaussian", h, mesh=mesh))
  ids = _ids(2000)
  cluster_of = dict(zip(ids, labels, strict=True))
  k = sampling.rate_to_k(0.1, len(ids))
  ips = _proportions(
    sampling.inverse_propensity_sample(ids, density, k, seed=0), cluster_of
  )
  rand = _proportions(sampling.uniform_sample(ids, k, seed=0), cluster_of)
  uniform = np.full(3, 1 / 3)
  tv_ips = 0.5 * np.abs(ips - uniform).sum()
  tv_rand = 0.5 * np.abs(rand - uniform).sum()
  print(
    f"cluster shares (90/9/1% of data), 10% sample: IPS "
    f"{np.round(ips, 3)} TV to uniform {tv_ips:.3f}; random "
    f"{np.round(rand, 3)} TV {tv_rand:.3f}"
  )
  assert tv_ips < 0.5 * tv_rand
  assert ips[2] >= 5 * max(rand[2], 0.01)


@pytest.mark.parametrize(
  "sample",
  [
    lambda i, s: sampling.inverse_propensity_sample(i, s, 37, seed=3),
    lambda i, s: sampling.uniform_sample(i, 37, seed=3),
    lambda i, s: sampling.top_k(i, s, 37),
    lambda i, s: sampling.bottom_k(i, s, 37),
  ],
  ids=["ips", "uniform", "top_k", "bottom_k"],
)
def test_selection_ignores_input_order(sample):
  rng = np.random.default_rng(1)
  ids = _ids(300)
  scores = rng.integers(1, 20, 300).astype(float)  # many ties
  want = sample(ids, scores)
  perm = rng.permutation(300)
  got = sample(ids[perm], scores[perm])
  np.testing.assert_array_equal(got, want)
  assert len(want) == 37 and np.all(want[:-1] < want[1:])


def test_shard_wise_selection_equals_global():
  ids = _ids(1000)
  scores = np.random.default_rng(2).uniform(0.5, 5.0, 1000)
  want = sampling.inverse_propensity_sample(ids, scores, 50, seed=9)
  keys = sampling.inverse_propensity_keys(ids, scores, seed=9)
  best = []
  for shard in np.array_split(np.arange(1000), 7):
    best += list(zip(keys[shard], ids[shard], strict=True))
  best.sort(key=lambda kv: (-kv[0], kv[1]))
  np.testing.assert_array_equal(np.sort([i for _, i in best[:50]]), want)


def test_ties_are_broken_by_id():
  ids = np.array(["c", "a", "d", "b"])
  scores = np.array([1.0, 1.0, 1.0, 2.0])
  np.testing.assert_array_equal(sampling.top_k(ids, scores, 2), ["a", "b"])
  np.testing.assert_array_equal(sampling.bottom_k(ids, scores, 2), ["a", "c"])
  np.testing.assert_array_equal(sampling.top_k(ids, scores, 4), sorted(ids))
  assert sampling.top_k(ids, scores, 0).shape == (0,)


def test_id_uniforms_are_uniform_and_keyed_by_id():
  ids = _ids(5000)
  u = sampling.id_uniforms(ids, seed=0)
  assert np.all((u > 0) & (u < 1))
  assert stats.kstest(u, "uniform").pvalue > 1e-3
  # Same id, same number, whatever else is in the array (padding width).
  mixed = np.array(["doc-00007", "a-much-longer-identifier-than-the-rest"])
  assert sampling.id_uniforms(mixed, 0)[0] == u[7]
  other = sampling.id_uniforms(ids, seed=1)
  assert abs(np.corrcoef(u, other)[0, 1]) < 0.05
  assert sampling.id_uniforms(["x"], 0) != sampling.id_uniforms(["x "], 0)


@pytest.mark.parametrize(
  "rate, n, k",
  [
    (0.2, 1_000_003, 200_001),
    (0.25, 2, 1),
    (0.0, 5, 0),
    (1.0, 7, 7),
    (0.1, 0, 0),
    (0.15, 10, 2),
  ],
)
def test_rate_to_k(rate, n, k):
  assert sampling.rate_to_k(rate, n) == k


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "0.2"])
def test_rate_to_k_rejects_bad_rates(rate):
  with pytest.raises(ValueError, match="rate"):
    sampling.rate_to_k(rate, 10)


@pytest.mark.parametrize(
  "scores, k, match",
  [
    ([1.0, np.nan, 2.0], 1, "'doc-00001'.*finite"),
    ([1.0, 2.0, np.inf], 1, "'doc-00002'.*finite"),
    ([1.0, 2.0, 3.0], 4, "k=4"),
    ([1.0, 2.0, 3.0], -1, "k=-1"),
    ([1.0, 2.0, 3.0], 1.5, "integer"),
    ([1.0, 0.0, 3.0], 1, "'doc-00001'.*> 0"),
    ([1.0, 2.0, -3.0], 1, "'doc-00002'.*> 0"),
    ([1.0, 2.0], 1, "same shape"),
  ],
)
def test_inverse_propensity_rejects_bad_input(scores, k, match):
  with pytest.raises(ValueError, match=match):
    sampling.inverse_propensity_sample(_ids(3), scores, k, seed=0)


def test_other_samplers_reject_bad_input():
  with pytest.raises(ValueError, match="empty"):
    sampling.top_k([], [], 0)
  with pytest.raises(ValueError, match="empty"):
    sampling.uniform_sample([], 0, seed=0)
  with pytest.raises(ValueError, match="'doc-00000'.*finite"):
    sampling.bottom_k(_ids(2), [np.nan, 1.0], 1)
  with pytest.raises(ValueError, match="strings"):
    sampling.top_k([1, 2], [1.0, 2.0], 1)
  # Zero and negative scores are fine where no 1/score is taken.
  np.testing.assert_array_equal(
    sampling.top_k(_ids(2), [0.0, -1.0], 1), ["doc-00000"]
  )
