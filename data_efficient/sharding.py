"""The one place that builds device meshes and shardings.

Every stage runs on a 2-D mesh ('data', 'model') over all devices of all
processes. Batches are split on 'data'. Parameters are placed by their
logical axis names (set in `models/t5.py`): the wide axes (vocab, mlp, heads)
go to 'model', the rest is replicated, as in T5X's default partitioning
rules. A 'model' size above 1 lets XL and XXL fit where one core cannot hold
the whole model. Row-parallel programs (kernel sums, sketches, k-means) split
their rows over every device instead (`shard_rows`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DATA = "data"
MODEL = "model"

# Logical axis -> mesh axis (None = replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
  ("batch", DATA),
  ("vocab", MODEL),
  ("mlp", MODEL),
  ("heads", MODEL),
  ("joined_kv", MODEL),
  ("embed", None),
  ("relpos_buckets", None),
)


def make_mesh(
  model_parallelism: int = 1, devices: list[jax.Device] | None = None
) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh over `devices` (default: every global device).

  Args:
    model_parallelism: Size of the 'model' axis; must divide the device count.
    devices: Devices to use, default `jax.devices()` (all processes).

  Raises:
    ValueError: if `model_parallelism` does not divide the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  if model_parallelism < 1 or len(devices) % model_parallelism:
    raise ValueError(
      f"model_parallelism={model_parallelism} must be a positive divisor "
      f"of the device count ({len(devices)})."
    )
  shape = (len(devices) // model_parallelism, model_parallelism)
  return jax.sharding.Mesh(
    np.asarray(devices).reshape(shape),
    (DATA, MODEL),
    axis_types=(jax.sharding.AxisType.Auto,) * 2,
  )


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Leading (batch) axis split over 'data', everything else replicated."""
  return jax.sharding.NamedSharding(mesh, jax.P(DATA))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.P())


def rows_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Leading (row) axis split over every device of `mesh`, all its axes.

  Unlike `batch_sharding`, a 'model' axis splits the rows further instead of
  holding copies: the placement of row-parallel programs (`jax.shard_map`
  over all mesh axes) that use no model parallelism.
  """
  return jax.sharding.NamedSharding(mesh, jax.P(mesh.axis_names))


def shard_rows(
  x: np.ndarray | jax.Array,
  mesh: jax.sharding.Mesh,
  multiple: int,
  *,
  replicate: bool = False,
) -> jax.Array:
  """float32 rows, zero-padded to a multiple of `multiple`, placed on `mesh`.

  Row-parallel programs take whole blocks of rows on each device. The padding
  rows are zeros after the real ones: callers know the real count, `len(x)`,
  and mask or cut what the padding produces.

  Args:
    x: [n, ...] rows: NumPy (cast and padded on the host) or JAX (cast and
      padded where it lives).
    mesh: The mesh to place the rows on.
    multiple: The padded row count is the smallest multiple of it that is at
      least n; a multiple of `mesh.size` unless `replicate`.
    replicate: Put every row on every device (`replicated`) instead of
      splitting the rows over the devices (`rows_sharding`).

  Returns:
    [n_pad, ...] float32 global array, n_pad = ceil(n / multiple) * multiple.

  Raises:
    ValueError: if split rows would not divide evenly over the devices.
  """
  if not replicate and multiple % mesh.size:
    raise ValueError(
      f"multiple={multiple} rows cannot be split evenly over {mesh.size} "
      "devices: pass a multiple of the mesh size."
    )
  xp = jnp if isinstance(x, jax.Array) else np
  x = xp.asarray(x, xp.float32)
  n = x.shape[0]
  n_pad = -(-n // multiple) * multiple
  if n_pad > n:  # A copy of the whole array: only when it is needed.
    x = xp.pad(x, [(0, n_pad - n)] + [(0, 0)] * (x.ndim - 1))
  placement = replicated(mesh) if replicate else rows_sharding(mesh)
  return jax.device_put(x, placement)


def _spec(
  shape: tuple[int, ...],
  logical: tuple[str | None, ...],
  mesh: jax.sharding.Mesh,
  rules: Mapping[str, str | None],
) -> jax.P:
  """Mesh spec for one leaf; an axis that does not divide stays replicated."""
  axes = []
  for size, name in zip(shape, logical, strict=True):
    mesh_axis = rules.get(name) if name else None
    if mesh_axis is not None and size % mesh.shape[mesh_axis]:
      mesh_axis = None
    axes.append(mesh_axis)
  return jax.P(*axes)


def param_shardings(
  boxed_params, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES
):
  """NamedShardings for a boxed (logically annotated) parameter tree.

  Args:
    boxed_params: Tree of `nn.LogicallyPartitioned` leaves, e.g. from
      `models.t5.abstract_params`.
    mesh: The mesh from `make_mesh`.
    rules: Logical-to-mesh axis rules.

  Returns:
    A tree of plain leaves (same structure as the unboxed params) holding
    `NamedSharding`s.
  """
  rules = dict(rules)

  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      spec = _spec(leaf.value.shape, tuple(leaf.names), mesh, rules)
    else:
      spec = jax.P()
    return jax.sharding.NamedSharding(mesh, spec)

  return jax.tree.map(
    one,
    boxed_params,
    is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
  )


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins a multi-process job (a TPU pod slice, or processes on one host).

  With no arguments JAX discovers the job from the environment (Cloud TPU
  VMs). On CPU, cross-process collectives use gloo.
  """
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(
    jax.config.jax_platforms
  ):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
  )


