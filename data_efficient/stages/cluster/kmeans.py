"""k-means in JAX, streaming over embedding shards, sharded over the mesh.

The clustering behind the paper's SemDeDup and SSL-prototype baselines
(10,000 clusters of Sentence-T5-Base embeddings). Embeddings are never held
all at once: every Lloyd iteration is one pass over `embeddings.iter_embeddings`
batches, each batch's rows split over all devices (`jax.shard_map`), the
per-cluster sums and counts reduced across devices (`psum`) and added up over
the batches; the centroids are updated after the pass.

Spherical k-means (`spherical=True`, the default, as SemDeDup clusters with
cosine distance): embeddings are scaled to unit length, a point belongs to
the centroid of largest cosine similarity, and a centroid is its members'
normalised sum. Otherwise plain Euclidean k-means. A cluster left empty by an
iteration keeps its centroid.

Determinism. Initial centroids come from a sample of `init_sample` rows
chosen by a hash of (seed, id) (`sampling.id_uniforms`), so they depend on
neither the device or process count nor the order of the input shards;
k-means++ then runs on that sample on one device, with Gumbel-max draws
keyed by (seed, step). Assignments are exact integer decisions and counts
are integers; only the float sums are reduced in an order that depends on
the devices and processes, so 1 and 8 devices, or 1 and 2 processes, give
the same assignments (barring exact near-ties) and centroids equal to float
rounding. The same command on the same devices is bitwise reproducible,
which is what lets a killed run resume from an iteration checkpoint
(`runs.snapshots`) and end with identical centroids.

Many processes (a pod's hosts). Every process makes the same calls. Each
reads its share of the rows (`embeddings.share`: contiguous, in order) and
computes on its own devices (`sharding.local_mesh`); a Lloyd pass's
per-cluster sums, counts and inertia are added up over the processes
(`sharding.process_sum`, k x (d + 1) + 1 numbers per pass), so every
process makes the same update and holds the same centroids. `sample_rows`
gives every process the sample of one process; k-means++ runs on it on
every process alike. An error in one process's share (a NaN row, a bad
shard) is raised on every process (`sharding.all_or_none`) instead of
leaving the others waiting in their next collective; a process that dies
ends the others' next collective with an error (with JAX's heartbeat
timeout, 100 s, at their exit). Checkpoints: every process saves the same
NumPy centroids, which Orbax writes from process 0 only, and finalises the
step there once all processes reached it (the layout of one process);
every process restores the latest step itself (the directory must be one
they all see: gs:// on a pod), and they check that they found the same.

Matmuls run at `Precision.HIGHEST`: on TPU and GPU the default float32 matmul
rounds inputs to bfloat16 / TF32, enough to move points between clusters.

Speed. On CPU, per-cluster sums are a scatter-add (XLA:CPU scatters in
order); on accelerators, a one-hot matmul (GPU scatters are atomic, so their
float sums would vary run to run). On 2 Zen 3 cores (one device), one Lloyd
pass over N = 100k x 768 takes ~4.5 s at k = 1,000 (NumPy doing the same
work: ~5.2 s) and ~26 s at k = 10,000 (NumPy: ~21 s): the distance matmul
fused with its argmax runs at ~60 GFLOP/s on XLA:CPU (see DESIGN.md).
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
from data_efficient.io import embeddings
from data_efficient.stages import configs, sampling

# Elements of one [block, clusters] distance tile per device (16 MB).
_TILE_ELEMENTS = 1 << 22
_ALIGN = 8
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class KMeansResult:
  """Centroids [k, d] float32, iterations run, inertia of each pass."""

  centroids: np.ndarray
  iterations: int
  inertia: list[float]


def _normalize(x: jax.Array) -> jax.Array:
  """Rows scaled to unit length; all-zero rows stay zero (never NaN)."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, jnp.finfo(x.dtype).tiny)


# ---------------------------------------------------------------------------
# Initialisation.


