"""Exact kernel sums, score(q) = sum_j k(q, x_j), as blocked matrix tiles.

Queries are split over every device of the mesh (`jax.shard_map`); keys are
replicated and streamed tile by tile: each device walks its queries in
blocks of `query_block` rows and, for each block, scans the keys in blocks of
`key_block` rows. Memory is two [query_block, key_block] float32 tiles per
device, never [N, N]. Padding rows (N not divisible by the block or device
count) are masked by giving padded keys an infinite squared norm, so their
kernel value is exactly 0, and padded queries are cut from the result.

Two forms of the scan over key blocks (`FORMS`) add the same tiles in the
same order (bit-identical sums in every run on the EPYC host below, with
and without YNNPACK; the tests require agreement to 1e-6):
- 'pipelined': iteration j computes the distance matmul of key block j + 1
  and the kernel exp-sum of block j (whose matmul came from the previous
  iteration through the loop carry), so the two never sit in one fusion.
  Written for an XLA:CPU that fused a tile's matmul into the consumer
  exp/sum loop and then ran it well below its peak: on 2 Zen 3 cores, one
  4096 x 4096 x 768 Gaussian tile ran fused at 99 GFLOP/s, pipelined at
  119, matmul alone 181. The loop carry costs two [qb, kb] copies per
  iteration.
- 'fused': a tile's matmul and exp-sum in one step. Where XLA:CPU emits the
  dot, the elementwise kernel and the row sum as one YNNPACK fusion, this is
  the faster form: on a Xeon host of the same machine kind the pipelined
  form ran at 0.72x the fused one; on 2 AMD EPYC (AVX-512) cores, jax
  0.10.2, N = 32768, d = 768, in the quietest of four benchmark runs: fused
  181.5 GFLOP/s, pipelined 138.2, blocked NumPy 130.0, the 2048^3 matmul
  176.6 (`benchmarks/density_throughput.py`; docs/stages.md has all four).
  But with a 1024-row query block the pipelined form matched or won there
  (145-150 vs 98-147 GFLOP/s): the faster form depends on the compiler, the
  host and the tile shape.
So `kernel_sums` measures: `choose_form` times both on the call's tile
shape once per host and caches the choice (in memory and on disk), and the
`density` stage records the form it used in its manifest.

Results do not depend on the device count: the tile shapes depend only on the
block sizes and the input sizes, so 1 and 8 devices run the same arithmetic.

Keys that do not fit in memory: the sum is linear in the keys, so stream them
and add the per-chunk results (exact up to float32 summation order):

  total = jnp.zeros(len(queries))
  for chunk in key_chunks:                 # e.g. shards read from disk
    total += kernel_sums(queries, chunk, "gaussian", h, mesh=mesh)

Each call re-pads and re-places the queries: O(n_queries d), small next to
the O(n_queries n_chunk d) of the sum itself.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from data_efficient import sharding
from data_efficient.io import paths
from data_efficient.stages.density import kernels

DEFAULT_QUERY_BLOCK = 4096
DEFAULT_KEY_BLOCK = 1024
# How a query block's scan over the key blocks is written (`choose_form`).
FORMS = ("pipelined", "fused")
FORM_ENV = "DATA_EFFICIENT_EXACT_FORM"
CACHE_ENV = "DATA_EFFICIENT_CACHE"
# Tiles (query x key rows) below this use the pipelined form unmeasured.
_MIN_MEASURED_TILE = 1024 * 1024
_MEASURED_KEY_BLOCKS = 4
_MEASURED_REPEATS = 5
# 'fused' must beat 'pipelined' by this fraction to be chosen.
_FORM_MARGIN = 0.05
# Choices made in this process: {host and tile key: form}.
_forms: dict[str, str] = {}
# Rows are padded to a multiple of this, so tiles stay vector-friendly.
_ALIGN = 8


def _block_sizes(
  n_queries: int, n_keys: int, query_block: int, key_block: int
) -> tuple[int, int]:
  """Effective block sizes: never larger than the (aligned) input."""
  if query_block < 1 or key_block < 1:
    raise ValueError(
      f"query_block={query_block} and key_block={key_block} must be >= 1."
    )
  qb = min(
    sharding.round_up(query_block, _ALIGN), sharding.round_up(n_queries, _ALIGN)
  )
  kb = min(
    sharding.round_up(key_block, _ALIGN), sharding.round_up(n_keys, _ALIGN)
  )
  return qb, kb


def _block_sums(
  q: jax.Array,
  key_blocks: jax.Array,
  key_sqnorms: jax.Array,
  bandwidth: jax.Array,
  kernel: str,
  hashes_per_row: int,
  form: str,
) -> jax.Array:
  """sum_j k(q_i, key_j) for one query block, scanning the key blocks.

  Args:
    q: [qb, d] queries.
    key_blocks: [n_kb, kb, d] keys.
    key_sqnorms: [n_kb, kb] squared key norms, +inf on padding keys.
    bandwidth: Scalar.
    kernel: Kernel name.
    hashes_per_row: The 'lsh' kernel's power K.
    form: 'fused' (a tile's matmul and exp-sum in one step) or 'pipelined'
      (the matmul of block j + 1 beside the exp-sum of block j).

  Returns:
    [qb] sums.
  """
  if kernels.normalize_inputs(kernel):
    # Here, not per device: a [qb, d] block has the same shape on any mesh.
    q = kernels.l2_normalize(q)
  q_sqnorm = jnp.sum(q * q, axis=-1)  # [qb]
  snap = kernel in ("laplacian", "lsh")

  def tile_sum(dot, k_sqnorm):
    # [qb, kb] -> [qb]
    sqdist = kernels.squared_distances_from_dot(dot, q_sqnorm, k_sqnorm, snap)
    values = kernels.kernel_from_squared_distances(
      sqdist, kernel, bandwidth, hashes_per_row
    )
    return jnp.sum(values, axis=-1)

  if form == "fused":

    def fused_step(acc, xs):
      keys, k_sqnorm = xs
      return acc + tile_sum(q @ keys.T, k_sqnorm), None

    init = jnp.zeros_like(q_sqnorm)
    acc, _ = jax.lax.scan(fused_step, init, (key_blocks, key_sqnorms))
    return acc

  def step(carry, xs):
    acc, dot = carry
    next_keys, k_sqnorm = xs
    # The matmul of block j + 1 and the exp-sum of block j: no fusion between.
    next_dot = q @ next_keys.T  # [qb, d] x [d, kb] -> [qb, kb]
    return (acc + tile_sum(dot, k_sqnorm), next_dot), None

  first = q @ key_blocks[0].T
  init = (jnp.zeros_like(q_sqnorm), first)
  (acc, last), _ = jax.lax.scan(step, init, (key_blocks[1:], key_sqnorms[:-1]))
  return acc + tile_sum(last, key_sqnorms[-1])


@functools.cache
def _sums_fn(
  mesh: jax.sharding.Mesh,
  kernel: str,
  hashes_per_row: int,
  query_block: int,
  key_block: int,
  form: str,
):
  """The jit-compiled, mesh-sharded kernel-sum program."""
  axes = mesh.axis_names

  def per_device(q, keys, n_keys, bandwidth):
    # q: [nq_local, d] -> [n_qb, qb, d]; keys: [nk_pad, d] (replicated).
    if kernels.normalize_inputs(kernel):
      keys = kernels.l2_normalize(keys)
    k_sqnorm = jnp.sum(keys * keys, axis=-1)
    valid = jnp.arange(keys.shape[0]) < n_keys
    k_sqnorm = jnp.where(valid, k_sqnorm, jnp.inf)
    key_blocks = keys.reshape(-1, key_block, keys.shape[-1])
    key_sqnorms = k_sqnorm.reshape(-1, key_block)
    q_blocks = q.reshape(-1, query_block, q.shape[-1])
    sums = jax.lax.map(
      lambda qb: _block_sums(
        qb, key_blocks, key_sqnorms, bandwidth, kernel, hashes_per_row, form
      ),
      q_blocks,
    )
    return sums.reshape(-1)

  return jax.jit(
    jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=(jax.P(axes), jax.P(), jax.P(), jax.P()),
      out_specs=jax.P(axes),
    )
  )


@functools.cache
def _host_key(device: jax.Device) -> str:
  """What decides which form is faster: the compiler, its flags, the device
  and, on CPU, the processor model and the cores this process may use."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(
        (line.split(":", 1)[1].strip() for line in f if "model name" in line),
        cpu,
      )
  except OSError:
    pass
  cores = (
    len(os.sched_getaffinity(0))
    if hasattr(os, "sched_getaffinity")
    else os.cpu_count()
  )
  return "|".join(
    [
      f"jax {jax.__version__}",
      f"jaxlib {jaxlib.__version__}",
      f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}",
      device.platform,
      device.device_kind,
      cpu,
      f"{cores} cores",
    ]
  )