def local_mesh(model_parallelism: int = 1) -> jax.sharding.Mesh:
  """A mesh over this process's devices only.

  Scoring and embedding are embarrassingly parallel across hosts: each
  process scores its own share of the corpus on its own devices, so no step
  waits on another host, and hosts with uneven shares never deadlock. Model
  parallelism stays within a host (a TPU VM host holds 4-8 chips, enough
  for Flan-T5-XXL in bfloat16).
  """
  return make_mesh(model_parallelism, jax.local_devices())


def process_sum(tree):
  """Element-wise sum over processes of every process's host arrays.

  The reduction of a multi-process job's partial results (sketch counts,
  centroid sums, key histograms): each process passes arrays of the same
  shapes and dtypes and gets the sums back as NumPy arrays, on every
  process. It runs as one jitted sum over a global mesh of every device
  (one row per device: the process's value on its first device, zeros on
  the others), so JAX's collectives move the data. Integer sums are exact,
  whatever the process count; float sums depend on the summation order.
  With one process the arrays come back unchanged (as NumPy).
  """
  leaves, treedef = jax.tree.flatten(tree)
  leaves = [np.asarray(leaf) for leaf in leaves]
  if jax.process_count() == 1:
    return jax.tree.unflatten(treedef, leaves)
  for leaf in leaves:
    if leaf.dtype.itemsize > 4 and not jax.config.jax_enable_x64:
      raise ValueError(
        f"process_sum of {leaf.dtype}: JAX holds 32-bit values only "
        "(jax_enable_x64 is off); pass int32 or float32 partial results."
      )
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("devices",))
  rows = jax.sharding.NamedSharding(mesh, jax.P("devices"))
  summed = []
  for leaf in leaves:
    parts = [
      jax.device_put((leaf if i == 0 else np.zeros_like(leaf))[None], device)
      for i, device in enumerate(jax.local_devices())
    ]
    stacked = jax.make_array_from_single_device_arrays(
      (jax.device_count(), *leaf.shape), rows, parts
    )
    total = _sum_over_devices(mesh)(stacked)
    summed.append(np.asarray(total.addressable_data(0)))
  return jax.tree.unflatten(treedef, summed)


@functools.cache
def _sum_over_devices(mesh: jax.sharding.Mesh):
  return jax.jit(lambda x: jnp.sum(x, axis=0), out_shardings=replicated(mesh))


def process_gather(x: np.ndarray) -> np.ndarray:
  """Every process's rows of `x`, concatenated in process order.

  Each process passes [n_p, ...] rows of one dtype and trailing shape; n_p
  may differ. Every process gets the same [sum n_p, ...] array (NumPy).
  Meant for small things (k-means' initial sample, boundary candidates), as
  every process holds the whole result. One process: `x` unchanged.
  """
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils

  counts = process_sum(
    np.eye(jax.process_count(), dtype=np.int32)[jax.process_index()] * len(x)
  )
  padded = np.zeros((int(counts.max()), *x.shape[1:]), x.dtype)
  padded[: len(x)] = x
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return np.concatenate(
    [part[:n] for part, n in zip(gathered, counts, strict=True)]
  )


def process_gather_strings(strings: Sequence[str]) -> list[str]:
  """Every process's strings, concatenated in process order (`process_gather`
  of their UTF-8 bytes): for few of them, e.g. the ids of a sample."""
  encoded = [s.encode() for s in strings]
  lengths = process_gather(np.fromiter(map(len, encoded), np.int32))
  data = process_gather(np.frombuffer(b"".join(encoded), np.uint8)).tobytes()
  ends = np.cumsum(lengths)
  return [
    data[end - n : end].decode() for n, end in zip(lengths, ends, strict=True)
  ]


@contextlib.contextmanager
def fail_together(what: str) -> Iterator[None]:
  """Makes an error in the block an error on every process.

  A process that raised and exited would leave the others blocked in their
  next collective while it waits for them in JAX's shutdown barrier (on CPU
  with gloo, neither had ended after minutes). Instead every process
  finishes the block, they exchange whether it failed (one `process_sum`),
  and then a failed process raises its own error and the others a
  `RuntimeError` naming the failed processes. The block must run no
  collective itself, as a failed process skips the rest of it. One process:
  the block's error, unchanged.
  """
  error = None
  try:
    yield
  except Exception as e:  # re-raised below, after the others know
    error = e
  failed = np.zeros(jax.process_count(), np.int32)
  failed[jax.process_index()] = error is not None
  failed = np.flatnonzero(process_sum(failed))
  if error is not None:
    raise error
  if failed.size:
    raise RuntimeError(
      f"{what} failed on process {', '.join(map(str, failed))}: see its "
      "output for the error."
    )


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
