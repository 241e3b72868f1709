"""RACE sketch: kernel-sum density scores in two streaming passes.

A sketch is R rows x B buckets of int32 counts (the paper's R = 1000,
B = 20000: 80 MB). Row r owns K p-stable L2 hashes (RACE's concatenation,
Coleman & Shrivastava 2020) h_rk(x) = floor((a_rk . x + b_rk) / w),
a_rk ~ N(0, I), b_rk ~ U[0, w), k = 1..K, whose integer values are combined
into one 32-bit value by a salted chain of murmur3's finaliser,
v_0 = salt_r, v_k = mix(v_{k-1} xor h_rk(x)), and v_K is reduced to a bucket
by a multiply-shift range reduction. The chain is fixed integer arithmetic,
so the bucket of a K-tuple is the same on every device count; with K = 1 it
is mix(salt_r xor h_r1(x)), the single-hash sketch's bucket.

Pass 1, `add`: every example adds 1 to one bucket per row. Sketches built
from disjoint data (devices, hosts, chunks) with the same seed add up
(`merge`); within one call the batch is split over the mesh's devices and
the per-device counts are summed.

Pass 2, `scores`: score(x) = mean over rows of the count in x's bucket.

What it estimates. Two points share one hash value with probability
p(||x - y||), the p-stable collision kernel (`kernels.lsh_collision_
probability`, width w), hence all K of a row's values with probability
k(x, y) = p^K (the hashes are independent); two *different* K-tuples share a
bucket with probability q ~= 1/B (the mixer and range reduction, treated as a
random function). So for N examples in the sketch

  E[count in x's bucket] = sum_j k(x, x_j) + q (N - sum_j k(x, x_j))
                         = (1 - q) S(x) + q N.

K sharpens the kernel: p alone decays only like w / (2.5 c) with the
distance c, so a big cluster's far tail outweighs a small cluster's own
neighbourhood; p^K decays like c^-K.

`scores(..., debias=True)` (the default) returns (mean - N/B) / (1 - 1/B),
an unbiased estimate of the collision-kernel sum S(x) =
`exact.kernel_sums(x, data, "lsh", w, hashes_per_row=K)`, which counts x
itself if x was added.
With debias=False it returns the raw mean count (the paper's score); the
two differ by an affine map, so both give the same top-k order.

Determinism. Hash parameters come from `jax.random.key(seed)` folded with the
row index, independent of the device count and of R (the first R rows of a
bigger sketch with the same seed and K are the same hashes). Blocks have a fixed
shape whatever the device count, so 1 and 8 devices give identical counts.

Speed. Hashing is a [d, K R] x [block, d] matmul written as [K, R, block]
(each row's hashes contiguous, the order the scatter and gather walk, so
nothing is transposed), followed by the K-step mixer and one scatter-add
(pass 1) or gather (pass 2) per row: K times the matmul work of K = 1, the
same scatter and gather. `benchmarks/density_throughput.py` on 2 AMD EPYC
(AVX-512) cores, R = 1000, K = 12, d = 768, blocks of 2048, against the
matmul-bound rate peak / (2 d R K) (peak: a 2048^3 matmul), best of 3
interleaved rounds over 16384 rows, three full runs: the hashing matmul
alone 101-115%, bucketing (with the mixer and range reduction) 101-115%,
pass 1 78-83%, pass 2 90-98%. So bucketing costs no more than its matmul,
and pass 1 loses its scatter-add: ~35 ns per update, consistent with a
row's 2048 updates per block landing at random across the 1250 cache lines
of its 80 kB of counts, so that each block streams nearly all 80 MB of
counts through the caches (at K = 1, with ~28 buckets used per row, ~4 ns;
blocks of 1024 or 4096 rows were slower). Whole passes over 10^6 rows in
chunks of 65536, under the load of other processes (1-min load 1.9-4.0):
pass 1 54-87%, pass 2 64-104% of the bound at K = 12; 52-67% and 57-90% at K = 1, whose scatter and gather are
then a larger share.
The block scan keeps the counts in place (a loop carry, started from the
sketch so far on device 0), and the flat row-major index keeps each row's
updates within one B x 4-byte stretch of memory.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from data_efficient import sharding
from data_efficient.stages import configs

DEFAULT_ROWS = configs.default(configs.DensityConfig, "rows")
DEFAULT_BUCKETS = configs.default(configs.DensityConfig, "buckets")
DEFAULT_BLOCK = 2048
# RACE's K; the measurements behind 12 are in docs/stages.md.
DEFAULT_HASHES_PER_ROW = configs.default(
  configs.DensityConfig, "hashes_per_row"
)
# The range reduction multiplies 16-bit halves; B must fit in 16 bits.
MAX_BUCKETS = 1 << 16
_ALIGN = 8


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["counts", "projections", "offsets", "salts"],
  meta_fields=["width"],
)
@dataclasses.dataclass(frozen=True)
class RaceSketch:
  """Counts plus the hash parameters that define them.

  Attributes:
    counts: [rows, buckets] int32 counts.
    projections: [d, K, rows] float32 Gaussian directions a_rk (K =
      hashes per row).
    offsets: [K, rows] float32 offsets b_rk in [0, width).
    salts: [rows] uint32 salts of the bucket mixer.
    width: The p-stable hash width w; the sketch estimates the sum of
      `kernels.lsh_collision_probability(distance, width) ** K`.
  """

  counts: jax.Array
  projections: jax.Array
  offsets: jax.Array
  salts: jax.Array
  width: float

  @property
  def rows(self) -> int:
    return self.counts.shape[0]

  @property
  def buckets(self) -> int:
    return self.counts.shape[1]

  @property
  def dim(self) -> int:
    return self.projections.shape[0]

  @property
  def hashes_per_row(self) -> int:
    return self.projections.shape[1]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _hash_parameters(
  dim: int, rows: int, hashes_per_row: int, key
) -> tuple[jax.Array, ...]:
  """Row r's (a_r [K, d], b_r / w [K] in [0, 1), salt_r) from
  fold_in(key, r). With K = 1 these are the single-hash sketch's values."""

  def one_row(key):
    k_a, k_b, k_s = jax.random.split(key, 3)
    return (
      jax.random.normal(k_a, (hashes_per_row, dim), jnp.float32),
      jax.random.uniform(k_b, (hashes_per_row,), jnp.float32),
      jax.random.bits(k_s, (), jnp.uint32),
    )

  row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(rows))
  return jax.vmap(one_row)(row_keys)