def _cache_path() -> pathlib.Path:
  root = os.environ.get(CACHE_ENV) or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
    "data_efficient",
  )
  return pathlib.Path(root) / "exact_forms.json"


def _read_cache() -> dict:
  """The on-disk choices ({} when there are none or the file is unreadable:
  the cache only saves a measurement)."""
  try:
    cache = json.loads(_cache_path().read_text())
  except (OSError, ValueError):
    return {}
  return cache if isinstance(cache, dict) else {}


def _write_cache(key: str, entry: dict) -> None:
  """Adds `entry` under `key`, atomically; a cache that cannot be written is
  left alone (the choice is then measured again by the next process)."""
  path = _cache_path()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    cache = _read_cache() | {key: entry}
    text = json.dumps(cache, indent=1, sort_keys=True).encode()
    # Processes of one host may write at once: each through its own temp.
    with paths.atomic_write(path, tmp_suffix=f".{os.getpid()}.tmp") as f:
      f.write(text)
  except OSError:
    pass


def measure_forms(
  device: jax.Device, query_block: int, key_block: int, dim: int
) -> dict[str, float]:
  """GFLOP/s of each form on `device`: Gaussian sums of one query block
  against a few key blocks of random data, best of a few interleaved runs.

  Args:
    device: The device to run on.
    query_block: Query rows per tile (as `kernel_sums` uses them).
    key_block: Key rows per tile.
    dim: The vectors' dimension d.

  Returns:
    {form: GFLOP/s} over `FORMS`, counting the distance matmuls only.
  """
  mesh = sharding.make_mesh(devices=[device])
  rng = np.random.default_rng(0)
  queries = rng.standard_normal((query_block, dim), np.float32)
  keys = rng.standard_normal(
    (_MEASURED_KEY_BLOCKS * key_block, dim), np.float32
  )
  args = (
    sharding.shard_rows(queries, mesh, query_block),
    sharding.shard_rows(keys, mesh, key_block, replicate=True),
    jnp.int32(len(keys)),
    jnp.float32(np.sqrt(dim)),  # Squared distances ~ 2 d: exp(-1).
  )
  fns = {
    form: _sums_fn(mesh, "gaussian", 1, query_block, key_block, form)
    for form in FORMS
  }
  for fn in fns.values():
    jax.block_until_ready(fn(*args))  # Compiles.
  seconds = dict.fromkeys(FORMS, float("inf"))
  for _ in range(_MEASURED_REPEATS):  # Interleaved: load hits both alike.
    for form, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      seconds[form] = min(seconds[form], time.perf_counter() - start)
  flops = 2.0 * query_block * len(keys) * dim
  return {form: flops / t / 1e9 for form, t in seconds.items()}


