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

Memory, and many processes. Each process holds the cluster, distance and
SemDeDup score of the rows of its share (`embeddings.share`) on the host,
12 bytes per row (all N rows in one process), and writes those rows.
SemDeDup compares the members of a group of whole clusters at a time (at
most `group_rows` rows), on the process's devices, column blocks of the
similarity matrix split over them. A cluster's members are spread over the
whole input, so each process first deals its share, in one pass, into a
file per group (`io.dealing`: row, cluster, distance, id and embedding, in
the input's float16 or float32, about the input's size in all, on the job's
shared scratch directory beside the output). The groups go to the
processes in turn (group g to process g % P), and each reads its groups'
files, of every process: every embedding is read twice and written once,
whatever the number of groups. Scores of rows in other processes' shares
wait as (row, score) pairs (8 bytes each, about N/P rows) and go back at
the end, one `sharding.process_sum` per share of a share-sized int32 vector
(the scores' bit patterns: exact). At C4's 3.65e8 rows on 64 hosts that is
68 MB of per-row state per host (5.7M rows) and up to 45 MB of such pairs,
besides a group's members (`group_rows` x (d x 4 bytes + id), over 6.1 GB
at the default 2M rows and d = 768, as in one process).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import tempfile
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa

from data_efficient import sharding
from data_efficient.io import dealing, embeddings, paths
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
  n_pad = sharding.round_up(n_pad, block * mesh.size)
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


def _member_schema(dtype: np.dtype) -> pa.Schema:
  """A dealt member of a cluster group: its row in the input, cluster,
  distance to the centroid, id and embedding (in `dtype`, as stored)."""
  return pa.schema(
    [
      ("row", pa.int32()),
      ("cluster", pa.int32()),
      ("distance", pa.float32()),
      ("id", pa.string()),
      ("vector", pa.list_(pa.from_numpy_dtype(dtype))),
    ]
  )


def semdedup_similarities(
  path: str,
  clusters: np.ndarray,
  distances: np.ndarray,
  num_clusters: int,
  mesh: jax.sharding.Mesh,
  *,
  scratch: str | None = None,
  batch_rows: int = 65_536,
  group_rows: int = DEFAULT_GROUP_ROWS,
  progress: bool = False,
) -> np.ndarray:
  """Every example's SemDeDup score (see the module docstring).

  In a multi-process job every process calls it with the clusters and
  distances of its share of the rows (`embeddings.share`) and gets its
  share's scores. Each process first deals its share's rows (with their
  cluster, distance, id and embedding) into a file per group of whole
  clusters, on `scratch`; the groups go to the processes in turn (group g to
  process g % P), each reads its group's files, of every process, and
  scores the members on its own devices, and at the end the scores go back
  to the processes whose shares hold their rows.

  Args:
    path: The embeddings that were clustered.
    clusters: [n] cluster of each row of this process's share (input
      order).
    distances: [n] distance of each such row to its centroid.
    num_clusters: k.
    mesh: This process's devices, for the within-cluster similarities.
    scratch: A directory for the dealt groups, shared by the processes (a
      gs:// URL or a shared file system); cleared first and removed at the
      end. None: a local temporary directory (one process only).
    batch_rows: Rows read per batch.
    group_rows: Most embeddings held at once.
    progress: Print the dealing and one line per group to stderr.

  Returns:
    [n] float32 scores of this process's share, in input order.

  Raises:
    ValueError: if the arrays do not match this process's share, there are
      2^31 rows or more, or several processes have no shared scratch.
  """
  index, count = jax.process_index(), jax.process_count()
  share = embeddings.share(path, index, count)
  distances = np.asarray(distances, np.float32)
  if len(clusters) != len(share) or len(distances) != len(share):
    raise ValueError(
      f"{len(clusters)} clusters and {len(distances)} distances for the "
      f"{len(share)} rows {share.start}..{share.stop} of {path} that this "
      "process holds."
    )
  if embeddings.num_rows(path) >= 2**31:
    raise ValueError(f"{path}: 2^31 rows or more; rows are int32 here.")
  if scratch is None:
    if count > 1:
      raise ValueError(
        "semdedup_similarities: give the processes a shared scratch directory."
      )
    with tempfile.TemporaryDirectory(prefix="semdedup-") as local:
      return semdedup_similarities(
        path,
        clusters,
        distances,
        num_clusters,
        mesh,
        scratch=local,
        batch_rows=batch_rows,
        group_rows=group_rows,
        progress=progress,
      )
  sizes = sharding.process_sum(
    np.bincount(clusters, minlength=num_clusters).astype(np.int32)
  )
  groups = cluster_groups(sizes, group_rows)
  group_of = np.zeros(num_clusters, np.int64)
  for g, members in enumerate(groups):
    group_of[members] = g

  def path_of(group: int, process: int) -> str:
    return paths.join(scratch, f"group-{group:06d}-{process:05d}.arrow")

  dtype = embeddings.stored_dtype(path)
  schema = _member_schema(dtype)

  def batches():
    done = 0
    for ids, _, x in embeddings.iter_embeddings(path, batch_rows, share):
      at = slice(done, done + len(x))
      stored = x.astype(dtype)
      if not np.array_equal(stored, x):
        raise ValueError(
          f"{path}: rows {share.start + at.start}..{share.start + at.stop} are "
          f"not {dtype} as the first shard is; its shards store different "
          "dtypes."
        )
      vectors = pa.ListArray.from_arrays(
        np.arange(len(x) + 1, dtype=np.int32) * x.shape[1], stored.reshape(-1)
      )
      batch = pa.RecordBatch.from_arrays(
        [
          pa.array(np.arange(at.start, at.stop, dtype=np.int32) + share.start),
          pa.array(clusters[at].astype(np.int32)),
          pa.array(distances[at]),
          pa.array(ids, pa.string()),
          vectors,
        ],
        schema=schema,
      )
      yield batch, group_of[clusters[at]]
      done += len(x)

  # Scores as int32 bit patterns, 0 where another process scores the row,
  # so that a process_sum hands each process its share's floats exactly.
  bits = np.zeros(len(share), np.int32)
  foreign = []  # (rows, bits) this process scored in other shares
  t0 = time.perf_counter()
  with driver.scratch(scratch, "semdedup"):
    with sharding.all_or_none("semdedup's dealing of rows by cluster group"):
      paths.makedirs(scratch)
      dealing.deal(batches, schema, len(groups), lambda g: path_of(g, index))
    if progress:
      print(
        f"semdedup: {len(share)} rows dealt into {len(groups)} cluster "
        f"groups ({time.perf_counter() - t0:.1f}s)",
        file=sys.stderr,
      )
    for first in range(0, len(groups), count):
      mine = first + index  # this process's group (none: past the last)
      with sharding.all_or_none(f"semdedup of cluster group {mine + 1}"):
        if mine < len(groups):
          members = pa.concat_tables(
            dealing.read(path_of(mine, q)) for q in range(count)
          )
          rows, scores = _score_group(members, groups[mine], mesh)
          scores = scores.view(np.int32)
          own = (rows >= share.start) & (rows < share.stop)
          bits[rows[own] - share.start] = scores[own]
          foreign.append((rows[~own], scores[~own]))
      if progress and mine < len(groups):
        print(
          f"semdedup: group {mine + 1}/{len(groups)} ({len(rows)} rows, "
          f"{time.perf_counter() - t0:.1f}s)",
          file=sys.stderr,
        )
  return _return_scores(path, bits, foreign).view(np.float32)


