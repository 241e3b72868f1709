"""Tests of the SemDeDup and SSL-prototype baselines and their stage."""

import jax
import numpy as np
import pyarrow as pa
import pytest

from data_efficient import sharding
from data_efficient.io import dealing, embeddings, results
from data_efficient.stages import cluster, configs, select
from data_efficient.stages.cluster import baselines, kmeans


def unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def mesh(devices):
  return sharding.make_mesh(devices=jax.devices()[:devices])


def corpus(n_base=400, n_dup=120, d=24, seed=0):
  """Unit vectors around 8 topics, plus near-copies of some (cos > 0.999)."""
  rng = np.random.default_rng(seed)
  topics = unit(rng.normal(size=(8, d)))
  base = unit(topics[rng.integers(0, 8, n_base)] + 0.5 * rng.normal(size=(n_base, d)) / np.sqrt(d) * 4)  # fmt: skip
  copies = rng.choice(n_base, n_dup, replace=False)
  dups = unit(base[copies] + 1e-3 * rng.normal(size=(n_dup, d)))
  x = np.concatenate([base, dups]).astype(np.float32)
  return x, copies


def reference_semdedup(x, clusters, distances):
  """The SemDeDup reference: per cluster, sort farthest first, then the
  column max of the strictly upper-triangular similarity matrix."""
  x = unit(x.astype(np.float64))
  ids = np.asarray([str(i) for i in range(len(x))])
  out = np.full(len(x), np.nan)
  for c in np.unique(clusters):
    members = np.flatnonzero(clusters == c)
    order = members[np.lexsort((ids[members], -distances[members]))]
    sims = np.triu(x[order] @ x[order].T, k=1)
    sims[np.tril_indices(len(order))] = -np.inf
    best = sims.max(axis=0)
    out[order] = np.where(np.isneginf(best), -1.0, best)
  return out


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("n", [1, 5, 70, 300])
def test_max_earlier_similarity_matches_a_naive_triangle(devices, n):
  x = unit(np.random.default_rng(n).normal(size=(n, 12))).astype(np.float32)
  got = baselines.max_earlier_similarity(x, mesh(devices))
  sims = x.astype(np.float64) @ x.T.astype(np.float64)
  want = [-1.0] + [sims[:j, j].max() for j in range(1, n)]
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_semdedup_matches_the_reference_and_finds_the_copies(tmp_path):
  x, copies = corpus()
  path = str(tmp_path / "x.npy")
  np.save(path, x)
  config = configs.KMeansConfig(clusters=8, iterations=4, seed=1)
  scores = baselines.cluster_scores(
    path, "semdedup", config, mesh(8), eps=0.01, batch_rows=128
  )
  want = reference_semdedup(x, scores.clusters, scores.distances)
  np.testing.assert_allclose(scores.similarities, want, atol=1e-5)
  keep = scores.columns(0, len(x))["semdedup_keep"]
  # Each copy and its original form one pair: exactly one of them goes,
  # and it is the one nearer the centroid.
  n_base = len(x) - len(copies)
  for j, i in enumerate(copies):
    pair = [i, n_base + j]
    assert keep[pair].sum() == 1
    assert scores.clusters[pair[0]] == scores.clusters[pair[1]]
    kept = pair[int(np.argmax(keep[pair]))]
    assert scores.distances[kept] == scores.distances[pair].max()
  assert keep.sum() == n_base  # the base points are not near each other
  summary = scores.summary()
  assert summary["num_removed"] == len(copies)
  assert summary["threshold"] == pytest.approx(0.99)


def test_semdedup_in_small_groups_equals_one_group(tmp_path):
  x, _ = corpus(seed=2)
  path = str(tmp_path / "x.npy")
  np.save(path, x)
  config = configs.KMeansConfig(clusters=8, iterations=2)
  result = kmeans.fit(path, config, mesh(8), batch_rows=100)
  clusters, distances = [
    np.concatenate(a)
    for a in zip(
      *[(c, d) for *_, c, d in kmeans.assign(path, result.centroids, mesh(8))],
      strict=True,
    )
  ]  # fmt: skip
  one = baselines.semdedup_similarities(
    path, clusters, distances, 8, mesh(8), group_rows=10**9
  )
  many = baselines.semdedup_similarities(
    path, clusters, distances, 8, mesh(1), group_rows=50, batch_rows=64
  )
  assert len(baselines.cluster_groups(np.bincount(clusters), 50)) == 8
  np.testing.assert_allclose(one, many, atol=1e-6)


