"""The k-th row in (key descending, id ascending) order, streamed, exact.

Every sampler keeps the k rows with the largest per-item keys, ties going to
the smaller id (`sampling`). That is the same as finding the k-th row of the
order and keeping every row at or before it, which `kth` does over passes of
a stream of (keys, ids) batches, in memory that does not grow with the
number of rows: a streaming quickselect.

Each pass keeps, of the rows inside an interval of the order known to hold
the k-th row, their count, a uniform sample (`sample_rows`) and, while they
are few (`collect_rows`, `collect_bytes`), the rows themselves. Once they are
collected, sorting them gives the answer; until then, the next pass narrows
the interval to the sampled rows around the target rank, about 64 times
fewer rows per pass (C4's 365M rows: three passes). The sample only decides
how fast the interval shrinks, never the answer, which depends only on the
set of (key, id) pairs: not on the order of the rows or their batches.

In a multi-process job every process streams its own share of the rows and
the passes run in lockstep: after each pass the counts are summed over the
processes (`sharding.process_sum_exact`), the sample is drawn from every
process in proportion to its rows inside the interval, and the sample or
the collected rows are gathered to every process
(`sharding.process_gather_table`), so every process takes the same
decisions and finds the same row. The gather pads every process's part to
the largest one's, so the limits bound the process count times the largest
part: rows spread unevenly over the processes take a pass or so more. A
pass that fails on one process (an unreadable shard, a bad score) fails on
all (`sharding.all_or_none`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_efficient import sharding

# A stream of batches of rows: [n] float64 keys (finite) and [n] string ids.
# In a multi-process job, each process's stream is its share of the rows.
Batches = Callable[[], Iterable[tuple[np.ndarray, pa.Array]]]


@dataclasses.dataclass(frozen=True)
class Row:
  """A position in the order: rows with a larger key, or the same key and a
  smaller id, come before it."""

  key: float
  id: str


def at_or_before(keys: np.ndarray, ids: pa.Array, row: Row | None):
  """[n] bool: whether each row comes at or before `row` (None: after all).

  Args:
    keys: [n] float64.
    ids: [n] strings.
    row: A position in the order, or None for one past the last row.
  """
  if row is None:
    return np.ones(keys.shape, bool)
  mask = keys > row.key
  tied = np.flatnonzero(keys == row.key)
  if tied.size:
    ids = pc.less_equal(ids.take(tied), row.id)
    mask[tied] = ids.to_numpy(zero_copy_only=False)
  return mask


def _sorted(keys: np.ndarray, ids: pa.Array) -> tuple[np.ndarray, pa.Array]:
  table = pa.table({"key": keys, "id": ids})
  order = pc.sort_indices(table, [("key", "descending"), ("id", "ascending")])
  return keys[order.to_numpy()], ids.take(order)


@dataclasses.dataclass
class _Pass:
  """What one pass keeps of the rows inside (lo, hi], split by a proposal
  (plo, phi]: counts below, inside and above it, a sample and the rows
  inside it while they are few."""

  sample_rows: int
  collect_rows: int
  collect_bytes: int
  seed: int
  counts: list[int] = dataclasses.field(default_factory=lambda: [0, 0, 0])
  keys: list[np.ndarray] = dataclasses.field(default_factory=list)
  ids: list[pa.Array] = dataclasses.field(default_factory=list)
  bytes: int = 0
  collecting: bool = True
  priorities: np.ndarray = dataclasses.field(
    default_factory=lambda: np.zeros(0)
  )
  sample_keys: np.ndarray = dataclasses.field(
    default_factory=lambda: np.zeros(0)
  )
  sample_ids: pa.Array = dataclasses.field(
    default_factory=lambda: pa.array([], pa.string())
  )

  def __post_init__(self):
    self.rng = np.random.default_rng([self.seed, jax.process_index()])

  def add(self, keys: np.ndarray, ids: pa.Array) -> None:
    """Adds the rows inside the proposal."""
    self.counts[1] += keys.size
    if self.collecting:
      self.bytes += pc.sum(pc.binary_length(ids)).as_py() or 0
      # A few thousand rows are collected whatever their size, so that an
      # uncollected interval is always large enough to narrow.
      self.collecting = self.counts[1] <= self.collect_rows and (
        self.bytes <= self.collect_bytes or self.counts[1] <= 4096
      )
      if self.collecting:
        self.keys.append(keys)
        self.ids.append(ids)
      else:
        self.keys, self.ids = [], []
    # A bottom-m sample by random priority is uniform without replacement.
    priorities = np.concatenate([self.priorities, self.rng.random(keys.size)])
    keys = np.concatenate([self.sample_keys, keys])
    ids = pa.concat_arrays([self.sample_ids, ids])
    if priorities.size > self.sample_rows:
      keep = np.argpartition(priorities, self.sample_rows)[: self.sample_rows]
      priorities, keys, ids = priorities[keep], keys[keep], ids.take(keep)
    self.priorities, self.sample_keys, self.sample_ids = priorities, keys, ids


def kth(
  batches: Batches,
  k: int,
  *,
  sample_rows: int = 1 << 16,
  collect_rows: int = 1 << 18,
  collect_bytes: int = 1 << 26,
) -> Row:
  """The k-th row of the order over every pass of `batches` (exact).

  Every process of a job calls it, with its own share of the rows, and gets
  the same row.

  Args:
    batches: Called once per pass; each call streams the same rows.
    k: 0 <= k <= the number of rows (of all processes).
    sample_rows: Rows sampled per pass to narrow the interval (at most;
      processes x the largest process's part).
    collect_rows: Rows collected, at most, to finish (likewise).
    collect_bytes: Bytes of ids collected, at most, to finish (likewise).

  Returns:
    The k-th row: keep every row at or before it (for k = 0, a row before
    every finite key).

  Raises:
    ValueError: if there are fewer than k rows, or rows repeat (the same id
      and key) too often to tell apart.
    sharding.ProcessError: if a pass failed on another process.
  """
  if k == 0:
    return Row(math.inf, "")
  lo = hi = None  # The k-th row is after lo and at or before hi.
  rank = k  # Its rank among the rows after lo.
  plo = phi = None  # (plo, phi]: where it probably is, inside (lo, hi].
  stalled = 0
  for seed in itertools.count():
    scan = _Pass(sample_rows, collect_rows, collect_bytes, seed)
    with sharding.all_or_none(f"pass {seed} to find the k-th row"):
      for keys, ids in batches():
        inside = at_or_before(keys, ids, hi)
        if lo is not None:
          inside &= ~at_or_before(keys, ids, lo)
        for region, row, before in ((0, plo, True), (2, phi, False)):
          if row is not None:
            mask = inside & (at_or_before(keys, ids, row) == before)
            scan.counts[region] += int(mask.sum())
            inside &= ~mask
        index = np.flatnonzero(inside)
        scan.add(keys[index], ids.take(index))
    low, high, stopped, mids, ids_bytes = _totals(scan)
    mid = int(mids.sum())
    if rank > low + mid + high:
      raise ValueError(f"k={k} is more than the {low + mid + high} rows.")
    if rank <= low:
      hi, size = plo, low
    elif rank > low + mid:
      lo, rank, size = phi, rank - low - mid, high
    else:
      lo, hi, rank, size = plo or lo, phi or hi, rank - low, mid
    stalled = stalled + 1 if size == low + mid + high else 0
    if stalled > 8:
      raise ValueError(
        f"{size} rows do not come apart: they share one key and id; give "
        "each example a unique id."
      )
    # What is gathered is padded to the largest process's part
    # (`sharding.process_gather_table`), so the limits bound count x the
    # largest part; a few thousand rows are gathered whatever their size.
    count = mids.size
    collected = not stopped and (
      count * mids.max() <= 4096
      or (
        count * mids.max() <= collect_rows
        and count * ids_bytes.max() <= collect_bytes
      )
    )
    if size == mid and collected:
      keys, ids = _gathered(
        np.concatenate([np.zeros(0), *scan.keys]),
        pa.concat_arrays([pa.array([], pa.string()), *scan.ids]),
      )
      return Row(float(keys[rank - 1]), ids[rank - 1].as_py())
    plo = phi = None
    if size == mid:
      # Each process's part of the sample is in proportion to its rows
      # inside, the largest part sample_rows / count.
      share = sample_rows * scan.counts[1] / (count * mids.max())
      take = min(scan.priorities.size, math.ceil(share))
      part = np.argsort(scan.priorities, kind="stable")[:take]
      keys, ids = _gathered(scan.sample_keys[part], scan.sample_ids.take(part))
      plo, phi = _proposal(keys, ids, rank, mid)
  raise AssertionError("unreachable")


def _totals(scan: _Pass) -> tuple[int, int, bool, np.ndarray, np.ndarray]:
  """A pass's counts over every process: rows below and above the proposal,
  whether any process stopped collecting, and each process's rows inside it
  and bytes of their ids (as collected)."""
  index, count = jax.process_index(), jax.process_count()
  each = np.zeros((2, count), np.int64)
  each[:, index] = scan.counts[1], scan.bytes
  low, high, stopped, *each = sharding.process_sum_exact(
    [scan.counts[0], scan.counts[2], not scan.collecting, *each.ravel()]
  ).tolist()
  mids, ids_bytes = np.reshape(each, (2, count))
  return low, high, bool(stopped), mids, ids_bytes


def _gathered(keys: np.ndarray, ids: pa.Array) -> tuple[np.ndarray, pa.Array]:
  """Every process's rows, sorted in the order (the same on every process)."""
  rows = sharding.process_gather_table(pa.table({"key": keys, "id": ids}))
  return _sorted(
    rows.column("key").to_numpy(), rows.column("id").combine_chunks()
  )


def _proposal(
  keys: np.ndarray, ids: pa.Array, rank: int, count: int
) -> tuple[Row | None, ...]:
  """Sampled rows (sorted) a few standard deviations either side of rank
  `rank` of the `count` rows sampled."""
  m = keys.size
  target = rank / count * m
  # Four standard deviations of a sample rank (a quarter of a tiny sample).
  spread = min(4 * math.sqrt(m) + 2, m / 4)
  at = [math.floor(target - spread) - 1, math.ceil(target + spread)]
  if at[0] < 0 and at[1] >= m - 1 and m > 1:
    # Bracketing the whole sample could leave the interval whole (a sample
    # of a few rows, as a process with few of them sends): leave out the
    # sampled row farther from the target.
    if target < m / 2:
      at[1] = m - 2
    else:
      at[0] = 0
  return tuple(
    Row(float(keys[i]), ids[i].as_py()) if 0 <= i < m else None for i in at
  )