def init(
  dim: int,
  width: float,
  *,
  rows: int = DEFAULT_ROWS,
  buckets: int = DEFAULT_BUCKETS,
  hashes_per_row: int = DEFAULT_HASHES_PER_ROW,
  seed: int = 0,
) -> RaceSketch:
  """An empty sketch with hash parameters drawn from `seed`.

  Args:
    dim: Embedding dimension d.
    width: p-stable hash width w > 0, e.g.
      `kernels.default_bandwidth(sample, "lsh", hashes_per_row=K)`.
    rows: R, the number of independent rows.
    buckets: B, buckets per row (at most 65536).
    hashes_per_row: K, the hashes concatenated into each row's bucket.
    seed: Seed; row r's parameters depend only on (seed, r, K).

  Returns:
    A `RaceSketch` with zero counts.

  Raises:
    ValueError: on a non-positive size or width, or too many buckets.
  """
  if dim < 1 or rows < 1 or hashes_per_row < 1:
    raise ValueError(
      f"dim={dim}, rows={rows} and hashes_per_row={hashes_per_row} must be "
      ">= 1."
    )
  if not 2 <= buckets <= MAX_BUCKETS:
    raise ValueError(f"buckets={buckets} must be in [2, {MAX_BUCKETS}].")
  if not (np.isfinite(width) and width > 0):
    raise ValueError(f"width={width} must be a finite number > 0.")
  a, b, salts = _hash_parameters(
    dim, rows, hashes_per_row, jax.random.key(seed)
  )
  return RaceSketch(
    counts=jnp.zeros((rows, buckets), jnp.int32),
    projections=jnp.transpose(a, (2, 1, 0)),  # [rows, K, d] -> [d, K, rows]
    offsets=b.T * jnp.float32(width),  # [rows, K] -> [K, rows]
    salts=salts,
    width=float(width),
  )


def _mix32(v: jax.Array) -> jax.Array:
  """murmur3's 32-bit finaliser (a bijection with full avalanche)."""
  v = v ^ (v >> 16)
  v = v * jnp.uint32(0x85EBCA6B)
  v = v ^ (v >> 13)
  v = v * jnp.uint32(0xC2B2AE35)
  return v ^ (v >> 16)


def _range_reduce(v: jax.Array, n: int) -> jax.Array:
  """floor(v * n / 2^32) for uint32 v and n <= 2^16, in 32-bit arithmetic.

  A multiply-shift instead of v % n: AVX2 has no vector integer division.
  Each bucket receives floor or ceil of 2^32 / n of the inputs.
  """
  n = jnp.uint32(n)
  hi, lo = v >> 16, v & jnp.uint32(0xFFFF)
  return ((hi * n + ((lo * n) >> 16)) >> 16).astype(jnp.int32)