def _clustered(path, k=8):
  """(clusters, distances) of `path` after two k-means iterations."""
  config = configs.KMeansConfig(clusters=k, iterations=2)
  result = kmeans.fit(path, config, mesh(2), batch_rows=100)
  parts = list(kmeans.assign(path, result.centroids, mesh(2)))
  return (np.concatenate([p[2] for p in parts]),
          np.concatenate([p[3] for p in parts]))  # fmt: skip


def test_float16_embeddings_are_dealt_as_float16_with_the_same_scores(
  tmp_path, monkeypatch
):
  x = corpus(seed=5)[0].astype(np.float16)
  stored = tmp_path / "e"
  writer = results.ResultWriter(str(stored), embeddings.schema(24, "float16"),
                                rows_per_shard=200,
                                run_config={"stage": "embed"})  # fmt: skip
  writer.write({"id": [str(i) for i in range(len(x))],
                "problem": [None] * len(x),
                "n_tokens": np.ones(len(x), np.int32),
                "truncated": np.zeros(len(x), bool),
                "embedding": x})  # fmt: skip
  writer.close()
  results.write_manifest(str(stored), {"stage": "embed"})
  wide = str(tmp_path / "x.npy")
  np.save(wide, x.astype(np.float32))
  assert embeddings.stored_dtype(str(stored)) == np.float16
  assert embeddings.stored_dtype(wide) == np.float32
  clusters, distances = _clustered(wide)
  dealt = []
  original = dealing.deal
  monkeypatch.setattr(dealing, "deal", lambda b, schema, *a: dealt.append(
    schema.field("vector").type.value_type) or original(b, schema, *a))  # fmt: skip
  got = [
    baselines.semdedup_similarities(
      p, clusters, distances, 8, mesh(2), group_rows=100, batch_rows=64
    )
    for p in (str(stored), wide)
  ]
  assert dealt == [pa.float16(), pa.float32()]
  np.testing.assert_array_equal(got[0].view(np.int32), got[1].view(np.int32))
  # Vectors that the stored dtype cannot hold are refused, not rounded.
  monkeypatch.setattr(embeddings, "stored_dtype", lambda _: np.dtype("float16"))
  np.save(wide, x.astype(np.float32) + np.float32(1e-4))
  with pytest.raises(ValueError, match=r"x.npy: rows 0..64 are not float16"):
    baselines.semdedup_similarities(
      wide, clusters, distances, 8, mesh(2), group_rows=100, batch_rows=64
    )


def test_semdedup_scratch_is_cleared_first_and_removed(tmp_path):
  x, _ = corpus(seed=6)
  path = str(tmp_path / "x.npy")
  np.save(path, x)
  want = results.read_results(run_cluster(tmp_path, path, "semdedup"))
  # A killed run's leftovers: a group file of junk.
  stale = tmp_path / "again" / "semdedup.scratch"
  stale.mkdir(parents=True)
  (stale / "group-000000-00000.arrow").write_bytes(b"junk")
  out = run_cluster(tmp_path / "again", path, "semdedup", group_rows=100)
  assert out + ".scratch" == str(stale) and not stale.exists()
  assert results.read_results(out).equals(want)


def test_cluster_groups_hold_whole_clusters_within_the_budget():
  groups = baselines.cluster_groups(np.array([3, 4, 10, 1, 1, 2]), 8)
  assert [g.tolist() for g in groups] == [[0, 1], [2], [3, 4, 5]]