def _score_group(
  members: pa.Table, group: np.ndarray, mesh: jax.sharding.Mesh
) -> tuple[np.ndarray, np.ndarray]:
  """(rows, float32 scores) of one group's dealt members (`_member_schema`
  rows, rows ascending)."""
  rows = members.column("row").to_numpy()
  scores = np.full(len(rows), np.nan, np.float32)
  if not len(rows):
    return rows, scores
  member_clusters = members.column("cluster").to_numpy()
  distances = members.column("distance").to_numpy()
  # Object, not fixed-width: one long url would widen every id of the group.
  ids = np.asarray(members.column("id").to_pylist(), object)
  # Chunk by chunk (a dealt batch each): one list array of a whole group
  # could pass 2^31 values, its offsets' limit.
  flat = np.concatenate(
    [chunk.flatten().to_numpy() for chunk in members.column("vector").chunks]
  )
  vectors = _unit(flat.reshape(len(rows), -1).astype(np.float32))
  for c in group:
    of_c = np.flatnonzero(member_clusters == c)
    if not len(of_c):
      continue
    order = of_c[semdedup_order(ids[of_c], distances[of_c])]
    scores[order] = max_earlier_similarity(vectors[order], mesh)
  return rows, scores


def _return_scores(path: str, bits: np.ndarray, foreign: list) -> np.ndarray:
  """This process's share of the scores, from every process's `foreign`.

  One `process_sum` per share, of share-sized int32 bit patterns: each row
  is scored by one process, the others add 0, so the sum is exact.
  """
  index, count = jax.process_index(), jax.process_count()
  if count == 1:
    return bits
  rows = np.concatenate([r for r, _ in foreign] + [np.zeros(0, np.int32)])
  scores = np.concatenate([b for _, b in foreign] + [np.zeros(0, np.int32)])
  for q in range(count):
    share_q = embeddings.share(path, q, count)
    part = bits if q == index else np.zeros(len(share_q), np.int32)
    there = (rows >= share_q.start) & (rows < share_q.stop)
    part[rows[there] - share_q.start] = scores[there]
    total = sharding.process_sum(part)
    if q == index:
      bits = total
  return bits


# ---------------------------------------------------------------------------
# The stage.