def _buckets(
  x: jax.Array,
  scaled_projections: jax.Array,
  scaled_offsets: jax.Array,
  salts: jax.Array,
  n_buckets: int,
) -> jax.Array:
  """[n, d] -> [rows, n] bucket of each example in each row.

  Row-major by hash row: the matmul writes each row's n hashes contiguously,
  which is the order the scatter (pass 1) and gather (pass 2) walk, so no
  transpose is materialised.

  Args:
    x: [n, d] vectors.
    scaled_projections: [d, K, rows] a_rk / w.
    scaled_offsets: [K, rows] b_rk / w.
    salts: [rows] uint32.
    n_buckets: B.
  """
  d, n_hashes, rows = scaled_projections.shape
  # [d, K rows] x [n, d] -> [K rows, n] -> [K, rows, n]: one matmul.
  projected = jnp.einsum(
    "dc,nd->cn", scaled_projections.reshape(d, n_hashes * rows), x
  ).reshape(n_hashes, rows, x.shape[0])
  # floor((a.x + b) / w), as uint32 bits.
  h = jnp.floor(projected + scaled_offsets[:, :, None]).astype(jnp.int32)
  h = jax.lax.bitcast_convert_type(h, jnp.uint32)
  mixed = salts[:, None]  # v_0 = salt; v_k = mix(v_{k-1} ^ h_k): [rows, n]
  for k in range(n_hashes):
    mixed = _mix32(h[k] ^ mixed)
  return _range_reduce(mixed, n_buckets)