def choose_form(
  mesh: jax.sharding.Mesh,
  n_queries: int,
  n_keys: int,
  dim: int,
  *,
  query_block: int = DEFAULT_QUERY_BLOCK,
  key_block: int = DEFAULT_KEY_BLOCK,
) -> str:
  """The form `kernel_sums` uses for these sizes on this host.

  Forced by the environment variable `DATA_EFFICIENT_EXACT_FORM`
  ('pipelined' or 'fused'); otherwise 'pipelined' for tiles under 1024 x
  1024 (not worth a measurement), and for larger tiles the faster form by
  `measure_forms` on the mesh's first local device, measured once per host,
  tile shape and software versions and kept in memory and in
  `exact_forms.json` under `$DATA_EFFICIENT_CACHE`, else
  `$XDG_CACHE_HOME/data_efficient` or `~/.cache/data_efficient`. 'fused'
  must win by 5%: near-ties keep the pipelined form.

  Args:
    mesh: The mesh the sums will run on.
    n_queries: Query rows of the call.
    n_keys: Key rows of the call.
    dim: The vectors' dimension d.
    query_block: As passed to `kernel_sums`.
    key_block: As passed to `kernel_sums`.

  Returns:
    One of `FORMS`.

  Raises:
    ValueError: if the environment variable names no form, or on bad block
      sizes.
  """
  forced = os.environ.get(FORM_ENV, "")
  if forced:
    if forced not in FORMS:
      raise ValueError(
        f"{FORM_ENV}={forced!r} must be one of {FORMS} (or unset to measure)."
      )
    return forced
  qb, kb = _block_sizes(n_queries, n_keys, query_block, key_block)
  if qb * kb < _MIN_MEASURED_TILE:
    return "pipelined"
  device = mesh.local_devices[0]
  key = f"{_host_key(device)}|tile {qb}x{kb}x{dim}"
  if key not in _forms:
    entry = _read_cache().get(key)
    if not (isinstance(entry, dict) and entry.get("form") in FORMS):
      gflops = measure_forms(device, qb, kb, dim)
      fused_wins = gflops["fused"] > gflops["pipelined"] * (1 + _FORM_MARGIN)
      entry = {
        "form": "fused" if fused_wins else "pipelined",
        "gflops": {form: round(rate, 1) for form, rate in gflops.items()},
      }
      _write_cache(key, entry)
    _forms[key] = entry["form"]
  return _forms[key]


