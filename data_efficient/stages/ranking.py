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
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# A stream of batches of rows: [n] float64 keys (finite) and [n] string ids.
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
    self.rng = np.random.default_rng(self.seed)

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

  Args:
    batches: Called once per pass; each call streams the same rows.
    k: 0 <= k <= the number of rows.
    sample_rows: Rows sampled per pass to narrow the interval.
    collect_rows: Rows collected, at most, to finish.
    collect_bytes: Bytes of ids collected, at most, to finish.

  Returns:
    The k-th row: keep every row at or before it (for k = 0, a row before
    every finite key).

  Raises:
    ValueError: if there are fewer than k rows, or rows repeat (the same id
      and key) too often to tell apart.
  """
  if k == 0:
    return Row(math.inf, "")
  lo = hi = None  # The k-th row is after lo and at or before hi.
  rank = k  # Its rank among the rows after lo.
  plo = phi = None  # (plo, phi]: where it probably is, inside (lo, hi].
  stalled = 0
  for seed in itertools.count():
    scan = _Pass(sample_rows, collect_rows, collect_bytes, seed)
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
    low, mid, high = scan.counts
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
    if size == mid and scan.collecting:
      keys, ids = _sorted(np.concatenate(scan.keys), pa.concat_arrays(scan.ids))
      return Row(float(keys[rank - 1]), ids[rank - 1].as_py())
    plo = phi = None
    if size == mid:
      plo, phi = _proposal(scan, rank, mid)
  raise AssertionError("unreachable")


def _proposal(scan: _Pass, rank: int, count: int) -> tuple[Row | None, ...]:
  """Sampled rows a few standard deviations either side of rank `rank`."""
  keys, ids = _sorted(scan.sample_keys, scan.sample_ids)
  m = keys.size
  target = rank / count * m
  # Four standard deviations of a sample rank (a quarter of a tiny sample).
  spread = min(4 * math.sqrt(m) + 2, m / 4)
  at = (math.floor(target - spread) - 1, math.ceil(target + spread))
  return tuple(
    Row(float(keys[i]), ids[i].as_py()) if 0 <= i < m else None for i in at
  )