def _scaled(sketch: RaceSketch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(a / w, b / w, salts): the hash parameters in the form hashing uses."""
  inv_w = jnp.float32(1.0 / sketch.width)
  return sketch.projections * inv_w, sketch.offsets * inv_w, sketch.salts


def bucket_indices(sketch: RaceSketch, x) -> jax.Array:
  """[n, d] -> [n, rows] int32: the bucket of each example in each row."""
  x = jnp.asarray(x, jnp.float32)
  return _buckets(x, *_scaled(sketch), sketch.buckets).T


def _check_embeddings(sketch: RaceSketch, x) -> None:
  if x.ndim != 2 or x.shape[1] != sketch.dim:
    raise ValueError(
      f"embeddings have shape {x.shape}; the sketch expects [n, {sketch.dim}]."
    )
  if isinstance(x, np.ndarray) and not np.isfinite(x).all():
    bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
    raise ValueError(f"embeddings row {bad} contains NaN or inf.")


def _shard_blocks(x, mesh: jax.sharding.Mesh, block: int):
  """([n_pad, d] rows in whole blocks on every device, the block size)."""
  block = min(
    sharding.round_up(block, _ALIGN), sharding.round_up(x.shape[0], _ALIGN)
  )
  return sharding.shard_rows(x, mesh, mesh.size * block), block


@functools.cache
def _add_fn(mesh: jax.sharding.Mesh, block: int, n_buckets: int):
  axes = mesh.axis_names

  def per_device(x, counts, projections, offsets, salts):
    rows = counts.shape[0]
    # Flat index of (row r, bucket) = r * B + bucket, laid out row-major so
    # each row's updates land in one small (B * 4 bytes) stretch of memory.
    row_base = (jnp.arange(rows, dtype=jnp.int32) * n_buckets)[:, None]

    def step(local, xb):
      bk = _buckets(xb, projections, offsets, salts, n_buckets)
      flat = (bk + row_base).reshape(-1)  # [rows * block]
      local = local.at[flat].add(1, mode="promise_in_bounds")
      return local, None

    # Device 0 counts on top of the sketch so far, the others from zero: the
    # psum is then the new sketch, with no extra pass over the counts.
    first = sum(jax.lax.axis_index(a) for a in axes) == 0
    local = jnp.where(first, counts, 0).reshape(-1)
    local, _ = jax.lax.scan(step, local, x.reshape(-1, block, x.shape[-1]))
    return jax.lax.psum(local.reshape(rows, n_buckets), axes)

  return jax.jit(
    jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=(jax.P(axes), jax.P(), jax.P(), jax.P(), jax.P()),
      out_specs=jax.P(),
    )
  )


def add(
  sketch: RaceSketch,
  embeddings,
  *,
  mesh: jax.sharding.Mesh,
  block: int = DEFAULT_BLOCK,
) -> RaceSketch:
  """Pass 1: the sketch with every row of `embeddings` counted once.

  Call it once per chunk to stream a corpus: `add(add(s, x1), x2)` equals
  `add(s, concat(x1, x2))` exactly.

  Args:
    sketch: The sketch so far (from `init`, `add` or `merge`).
    embeddings: [n, d] vectors (NumPy or JAX).
    mesh: Mesh from `sharding.make_mesh`. Rows are split over all its
      devices, the per-device counts are summed.
    block: Rows hashed per step on each device (memory ~ block x R x 8
      bytes).

  Returns:
    A new `RaceSketch` (same hash parameters, updated counts).

  Raises:
    ValueError: on a dimension mismatch or NaN/inf embeddings.
  """
  _check_embeddings(sketch, embeddings)
  if embeddings.shape[0] == 0:
    return sketch
  x, block = _shard_blocks(embeddings, mesh, block)
  n_padding = x.shape[0] - embeddings.shape[0]
  rep = sharding.replicated(mesh)
  params = jax.device_put((sketch.counts, *_scaled(sketch)), rep)
  counts = _add_fn(mesh, block, sketch.buckets)(x, *params)
  if n_padding:
    # The padding rows are zero vectors: take their counts back out.
    zero_buckets = bucket_indices(sketch, jnp.zeros((1, sketch.dim)))[0]
    counts = counts.at[jnp.arange(sketch.rows), zero_buckets].add(-n_padding)
  return dataclasses.replace(sketch, counts=counts)


def merge(*sketches: RaceSketch) -> RaceSketch:
  """The sum of sketches built with the same hash parameters.

  Raises:
    ValueError: if none is given or their hash parameters differ.
  """
  if not sketches:
    raise ValueError("merge() needs at least one sketch.")
  first = sketches[0]
  for i, other in enumerate(sketches[1:], start=1):
    same = (
      other.width == first.width
      and other.counts.shape == first.counts.shape
      and other.hashes_per_row == first.hashes_per_row
      and other.projections.shape == first.projections.shape
      and bool(jnp.array_equal(other.projections, first.projections))
      and bool(jnp.array_equal(other.offsets, first.offsets))
      and bool(jnp.array_equal(other.salts, first.salts))
    )
    if not same:
      raise ValueError(
        f"sketch {i} has different hash parameters from sketch 0: build "
        "all sketches with the same init(dim, width, rows, buckets, "
        "hashes_per_row, seed)."
      )
  counts = functools.reduce(jnp.add, [s.counts for s in sketches])
  return dataclasses.replace(first, counts=counts)


def num_examples(sketch: RaceSketch) -> int:
  """N, the number of examples added (every row's counts sum to it)."""
  return int(jnp.sum(sketch.counts[0]))


@functools.cache
def _scores_fn(mesh: jax.sharding.Mesh, block: int, n_buckets: int):
  axes = mesh.axis_names

  def per_device(x, counts, projections, offsets, salts):
    def step(_, xb):
      bk = _buckets(xb, projections, offsets, salts, n_buckets)
      # [rows, B] gathered at [rows, block] -> [rows, block] -> [block]
      hit = jnp.take_along_axis(counts, bk, axis=1)
      return None, jnp.mean(hit.astype(jnp.float32), axis=0)

    _, means = jax.lax.scan(step, None, x.reshape(-1, block, x.shape[-1]))
    return means.reshape(-1)

  return jax.jit(
    jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=(jax.P(axes), jax.P(), jax.P(), jax.P(), jax.P()),
      out_specs=jax.P(axes),
    )
  )


def scores(
  sketch: RaceSketch,
  embeddings,
  *,
  debias: bool = True,
  mesh: jax.sharding.Mesh,
  block: int = DEFAULT_BLOCK,
) -> jax.Array:
  """Pass 2: the density score of each row of `embeddings`.

  Args:
    sketch: A sketch after pass 1 (`add` over the whole corpus).
    embeddings: [n, d] vectors to score (NumPy or JAX).
    debias: Remove the bucket-collision term: return
      (mean count - N/B) / (1 - 1/B), an unbiased estimate of the exact
      collision-kernel sum. False returns the raw mean count.
    mesh: Mesh from `sharding.make_mesh`; rows are split over all its
      devices.
    block: Rows hashed per step on each device.

  Returns:
    [n] float32 scores.

  Raises:
    ValueError: on a dimension mismatch or NaN/inf embeddings.
  """
  _check_embeddings(sketch, embeddings)
  n = embeddings.shape[0]
  if n == 0:
    return jnp.zeros((0,), jnp.float32)
  x, block = _shard_blocks(embeddings, mesh, block)
  rep = sharding.replicated(mesh)
  params = jax.device_put((sketch.counts, *_scaled(sketch)), rep)
  means = _scores_fn(mesh, block, sketch.buckets)(x, *params)
  means = means[:n]
  if debias:
    q = 1.0 / sketch.buckets
    means = (means - q * num_examples(sketch)) / (1.0 - q)
  return means