@dataclasses.dataclass(frozen=True)
class ClusterScores:
  """Per-example results of a clustering baseline, for this process's share
  of the rows (`rows`; all of them in one process), in input order."""

  method: str
  rows: range  # this process's share of the embeddings
  clusters: np.ndarray  # [n] int32
  distances: np.ndarray  # [n] float32
  similarities: np.ndarray | None  # [n] float32 (SemDeDup only)
  eps: float
  kmeans: kmeans.KMeansResult
  cluster_sizes: np.ndarray  # [k] int32, over every process
  num_kept: int | None  # SemDeDup: kept rows over every process

  def columns(self, start: int, stop: int) -> dict[str, np.ndarray]:
    """Score columns of the share's rows start..stop (0: its first)."""
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
    """Counts for the manifest (of every process's rows)."""
    sizes = self.cluster_sizes
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
      out.update(
        eps=self.eps,
        threshold=1.0 - self.eps,
        num_kept=self.num_kept,
        num_removed=int(sizes.sum()) - self.num_kept,
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
  scratch: str | None = None,
  checkpoint_dir: str | None = None,
  checkpoint_every: int = 1,
  progress: bool = False,
) -> ClusterScores:
  """k-means, then the SemDeDup or prototype score of every example.

  In a multi-process job every process calls it and gets the scores of its
  share of the rows (`embeddings.share`); the clustering is that of all.

  Args:
    path: An embed directory or `.npy` matrix.
    method: 'semdedup' or 'prototypes'.
    config: k-means settings.
    mesh: This process's devices (`sharding.local_mesh`).
    eps: SemDeDup: near-duplicates have cosine similarity > 1 - eps.
    batch_rows: Rows read per batch.
    group_rows: SemDeDup: most embeddings held at once.
    scratch: SemDeDup: the processes' shared directory for the dealt
      groups (`semdedup_similarities`); None: a local temporary one.
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
  share = embeddings.share(path, jax.process_index(), jax.process_count())
  result = kmeans.fit(
    path,
    config,
    mesh,
    batch_rows=batch_rows,
    checkpoint_dir=checkpoint_dir,
    checkpoint_every=checkpoint_every,
    progress=progress,
  )
  clusters = [np.zeros(0, np.int32)]
  distances = [np.zeros(0, np.float32)]
  with sharding.all_or_none(f"assigning {path}"):
    for _, _, c, dist in kmeans.assign(
      path,
      result.centroids,
      mesh,
      spherical=config.spherical,
      batch_rows=batch_rows,
      rows=share,
    ):
      clusters.append(c)
      distances.append(dist)
  clusters = np.concatenate(clusters)
  distances = np.concatenate(distances)
  sizes = np.bincount(clusters, minlength=config.clusters).astype(np.int32)
  similarities, kept = None, np.zeros((), np.int32)
  if method == SEMDEDUP:
    similarities = semdedup_similarities(
      path,
      clusters,
      distances,
      config.clusters,
      mesh,
      scratch=scratch,
      batch_rows=batch_rows,
      group_rows=group_rows,
      progress=progress,
    )
    kept = np.int32((similarities <= 1.0 - eps).sum())
  sizes, kept = sharding.process_sum((sizes, kept))
  return ClusterScores(
    method,
    share,
    clusters,
    distances,
    similarities,
    eps,
    result,
    cluster_sizes=sizes,
    num_kept=None if similarities is None else int(kept),
  )


def batches(
  path: str,
  scores: ClusterScores,
  *,
  start: int = 0,
  batch_rows: int = 65_536,
) -> Iterator[dict]:
  """Output rows (schema(method) columns) of the scores' share of the rows,
  in input order, from its `start`-th."""
  rows = range(scores.rows.start + start, scores.rows.stop)
  first = start
  for ids, problems, x in embeddings.iter_embeddings(path, batch_rows, rows):
    yield {
      "id": ids,
      "problem": problems,
      **scores.columns(first, first + len(x)),
    }
    first += len(x)


def cluster(config: configs.ClusterConfig) -> dict:
  """The `cluster` stage: k-means, then every embedding's SemDeDup or
  prototype score; the manifest (with the clustering's summary).

  In a multi-process job (`config.processes`) every process runs it: each
  writes the rows of its share of the embeddings, and process 0 the
  manifest (the others get {"process_index", "rows"}).
  """
  config.processes.initialize()
  method, kmeans_config = config.method, config.kmeans
  scores = None

  def write_rows(writer):
    nonlocal scores
    scores = cluster_scores(
      config.embeddings,
      method,
      kmeans_config,
      sharding.local_mesh(),
      eps=config.eps,
      batch_rows=config.batch_rows,
      group_rows=config.group_rows,
      scratch=driver.scratch_path(config.output),
      checkpoint_dir=paths.join(config.output, KMEANS_CHECKPOINTS),
      checkpoint_every=config.checkpoint_every,
      progress=config.progress and jax.process_index() == 0,
    )
    with sharding.all_or_none(f"writing {config.output}"):
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