def _local_sample(
  path: str, size: int, seed: int, batch_rows: int, rows: range
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(keys, ids, vectors) of the `size` smallest (key, id) among `rows`, in
  that order; rows with equal (key, id) stay in input order."""
  keys = np.zeros((0,), np.float64)
  # Object arrays: a fixed-width one is as wide as its longest id (C4 urls
  # reach thousands of characters), for every row.
  ids = np.zeros((0,), object)
  vectors = None
  for batch_ids, _, x in embeddings.iter_embeddings(path, batch_rows, rows):
    batch_ids = np.asarray(batch_ids, object)
    keys = np.concatenate([keys, sampling.id_uniforms(batch_ids, seed)])
    ids = np.concatenate([ids, batch_ids])
    vectors = x if vectors is None else np.concatenate([vectors, x])
    keep = np.lexsort((ids, keys))[:size]  # ties (never seen) go by id
    keys, ids, vectors = keys[keep], ids[keep], vectors[keep]
  return keys, ids, vectors


def sample_rows(
  path: str, size: int, seed: int, batch_rows: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
  """The `size` rows with the smallest (seed, id) hash, in hash order.

  A uniform sample without replacement that depends only on the (id, vector)
  pairs and the seed: not on shard order, batch size, devices or processes.
  In a multi-process job every process calls it: each samples its share of
  the rows (`embeddings.share`), then they agree on the `size` smallest of
  all their candidates (`_merge_samples`), so every process returns the
  sample one process would. A process holds its `size` candidates, the
  sample, and 8 bytes per candidate of every process.

  Returns:
    (ids [m], float32 vectors [m, d]), m = min(size, N), on every process.

  Raises:
    ValueError: if there are no embeddings, or their widths differ.
  """
  share = embeddings.share(path, jax.process_index(), jax.process_count())
  with sharding.all_or_none(f"sampling {path}"):
    keys, ids, vectors = _local_sample(path, size, seed, batch_rows, share)
  width = -1 if vectors is None else vectors.shape[1]
  # [processes, 2]: each one's width (-1: no rows) and candidate count.
  counts = sharding.process_gather(np.int32([[width, len(keys)]]))
  widths = set(counts[:, 0].tolist()) - {-1}
  if not widths:
    raise ValueError(f"{path}: no embeddings.")
  if len(widths) > 1:
    raise ValueError(f"{path}: embedding widths differ ({sorted(widths)}).")
  if vectors is None:
    vectors = np.zeros((0, widths.pop()), np.float32)
  first = int(counts[: jax.process_index(), 1].sum())
  return _merge_samples(keys, ids, vectors, size, first)


def _merge_samples(
  keys: np.ndarray,
  ids: np.ndarray,
  vectors: np.ndarray,
  size: int,
  first: int,
) -> tuple[np.ndarray, np.ndarray]:
  """The `size` smallest (key, id) of every process's `_local_sample`.

  The processes exchange their candidates' keys and all pick the same rows
  again (by id where keys are equal); only those rows' ids and vectors
  travel. `first` is the position of this process's first candidate among
  every process's (those of the processes before it).
  """
  # float64 keys travel as uint32 pairs: process_gather moves 32-bit values.
  every_key = sharding.process_gather(keys.view(np.uint32).reshape(-1, 2))
  every_key = every_key.reshape(-1).view(np.float64)
  # Equal keys (a repeated id, or a hash collision) go by id, as in one
  # process: the ids of such candidates are exchanged and ranked.
  _, group, group_size = np.unique(
    every_key, return_inverse=True, return_counts=True
  )
  tied = group_size[group] > 1
  id_rank = np.zeros(len(every_key), np.int64)
  if tied.any():
    mine = tied[first : first + len(keys)]
    tied_ids = sharding.process_gather_strings(ids[mine])
    tied_ids = np.asarray(tied_ids, object)
    id_rank[tied] = np.unique(tied_ids, return_inverse=True)[1]
  # Stable: equal (key, id) stay in process order, which is input order.
  order = np.lexsort((id_rank, every_key))[:size]
  chosen = np.sort(order)  # positions among every process's candidates
  mine = chosen[(chosen >= first) & (chosen < first + len(keys))] - first
  # Gathered rows come in `chosen` order; put them in sample order.
  where = np.searchsorted(chosen, order)
  sample_ids = np.asarray(sharding.process_gather_strings(ids[mine]), object)
  return sample_ids[where], sharding.process_gather(vectors[mine])[where]


@functools.partial(jax.jit, static_argnums=(1,))
def kmeans_plus_plus(x: jax.Array, k: int, key: jax.Array) -> jax.Array:
  """k-means++ (Arthur & Vassilvitskii 2007) seeds from the rows of `x`.

  The first centroid is row 0 (give rows in random order); each next one is
  row i with probability proportional to D(i)^2, its squared distance to the
  nearest centroid so far, drawn as argmax(log D^2 + Gumbel) with the key
  folded with the step.

  Args:
    x: [m, d] candidate rows, m >= k.
    k: Number of centroids.
    key: A `jax.random.key`.

  Returns:
    [k, d] centroids (rows of `x`).
  """
  x_sq = jnp.sum(x * x, axis=1)

  def sq_distances(c):
    d2 = x_sq - 2.0 * jnp.dot(x, c, precision=_HIGHEST) + jnp.dot(c, c)
    return jnp.maximum(d2, 0.0)

  def step(i, carry):
    centroids, d2 = carry
    gumbel = jax.random.gumbel(jax.random.fold_in(key, i), d2.shape)
    # log 0 = -inf: rows already chosen (or duplicates) are never drawn.
    pick = jnp.argmax(jnp.log(d2) + gumbel)
    c = x[pick]
    return centroids.at[i].set(c), jnp.minimum(d2, sq_distances(c))

  centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[0])
  centroids, _ = jax.lax.fori_loop(1, k, step, (centroids, sq_distances(x[0])))
  return centroids


def init_centroids(
  path: str, config: configs.KMeansConfig, batch_rows: int = 65_536
) -> np.ndarray:
  """[k, d] initial centroids: a seeded sample, then k-means++ or its head.

  Raises:
    ValueError: if there are fewer rows than clusters.
  """
  size = max(config.init_sample, config.clusters)
  ids, sample = sample_rows(path, size, config.seed, batch_rows)
  if len(sample) < config.clusters:
    raise ValueError(
      f"{path}: {len(sample)} embeddings, fewer than clusters="
      f"{config.clusters}."
    )
  x = jnp.asarray(sample)
  if config.spherical:
    x = _normalize(x)
  if config.init == "random":
    return np.asarray(x[: config.clusters])
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  return np.asarray(kmeans_plus_plus(x, config.clusters, key))


# ---------------------------------------------------------------------------
# Lloyd passes, sharded.


def _assign(x, centroids, c_sq, spherical: bool):
  """[n, d] x [k, d] -> nearest cluster [n] int32, distance [n] float32.

  Spherical: the cosine distance 1 - x.c; else the Euclidean distance.
  """
  dots = jnp.dot(x, centroids.T, precision=_HIGHEST)  # [n, k]
  if spherical:
    cluster = jnp.argmax(dots, axis=1)
    best = jnp.take_along_axis(dots, cluster[:, None], axis=1)[:, 0]
    return cluster.astype(jnp.int32), 1.0 - best
  # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for all c.
  partial = c_sq[None, :] - 2.0 * dots
  cluster = jnp.argmin(partial, axis=1)
  best = jnp.take_along_axis(partial, cluster[:, None], axis=1)[:, 0]
  d2 = jnp.maximum(best + jnp.sum(x * x, axis=1), 0.0)
  return cluster.astype(jnp.int32), jnp.sqrt(d2)


def _block_rows(clusters: int) -> int:
  block = max(_ALIGN, min(4096, _TILE_ELEMENTS // clusters))
  return block // _ALIGN * _ALIGN


def _shard_batch(x: np.ndarray, mesh: jax.sharding.Mesh, block: int):
  """(sharded [n_pad, d] rows, sharded [n_pad] valid mask, block)."""
  n = x.shape[0]
  block = min(block, sharding.round_up(n, _ALIGN))
  xs = sharding.shard_rows(x, mesh, mesh.size * block)
  valid = jax.device_put(np.arange(xs.shape[0]) < n, xs.sharding)
  return xs, valid, block


@functools.cache
def _accumulate_fn(mesh: jax.sharding.Mesh, block: int, spherical: bool):
  axes = mesh.axis_names
  # XLA:CPU scatters in order (deterministic) and a scatter-add costs ~10%
  # of the distance matmul there, against ~70% for the one-hot matmul;
  # GPU scatters use atomics (float sums in any order), so accelerators
  # take the matmul, which their matrix units run well.
  use_scatter = mesh.devices.flat[0].platform == "cpu"

  def per_device(x, valid, centroids):
    k, d = centroids.shape
    c_sq = jnp.sum(centroids * centroids, axis=1)

    def step(carry, xs):
      sums, counts, inertia = carry
      xb, vb = xs
      if spherical:
        xb = _normalize(xb)
      cluster, dist = _assign(xb, centroids, c_sq, spherical)
      if use_scatter:
        # Padding rows go to segment k, which is dropped.
        segment = jnp.where(vb, cluster, k)
        sums = sums + jax.ops.segment_sum(xb, segment, k)
        counts = counts + jax.ops.segment_sum(vb.astype(jnp.int32), segment, k)
      else:
        # [block, k] one-hot (padding rows all zero).
        onehot = (cluster[:, None] == jnp.arange(k)[None, :]) & vb[:, None]
        sums = sums + jnp.dot(
          onehot.T.astype(xb.dtype), xb, precision=_HIGHEST
        )  # [k, block] x [block, d] -> [k, d]
        counts = counts + jnp.sum(onehot, axis=0, dtype=jnp.int32)
      inertia = inertia + jnp.sum(jnp.where(vb, dist * dist, 0.0))
      return (sums, counts, inertia), None

    init = (
      jnp.zeros((k, d), jnp.float32),
      jnp.zeros((k,), jnp.int32),
      jnp.zeros((), jnp.float32),
    )
    init = jax.lax.pcast(init, axes, to="varying")
    carry, _ = jax.lax.scan(
      step,
      init,
      (x.reshape(-1, block, d), valid.reshape(-1, block)),
    )
    return jax.lax.psum(carry, axes)

  return jax.jit(
    jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=(jax.P(axes), jax.P(axes), jax.P()),
      out_specs=(jax.P(), jax.P(), jax.P()),
    )
  )


@functools.cache
def _assign_fn(mesh: jax.sharding.Mesh, block: int, spherical: bool):
  axes = mesh.axis_names

  def per_device(x, centroids):
    c_sq = jnp.sum(centroids * centroids, axis=1)

    def step(_, xb):
      if spherical:
        xb = _normalize(xb)
      return None, _assign(xb, centroids, c_sq, spherical)

    _, (cluster, dist) = jax.lax.scan(
      step, None, x.reshape(-1, block, x.shape[-1])
    )
    return cluster.reshape(-1), dist.reshape(-1)

  return jax.jit(
    jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=(jax.P(axes), jax.P()),
      out_specs=(jax.P(axes), jax.P(axes)),
    )
  )


@functools.partial(jax.jit, static_argnums=(3,))
def _update(centroids, sums, counts, spherical: bool):
  """New centroids from one pass; an empty cluster keeps its centroid."""
  if spherical:
    new = _normalize(sums)
  else:
    new = sums / jnp.maximum(counts, 1)[:, None].astype(sums.dtype)
  return jnp.where((counts > 0)[:, None], new, centroids)


def lloyd_pass(
  path: str,
  centroids,
  mesh: jax.sharding.Mesh,
  *,
  spherical: bool = True,
  batch_rows: int = 65_536,
  rows: range | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
  """One streaming pass: (sums [k, d], counts [k], inertia) per cluster.

  Args:
    path: An embed directory or `.npy` matrix.
    centroids: [k, d] current centroids.
    mesh: This process's devices (`sharding.local_mesh`); every batch's rows
      are split over all of them.
    spherical: Cosine (unit vectors) or Euclidean assignment.
    batch_rows: Rows read per batch.
    rows: Only these rows (a process's share); default all.

  Raises:
    ValueError: on NaN/inf embeddings or a width that does not match.
  """
  rep = sharding.replicated(mesh)
  centroids = jax.device_put(jnp.asarray(centroids, jnp.float32), rep)
  k, d = centroids.shape
  sums = jax.device_put(jnp.zeros((k, d), jnp.float32), rep)
  counts = jax.device_put(jnp.zeros((k,), jnp.int32), rep)
  inertia = jnp.zeros((), jnp.float32)
  for _, _, x in embeddings.iter_embeddings(path, batch_rows, rows):
    _check_width(x, d)
    xs, valid, block = _shard_batch(x, mesh, _block_rows(k))
    s, c, i = _accumulate_fn(mesh, block, spherical)(xs, valid, centroids)
    sums, counts, inertia = sums + s, counts + c, inertia + i
  return np.asarray(sums), np.asarray(counts), float(inertia)


def _check_width(x: np.ndarray, d: int) -> None:
  if x.shape[1] != d:
    raise ValueError(
      f"embeddings have width {x.shape[1]}; the centroids have {d}."
    )


def fit(
  path: str,
  config: configs.KMeansConfig,
  mesh: jax.sharding.Mesh,
  *,
  batch_rows: int = 65_536,
  checkpoint_dir: str | None = None,
  checkpoint_every: int = 1,
  progress: bool = False,
) -> KMeansResult:
  """k-means over all embeddings at `path`, streaming, resumable.

  In a multi-process job every process calls it: each passes over its share
  of the rows (`embeddings.share`) on its own devices, and the per-cluster
  sums and counts are added up over the processes (`sharding.process_sum`)
  after every pass, so every process updates the same centroids.

  Args:
    path: An embed directory or `.npy` matrix [N, d].
    config: The clustering settings.
    mesh: This process's devices (`sharding.local_mesh`).
    batch_rows: Rows per batch (fixes the float summation order).
    checkpoint_dir: If given, the centroids are saved there (Orbax) after
      the initialisation and every `checkpoint_every` iterations, and the
      final ones always; a rerun resumes from the latest and ends with the
      same centroids. Every process saves the same (NumPy) centroids, which
      Orbax writes from process 0 only; every process restores them, so the
      directory must be one that every process sees (gs:// on a pod).
    checkpoint_every: Iterations between checkpoints (0: only the last).
    progress: Print one line per iteration to stderr.

  Returns:
    The centroids after `config.iterations` Lloyd iterations (the same on
    every process).

  Raises:
    CheckpointError: if the processes found different checkpoints (their
      `checkpoint_dir` is not one shared directory).
  """
  t0 = time.perf_counter()
  share = embeddings.share(path, jax.process_index(), jax.process_count())
  ckpt = None
  start, inertia, centroids = 0, [], None
  if checkpoint_dir is not None:
    from data_efficient.runs import snapshots

    settings = {
      "what": "kmeans",
      "embeddings": path,
      "batch_rows": batch_rows,
      **dataclasses.asdict(config),
    }
    ckpt = snapshots.StateCheckpointer(checkpoint_dir, config=settings)
    with sharding.all_or_none(f"restoring {checkpoint_dir}"):
      latest = ckpt.restore_latest()
    if latest is not None:
      state, record = latest
      centroids = np.asarray(state["centroids"])
      start, inertia = record["iteration"], list(record["inertia"])
    _check_same_step(-1 if latest is None else start, checkpoint_dir)
    if latest is not None and progress:
      print(
        f"kmeans: resuming after iteration {start} ({checkpoint_dir})",
        file=sys.stderr,
      )
  if centroids is None:
    centroids = init_centroids(path, config, batch_rows)
    if ckpt is not None and config.iterations:
      ckpt.save(0, {"centroids": centroids}, {"iteration": 0, "inertia": []})
  for it in range(start, config.iterations):
    with sharding.all_or_none(f"k-means iteration {it + 1}"):
      local = lloyd_pass(
        path,
        centroids,
        mesh,
        spherical=config.spherical,
        batch_rows=batch_rows,
        rows=share,
      )
    sums, counts, value = sharding.process_sum(
      (local[0], local[1], np.float32(local[2]))
    )
    centroids = np.asarray(_update(centroids, sums, counts, config.spherical))
    value = float(value)
    inertia.append(value)
    done = it + 1
    if progress:
      print(
        f"kmeans: iteration {done}/{config.iterations} inertia {value:.6g} "
        f"empty {int((counts == 0).sum())} "
        f"({time.perf_counter() - t0:.1f}s)",
        file=sys.stderr,
      )
    last = done == config.iterations
    if ckpt is not None and (
      last or (checkpoint_every and done % checkpoint_every == 0)
    ):
      record = {"iteration": done, "inertia": inertia}
      ckpt.save(done, {"centroids": centroids}, record)
  if ckpt is not None:
    ckpt.close()
  return KMeansResult(centroids, config.iterations, inertia)


def _check_same_step(step: int, checkpoint_dir: str) -> None:
  """Every process resumes from the same step (-1: none), or all raise."""
  steps = sharding.process_gather(np.int32([step]))
  if (steps != steps[0]).any():
    from data_efficient.models.checkpoints.errors import CheckpointError

    found = ", ".join(
      f"process {i}: {'none' if s < 0 else f'step {s}'}"
      for i, s in enumerate(steps.tolist())
    )
    raise CheckpointError(
      f"{checkpoint_dir}: the processes found different k-means checkpoints "
      f"({found}); the output directory must be one directory that every "
      "process reads and writes (a gs:// path on a pod)."
    )


def assign(
  path: str,
  centroids,
  mesh: jax.sharding.Mesh,
  *,
  spherical: bool = True,
  batch_rows: int = 65_536,
  rows: range | None = None,
) -> Iterator[tuple[list[str], list, np.ndarray, np.ndarray]]:
  """Yields (ids, problems, cluster [n] int32, distance [n] float32).

  The distance to the nearest centroid is the cosine distance 1 - x.c
  (spherical) or the Euclidean one. Only `rows` are assigned (a process's
  share; default all), on `mesh` (this process's devices).
  """
  centroids = jax.device_put(
    jnp.asarray(centroids, jnp.float32), sharding.replicated(mesh)
  )
  k, d = centroids.shape
  for ids, problems, x in embeddings.iter_embeddings(path, batch_rows, rows):
    _check_width(x, d)
    xs, _, block = _shard_batch(x, mesh, _block_rows(k))
    cluster, dist = _assign_fn(mesh, block, spherical)(xs, centroids)
    n = len(x)
    yield (
      ids,
      problems,
      np.asarray(cluster)[:n],
      np.asarray(dist, np.float32)[:n],
    )