def kernel_sums(
  queries,
  keys,
  kernel: kernels.Kernel,
  bandwidth: float,
  *,
  hashes_per_row: int = 1,
  mesh: jax.sharding.Mesh,
  query_block: int = DEFAULT_QUERY_BLOCK,
  key_block: int = DEFAULT_KEY_BLOCK,
  form: str | None = None,
) -> jax.Array:
  """score(q_i) = sum_j k(q_i, keys_j), exactly, in float32.

  A query that is also a key counts itself (k(q, q) = 1).

  Args:
    queries: [n_queries, d] vectors (NumPy or JAX).
    keys: [n_keys, d] vectors; the sum runs over all of them.
    kernel: One of `kernels.KERNELS`.
    bandwidth: h (the hash width w for 'lsh'); see
      `kernels.default_bandwidth`.
    hashes_per_row: 'lsh' only: the kernel is the K-th power of the
      collision probability, the kernel of a sketch with K hashes per row
      (other kernels ignore it).
    mesh: Mesh from `sharding.make_mesh`; queries are split over all its
      devices.
    query_block: Query rows per tile.
    key_block: Key rows per tile. Memory per device is about
      2 x query_block x key_block x 4 bytes plus the keys.
    form: One of `FORMS`; None chooses by `choose_form`. Both add the same
      tiles in the same order.

  Returns:
    [n_queries] float32 sums, sharded over the mesh.

  Raises:
    ValueError: on bad shapes, an unknown kernel, a non-positive bandwidth,
      bad block sizes, an unknown form, or NaN/inf in NumPy inputs (JAX
      arrays are not checked, to avoid a device-to-host copy).
  """
  kernels.check_kernel(kernel, bandwidth, hashes_per_row)
  if form is not None and form not in FORMS:
    raise ValueError(f"form={form!r} must be one of {FORMS} or None.")
  if not isinstance(queries, jax.Array):
    queries = np.asarray(queries, np.float32)
  if not isinstance(keys, jax.Array):
    keys = np.asarray(keys, np.float32)
  if queries.ndim != 2 or keys.ndim != 2:
    raise ValueError(
      f"queries {queries.shape} and keys {keys.shape} must both be [n, d]."
    )
  if queries.shape[1] != keys.shape[1]:
    raise ValueError(
      f"queries have d={queries.shape[1]} but keys have d={keys.shape[1]}."
    )
  n_queries, n_keys = queries.shape[0], keys.shape[0]
  if n_queries == 0:
    return jnp.zeros((0,), jnp.float32)
  if n_keys == 0:
    return jnp.zeros((n_queries,), jnp.float32)
  if isinstance(keys, np.ndarray) and not np.isfinite(keys).all():
    raise ValueError("keys contain NaN or inf.")
  if isinstance(queries, np.ndarray) and not np.isfinite(queries).all():
    raise ValueError("queries contain NaN or inf.")
  qb, kb = _block_sizes(n_queries, n_keys, query_block, key_block)
  if form is None:
    form = choose_form(
      mesh,
      n_queries,
      n_keys,
      queries.shape[1],
      query_block=query_block,
      key_block=key_block,
    )
  queries = sharding.shard_rows(queries, mesh, mesh.size * qb)
  keys = sharding.shard_rows(keys, mesh, kb, replicate=True)
  # Other kernels ignore K: one compiled program for them whatever K is.
  power = hashes_per_row if kernel == "lsh" else 1
  sums = _sums_fn(mesh, kernel, power, qb, kb, form)(
    queries, keys, jnp.int32(n_keys), jnp.float32(bandwidth)
  )
  return sums[:n_queries]
