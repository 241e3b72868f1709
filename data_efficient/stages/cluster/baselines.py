"""The paper's clustering baselines: SemDeDup and SSL prototypes.

Both cluster the Sentence-T5 embeddings with k-means (`clustering`; the paper
uses 10,000 clusters) and score every example from its cluster:

SemDeDup (Abbas et al. 2023). Within each cluster, members are ordered from
the farthest from the centroid to the nearest (ties by id), and member j's
score is its largest cosine similarity to any member before it:

  semdedup_similarity_j = max_{i before j} cos(x_i, x_j)   (-1 if none)

A member whose score exceeds 1 - eps has a near-duplicate that is more
outlying, so it is removed (`semdedup_keep` false): of each group of
near-duplicates the one farthest from the centroid is kept, as the SemDeDup
reference code does (which also removes a member whose only near-duplicate
was itself removed, a chain; we keep that behaviour). Since the score does
not depend on eps, removing the examples with the highest scores *is*
SemDeDup at the eps that keeps a given fraction: `select --sampler semdedup
--rate r` keeps the r fraction with the lowest scores (ties by id), which are
exactly the `semdedup_keep` ones when r is their share.

SSL prototypes (Sorscher et al. 2022). An example's score is its distance to
the nearest centroid (`centroid_distance`, cosine distance for spherical
k-means); `select --sampler prototypes` keeps the farthest (the hardest),
removing the most prototypical.

Memory. The cluster and distance of every example (and the SemDeDup score)
are held on the host: 12 bytes per example. SemDeDup gathers the embeddings
of a group of whole clusters at a time (at most `group_rows` rows, one pass
over the input per group), and compares each cluster's members on the mesh,
column blocks of the similarity matrix split over the devices.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from data_efficient import sharding
from data_efficient.io import embeddings, paths
from data_efficient.io import scores as scores_lib
from data_efficient.runs import driver
from data_efficient.stages import configs
from data_efficient.stages.cluster import kmeans

SEMDEDUP, PROTOTYPES = configs.SEMDEDUP, configs.PROTOTYPES
METHODS = configs.CLUSTER_METHODS
# Score columns, by method (what `select` ranks by).
SCORE_COLUMNS = {m: scores_lib.PRODUCERS[m][0] for m in METHODS}
DEFAULT_EPS = configs.default(configs.ClusterConfig, "eps")
DEFAULT_GROUP_ROWS = configs.default(configs.ClusterConfig, "group_rows")
# Subdirectory of a `cluster` output directory holding k-means checkpoints.
KMEANS_CHECKPOINTS = "kmeans_checkpoints"
# Elements of one [rows, block] similarity tile per device (16 MB).
_TILE_ELEMENTS = 1 << 22
_MAX_BLOCK = 512
_HIGHEST = jax.lax.Precision.HIGHEST


def schema(method: str):
  """Row schema of a `cluster` output directory for `method`."""
  import pyarrow as pa

  fields = [
    ("id", pa.string()),
    ("problem", pa.string()),
    ("cluster", pa.int32()),
    ("centroid_distance", pa.float32()),
  ]
  if method == SEMDEDUP:
    fields += [("semdedup_similarity", pa.float32()), ("semdedup_keep", pa.bool_())]  # fmt: skip
  return pa.schema(fields)


# ---------------------------------------------------------------------------
# SemDeDup within one cluster.


def semdedup_order(ids, distances) -> np.ndarray:
  """Permutation: farthest from the centroid first, ties by smaller id."""
  return np.lexsort((np.asarray(ids, object), -np.asarray(distances)))


def _next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


@functools.cache
def _max_earlier_fn(mesh: jax.sharding.Mesh, block: int):
  axes = mesh.axis_names

  def per_device(x, cols, col_blocks):
    # x [n, d] every member (replicated); cols [c * block, d] this device's
    # columns; col_blocks [c] their block numbers.
    rows = jnp.arange(x.shape[0])[:, None]
    cols = cols.reshape(-1, block, x.shape[1])  # -> [c, block, d]

    def one(_, inputs):
      xj, jb = inputs
      sims = jnp.dot(x, xj.T, precision=_HIGHEST)  # [n, block]
      cols_j = jb * block + jnp.arange(block)[None, :]
      earlier = jnp.where(rows < cols_j, sims, -jnp.inf)
      return None, jnp.max(earlier, axis=0)

    _, best = jax.lax.scan(one, None, (cols, col_blocks))
    return best.reshape(-1)

  return jax.jit(
    jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=(jax.P(), jax.P(axes), jax.P(axes)),
      out_specs=jax.P(axes),
    )
  )


def max_earlier_similarity(x, mesh: jax.sharding.Mesh) -> np.ndarray:
  """[n, d] unit vectors in order -> [n]: max_{i < j} x_i . x_j (-1 for j=0).

  Column blocks of the similarity matrix are split over the mesh's devices;
  the members are padded to a power of two (zero rows, after the real
  ones, so they are never 'earlier'), which bounds the compilations.
  """
  n = x.shape[0]
  if n == 0:
    return np.zeros((0,), np.float32)
  n_pad = _next_pow2(max(n, 8))
  block = max(8, min(_MAX_BLOCK, _TILE_ELEMENTS // n_pad))
  n_pad = -(-n_pad // (block * mesh.size)) * (block * mesh.size)
  # n <= n_pad: padding to a multiple of n_pad gives exactly n_pad rows.
  cols = sharding.shard_rows(x, mesh, n_pad)
  col_blocks = jax.device_put(
    np.arange(n_pad // block, dtype=np.int32), cols.sharding
  )
  x = jax.device_put(cols, sharding.replicated(mesh))
  best = _max_earlier_fn(mesh, block)(x, cols, col_blocks)
  best = np.asarray(best)[:n]
  return np.where(np.isneginf(best), -1.0, best).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norm, np.finfo(np.float32).tiny)


def cluster_groups(sizes: np.ndarray, group_rows: int) -> list[np.ndarray]:
  """Consecutive clusters, as few as fit in `group_rows` rows per group (a
  bigger cluster is a group of its own)."""
  groups, current, rows = [], [], 0
  for c, size in enumerate(sizes):
    if current and rows + size > group_rows:
      groups.append(np.asarray(current))
      current, rows = [], 0
    current.append(c)
    rows += int(size)
  if current:
    groups.append(np.asarray(current))
  return groups


def semdedup_similarities(
  path: str,
  clusters: np.ndarray,
  distances: np.ndarray,
  num_clusters: int,
  mesh: jax.sharding.Mesh,
  *,
  batch_rows: int = 65_536,
  group_rows: int = DEFAULT_GROUP_ROWS,
  progress: bool = False,
) -> np.ndarray:
  """Every example's SemDeDup score (see the module docstring).

  Args:
    path: The embeddings that were clustered.
    clusters: [N] cluster of each row (input order).
    distances: [N] distance of each row to its centroid.
    num_clusters: k.
    mesh: Devices for the within-cluster similarities.
    batch_rows: Rows read per batch.
    group_rows: Most embeddings held at once (one input pass per group).
    progress: Print one line per group to stderr.

  Returns:
    [N] float32 scores in input order.
  """
  sizes = np.bincount(clusters, minlength=num_clusters)
  scores = np.full(len(clusters), np.nan, np.float32)
  groups = cluster_groups(sizes, group_rows)
  t0 = time.perf_counter()
  for g, group in enumerate(groups):
    in_group = np.zeros(num_clusters, bool)
    in_group[group] = True
    rows, ids, parts = [], [], []
    first = 0
    for batch_ids, _, x in embeddings.iter_embeddings(path, batch_rows):
      mine = np.flatnonzero(in_group[clusters[first : first + len(x)]])
      rows.append(first + mine)
      ids += [batch_ids[i] for i in mine]
      parts.append(_unit(x[mine]))
      first += len(x)
    rows = np.concatenate(rows)
    # Object, not fixed-width: one long url would widen every id of the group.
    ids = np.asarray(ids, object)
    vectors = np.concatenate(parts)
    member_clusters = clusters[rows]
    for c in group:
      members = np.flatnonzero(member_clusters == c)
      if not len(members):
        continue
      order = members[semdedup_order(ids[members], distances[rows[members]])]
      scores[rows[order]] = max_earlier_similarity(vectors[order], mesh)
    if progress:
      print(
        f"semdedup: group {g + 1}/{len(groups)} ({len(rows)} rows, "
        f"{time.perf_counter() - t0:.1f}s)",
        file=sys.stderr,
      )
  return scores


# ---------------------------------------------------------------------------
# The stage.


@dataclasses.dataclass(frozen=True)
class ClusterScores:
  """Per-example results of a clustering baseline, in input order."""

  method: str
  clusters: np.ndarray  # [N] int32
  distances: np.ndarray  # [N] float32
  similarities: np.ndarray | None  # [N] float32 (SemDeDup only)
  eps: float
  kmeans: kmeans.KMeansResult

  def columns(self, start: int, stop: int) -> dict[str, np.ndarray]:
    out = {
      "cluster": self.clusters[start:stop],
      "centroid_distance": self.distances[start:stop],
    }
    if self.similarities is not None:
      sims = self.similarities[start:stop]
      out["semdedup_similarity"] = sims
      out["semdedup_keep"] = sims <= 1.0 - self.eps
    return out

  def summary(self) -> dict:
    """Counts for the manifest."""
    sizes = np.bincount(self.clusters, minlength=len(self.kmeans.centroids))
    out = {
      "num_clusters": len(sizes),
      "empty_clusters": int((sizes == 0).sum()),
      "cluster_size": {
        "min": int(sizes.min()),
        "median": float(np.median(sizes)),
        "max": int(sizes.max()),
      },
      "inertia": self.kmeans.inertia,
    }
    if self.similarities is not None:
      kept = int((self.similarities <= 1.0 - self.eps).sum())
      out.update(
        eps=self.eps,
        threshold=1.0 - self.eps,
        num_kept=kept,
        num_removed=len(self.similarities) - kept,
      )
    return out


def cluster_scores(
  path: str,
  method: str,
  config: configs.KMeansConfig,
  mesh: jax.sharding.Mesh,
  *,
  eps: float = DEFAULT_EPS,
  batch_rows: int = 65_536,
  group_rows: int = DEFAULT_GROUP_ROWS,
  checkpoint_dir: str | None = None,
  checkpoint_every: int = 1,
  progress: bool = False,
) -> ClusterScores:
  """k-means, then the SemDeDup or prototype score of every example.

  Args:
    path: An embed directory or `.npy` matrix.
    method: 'semdedup' or 'prototypes'.
    config: k-means settings.
    mesh: Devices to compute on.
    eps: SemDeDup: near-duplicates have cosine similarity > 1 - eps.
    batch_rows: Rows read per batch.
    group_rows: SemDeDup: most embeddings held at once.
    checkpoint_dir: k-means iteration checkpoints (resumable), or None.
    checkpoint_every: Iterations between k-means checkpoints.
    progress: Print progress to stderr.

  Raises:
    ValueError: on an unknown method or eps outside [0, 2].
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}: use one of {METHODS}.")
  if not 0.0 <= eps <= 2.0:
    raise ValueError(f"eps={eps}: must be in [0, 2] (cosine distance).")
  result = kmeans.fit(
    path,
    config,
    mesh,
    batch_rows=batch_rows,
    checkpoint_dir=checkpoint_dir,
    checkpoint_every=checkpoint_every,
    progress=progress,
  )
  clusters, distances = [], []
  for _, _, c, dist in kmeans.assign(
    path,
    result.centroids,
    mesh,
    spherical=config.spherical,
    batch_rows=batch_rows,
  ):
    clusters.append(c)
    distances.append(dist)
  clusters = np.concatenate(clusters)
  distances = np.concatenate(distances)
  similarities = None
  if method == SEMDEDUP:
    similarities = semdedup_similarities(
      path,
      clusters,
      distances,
      config.clusters,
      mesh,
      batch_rows=batch_rows,
      group_rows=group_rows,
      progress=progress,
    )
  return ClusterScores(method, clusters, distances, similarities, eps, result)