def run_cluster(tmp_path, path, method, seed=0, **settings):
  """The cluster stage (k = 8, 3 iterations) into tmp_path / method."""
  out = str(tmp_path / method)
  manifest = cluster.cluster(
    configs.ClusterConfig(
      method=method,
      kmeans=configs.KMeansConfig(clusters=8, iterations=3, seed=seed),
      embeddings=path,
      output=out,
      batch_rows=128,
      progress=False,
      **settings,
    )
  )
  assert manifest == results.read_manifest(out)
  return out


def select_ids(output, scores_dir, sampler, k):
  config = configs.SelectConfig(
    scores=(scores_dir,), sampler=sampler, k=k, output=str(output)
  )
  select.select(config)
  return results.read_results(output).column("id").to_pylist()


def test_semdedup_stage_and_select_keep_the_non_duplicates(tmp_path):
  x, copies = corpus(seed=3)
  path = str(tmp_path / "x.npy")
  np.save(path, x)
  out = run_cluster(tmp_path, path, "semdedup", eps=0.01)
  manifest = results.read_manifest(out)
  assert manifest["stage"] == "semdedup"
  assert manifest["run_config"]["kmeans"]["clusters"] == 8
  assert manifest["run_config"]["eps"] == 0.01
  assert manifest["clustering"]["num_removed"] == len(copies)
  table = results.read_results(out)
  keep = np.asarray(table.column("semdedup_keep").to_pylist())
  ids = np.asarray(table.column("id").to_pylist())
  sel = tmp_path / "sel"
  rate = keep.mean()
  selection = select.select(
    configs.SelectConfig(
      scores=(out,), sampler="semdedup", rate=float(rate), output=str(sel)
    )
  )
  assert selection == results.read_manifest(sel)
  chosen = results.read_results(sel).column("id").to_pylist()
  assert chosen == sorted(ids[keep])
  # A lower rate drops the most duplicated of the kept ones first.
  sims = table.column("semdedup_similarity").to_numpy()
  fewer = select_ids(tmp_path / "fewer", out, "semdedup", k=10)
  assert set(fewer) == set(ids[np.argsort(sims, kind="stable")[:10]])


def test_prototypes_stage_keeps_the_farthest_from_their_centroid(tmp_path):
  x, _ = corpus(seed=4)
  path = str(tmp_path / "x.npy")
  np.save(path, x)
  out = run_cluster(tmp_path, path, "prototypes", seed=5)
  manifest = results.read_manifest(out)
  assert manifest["stage"] == "prototypes" and "semdedup" not in str(
    manifest["run_config"]
  )
  assert manifest["run_config"]["kmeans"]["seed"] == 5
  table = results.read_results(out)
  assert "semdedup_keep" not in table.column_names
  dist = table.column("centroid_distance").to_numpy()
  config = configs.KMeansConfig(clusters=8, iterations=3, seed=5)
  centroids = kmeans.fit(path, config, mesh(8), batch_rows=128).centroids
  cos = unit(x.astype(np.float64)) @ centroids.T.astype(np.float64)
  np.testing.assert_allclose(dist, 1 - cos.max(1), atol=1e-5)
  np.testing.assert_array_equal(
    table.column("cluster").to_numpy(), cos.argmax(1)
  )
  ids = np.asarray(table.column("id").to_pylist())
  chosen = select_ids(tmp_path / "sel", out, "prototypes", k=25)
  assert set(chosen) == set(ids[np.argsort(-dist, kind="stable")[:25]])
  with pytest.raises(
    ValueError,
    match="needs semdedup scores .data-efficient cluster --method semdedup",
  ):
    select_ids(tmp_path / "bad", out, "semdedup", k=1)


def test_bad_settings_are_clear_errors(tmp_path):
  path = str(tmp_path / "x.npy")
  np.save(path, corpus()[0])
  config = configs.KMeansConfig(clusters=2, iterations=1)
  with pytest.raises(ValueError, match="method="):
    baselines.cluster_scores(path, "dedup", config, mesh(1))
  with pytest.raises(ValueError, match="eps="):
    baselines.cluster_scores(path, "semdedup", config, mesh(1), eps=3.0)
