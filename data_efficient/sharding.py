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
import pyarrow as pa

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


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is at least `n`."""
  return -(-n // multiple) * multiple


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
  n_pad = round_up(n, multiple)
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
  *,
  heartbeat_timeout: int = 100,
) -> None:
  """Joins a multi-process job (a TPU pod slice, or processes on one host).

  With no arguments JAX discovers the job from the environment (Cloud TPU
  VMs). On CPU, cross-process collectives use gloo.

  A process that dies (killed, preempted) does not leave the others waiting
  for it in a collective: every other process aborts ("Terminating process
  because the JAX distributed service detected fatal errors"), at once if
  it was process 0 (which runs the coordination service), else once it has
  sent no heartbeat for `heartbeat_timeout` seconds (measured here: 99 s
  with JAX's default of 100, 5-10 s with 10). Rerun the whole job to
  resume.
  """
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(
    jax.config.jax_platforms
  ):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    heartbeat_timeout_seconds=heartbeat_timeout,
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


def process_rows_sharding() -> jax.sharding.NamedSharding:
  """[process_count, ...] arrays whose row p lives on process p's first
  device (its lowest device id), and nowhere else."""
  firsts = [
    min((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)
    for p in range(jax.process_count())
  ]
  mesh = jax.sharding.Mesh(np.asarray(firsts), ("processes",))
  return jax.sharding.NamedSharding(mesh, jax.P("processes"))


def process_row(x) -> jax.Array:
  """This process's `x` as its row of a [process_count, ...] global array.

  Every process passes its own value (e.g. partial sums: they differ);
  nothing moves between processes. Orbax saves a process's state of its own
  in this form in a multi-process job: it refuses host-local arrays there,
  and this process can address its row alone.
  """
  x = np.asarray(x)
  placement = process_rows_sharding()
  device = placement.mesh.devices[jax.process_index()]
  return jax.make_array_from_single_device_arrays(
    (jax.process_count(), *x.shape),
    placement,
    [jax.device_put(x[None], device)],
  )


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
  if not counts.any():  # Nothing to gather (an all-gather of none fails).
    return x
  padded = np.zeros((int(counts.max()), *x.shape[1:]), x.dtype)
  padded[: len(x)] = x
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return np.concatenate(
    [part[:n] for part, n in zip(gathered, counts, strict=True)]
  )


# Bits per int32 digit of `process_sum_exact`: sums of 2^15 processes fit.
_DIGIT_BITS = 16


def process_sum_exact(counts: Sequence[int] | np.ndarray) -> np.ndarray:
  """Exact sums over processes of non-negative integer counts (int64).

  `process_sum` adds int32, which a count of rows (or of their bytes) summed
  over hosts can overflow; here each count travels as 16-bit digits, so sums
  are exact up to 2^62 for up to 2^15 processes.

  Args:
    counts: [n] integers in [0, 2^47).

  Returns:
    [n] int64 sums, the same on every process.
  """
  counts = np.asarray(counts, np.int64)
  if jax.process_count() == 1:
    return counts
  if counts.size and (counts.min() < 0 or counts.max() >= 1 << 47):
    raise ValueError(f"counts {counts} must be in [0, 2^47).")
  shifts = np.arange(3, dtype=np.int64) * _DIGIT_BITS
  digits = (counts[:, None] >> shifts) & ((1 << _DIGIT_BITS) - 1)
  summed = process_sum(digits.astype(np.int32)).astype(np.int64)
  return (summed << shifts).sum(axis=1)


def process_gather_table(table: pa.Table) -> pa.Table:
  """Every process's rows of a small Arrow table, concatenated in process
  order, on every process (strings of any length, float64 exactly).

  Each process sends its rows as an Arrow IPC stream behind an 8-byte
  length, zero-padded to a power of two (so few shapes are compiled), as
  `process_gather` bytes. Every process passes the same schema. One
  process: `table` unchanged.
  """
  if jax.process_count() == 1:
    return table
  sink = pa.BufferOutputStream()
  with pa.ipc.new_stream(sink, table.schema) as writer:
    writer.write_table(table)
  stream = np.frombuffer(sink.getvalue(), np.uint8)
  blob = np.zeros(1 << (8 + stream.size - 1).bit_length(), np.uint8)
  blob[:8] = np.frombuffer(np.int64(stream.size).tobytes(), np.uint8)
  blob[8 : 8 + stream.size] = stream
  gathered = process_gather(blob)
  tables, at = [], 0
  while at < gathered.size:
    size = int(gathered[at : at + 8].view(np.int64)[0])
    tables.append(
      pa.ipc.open_stream(gathered[at + 8 : at + 8 + size]).read_all()
    )
    at += 1 << (8 + size - 1).bit_length()
  return pa.concat_tables(tables)


def process_gather_strings(strings: Sequence[str]) -> list[str]:
  """Every process's strings, concatenated in process order, on every
  process (`process_gather_table`): for few of them, e.g. a sample's ids."""
  table = pa.table({"s": pa.array(list(strings), pa.string())})
  return process_gather_table(table).column(0).to_pylist()


class ProcessError(RuntimeError):
  """Another process of the job failed; its own error is in its output."""


@contextlib.contextmanager
def all_or_none(what: str) -> Iterator[None]:
  """Runs a block of this process's own work; if it fails on any process,
  it fails on every one.

  A process that raised alone would leave the others waiting in their next
  collective until JAX's shutdown barrier gives up (minutes). Instead, every
  process ends the block with one collective (the block itself must hold
  none): the process that failed re-raises its error, the others raise
  `ProcessError` quoting it, so the whole job stops at once with the cause
  on process 0's output. One process: the block runs as it is.

  Args:
    what: The work, for the message (e.g. "select's counting pass").

  Raises:
    ProcessError: on the processes that did not fail, if one did.
  """
  if jax.process_count() == 1:
    yield
    return
  try:
    yield
  except Exception as e:
    _agree(what, f"{type(e).__name__}: {e}")
    raise
  _agree(what, None)


def _agree(what: str, error: str | None) -> None:
  """One collective: on a process that did not fail (`error` None), raises
  ProcessError if another did."""
  index, count = jax.process_index(), jax.process_count()
  failed = process_sum(
    np.eye(count, dtype=np.int32)[index] * (error is not None)
  )
  if not failed.any():
    return
  mine = [(index, error[:2000])] if error is not None else []
  errors = process_gather_table(
    pa.table(
      {
        "process": pa.array([p for p, _ in mine], pa.int32()),
        "error": pa.array([e for _, e in mine], pa.string()),
      }
    )
  ).to_pylist()
  if error is None:
    first = errors[0]
    raise ProcessError(
      f"process {first['process']} of {count} failed in {what}: "
      f"{first['error']}"
      + (f" ({len(errors) - 1} more failed)" if len(errors) > 1 else "")
    )


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