def batches(
  path: str,
  scores: ClusterScores,
  *,
  start: int = 0,
  batch_rows: int = 65_536,
) -> Iterator[dict]:
  """Output rows (schema(method) columns) in input order, from `start`."""
  first = 0
  for ids, problems, x in embeddings.iter_embeddings(path, batch_rows):
    lo, hi = first, first + len(x)
    first = hi
    if hi <= start:
      continue
    skip = max(0, start - lo)
    yield {
      "id": ids[skip:],
      "problem": problems[skip:],
      **scores.columns(lo + skip, hi),
    }


def cluster(config: configs.ClusterConfig) -> dict:
  """The `cluster` stage: k-means, then every embedding's SemDeDup or
  prototype score; the manifest (with the clustering's summary)."""
  from data_efficient import sharding

  method, kmeans_config = config.method, config.kmeans
  scores = None

  def write_rows(writer):
    nonlocal scores
    scores = cluster_scores(
      config.embeddings,
      method,
      kmeans_config,
      sharding.make_mesh(),
      eps=config.eps,
      batch_rows=config.batch_rows,
      group_rows=config.group_rows,
      checkpoint_dir=paths.join(config.output, KMEANS_CHECKPOINTS),
      checkpoint_every=config.checkpoint_every,
      progress=config.progress,
    )
    for batch in batches(
      config.embeddings,
      scores,
      start=writer.rows_done,
      batch_rows=config.batch_rows,
    ):
      writer.write(batch)
    return {
      "stage": method,
      "score_column": SCORE_COLUMNS[method],
      "clustering": scores.summary(),
      "embeddings_manifest": driver.input_manifest(config.embeddings),
    }

  return driver.reduce(
    config.output,
    config.run_config(),
    schema(method),
    config.batch_rows,
    write_rows,
  )
