"""Choosing k examples from scores: top-k, bottom-k, inverse propensity, random.

All samplers are host-side NumPy, take `ids` (unique strings) and `scores`,
and return the selected ids sorted. The result depends only on the
(id, score) pairs, k and the seed: not on the input order, nor on how many
devices, processes or shards produced the scores. Two things make that so:

- Randomness is keyed by id: item i's uniform number is a 64-bit hash of
  (seed, id) (`id_uniforms`), not a draw from a stream.
- Every sampler ranks items by a per-item key and keeps the k largest; ties
  are broken by id (smaller id first), never by position.

Because keys are per item, a selection can also be computed shard by shard:
keep each shard's k best (key, id) pairs and take the k best of the union.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_U64 = np.uint64
# splitmix64 constants, and the FNV-1a 64-bit offset basis and prime.
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
_FNV_OFFSET = _U64(0xCBF29CE484222325)
_FNV_PRIME = _U64(0x100000001B3)


def rate_to_k(rate: float, n: int) -> int:
  """Number of items kept at sampling rate `rate` out of `n`.

  Rounds to the nearest integer, halves up: k = floor(rate * n + 1/2), so
  rate 0.2 of 1,000,003 keeps 200,001 and rate 0.25 of 2 keeps 1.

  Raises:
    ValueError: if rate is not in [0, 1] or n < 0.
  """
  if not (isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0):
    raise ValueError(f"rate={rate!r} must be a number in [0, 1].")
  if n < 0:
    raise ValueError(f"n={n} must be >= 0.")
  return min(n, int(math.floor(rate * n + 0.5)))


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijection of uint64 with full avalanche."""
  x = x + _GOLDEN
  x = (x ^ (x >> _U64(30))) * _MIX1
  x = (x ^ (x >> _U64(27))) * _MIX2
  return x ^ (x >> _U64(31))


def _as_ids(ids) -> np.ndarray:
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ValueError(f"ids must be one-dimensional, got shape {ids.shape}.")
  if ids.size and ids.dtype.kind != "U":
    if ids.dtype.kind == "O" and all(isinstance(i, str) for i in ids):
      ids = ids.astype(str)
    else:
      raise ValueError(f"ids must be strings, got dtype {ids.dtype}.")
  return ids.astype(str)


# Code points per chunk of `id_uniforms` (16 MB as UCS-4), whatever the ids.
_CHUNK_POINTS = 1 << 22


def _as_strings(ids) -> np.ndarray:
  """[n] ids as a NumPy array of str, without widening every id to the
  longest (a '<U' array is n x longest x 4 bytes)."""
  if isinstance(ids, np.ndarray) and ids.dtype.kind == "U":
    return _as_ids(ids)
  ids = np.asarray(ids, dtype=object)
  if ids.ndim != 1:
    raise ValueError(f"ids must be one-dimensional, got shape {ids.shape}.")
  if not all(isinstance(i, str) for i in ids):
    raise ValueError("ids must be strings.")
  return ids


def id_uniforms(ids: Sequence[str] | np.ndarray, seed: int) -> np.ndarray:
  """A uniform number in (0, 1) per id, a pure function of (seed, id).

  FNV-1a over the id's Unicode code points, started from splitmix64(seed)
  and finished with splitmix64: vectorised over ids, one pass per character
  position. Ids are hashed in chunks of similar length, so memory stays
  bounded by `_CHUNK_POINTS` code points however long the longest id is.

  Args:
    ids: [n] strings.
    seed: Any integer.

  Returns:
    [n] float64 in (0, 1).
  """
  ids = _as_strings(ids)
  n = ids.shape[0]
  if n == 0:
    return np.zeros((0,), np.float64)
  lengths = np.fromiter(map(len, ids), np.int64, n)
  seed_state = _splitmix64(np.array([seed & (2**64 - 1)], _U64))[0]
  h = np.empty(n, _U64)
  # Widths are powers of two: at most half of a chunk is padding.
  classes = np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
  for c in np.unique(classes):
    rows = np.flatnonzero(classes == c)
    width = 1 << int(c)
    step = max(1, _CHUNK_POINTS // width)
    for start in range(0, rows.size, step):
      part = rows[start : start + step]
      h[part] = _fnv1a(
        ids[part].astype(f"<U{width}"), lengths[part], seed_state
      )
  h = _splitmix64(h ^ lengths.astype(_U64))
  # Top 53 bits, centred in their cell: never 0 or 1.
  return ((h >> _U64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _fnv1a(ids: np.ndarray, lengths: np.ndarray, state: np.uint64):
  """[n] '<U{width}' ids -> [n] FNV-1a states over their code points."""
  n, width = ids.shape[0], ids.dtype.itemsize // 4
  # [n] '<U{width}' -> [n, width] code points (zero past each id's end).
  points = np.ascontiguousarray(ids).view(np.uint32).reshape(n, width)
  h = np.full(n, state ^ _FNV_OFFSET, _U64)
  for j in range(width):
    mixed = (h ^ points[:, j].astype(_U64)) * _FNV_PRIME
    h = np.where(j < lengths, mixed, h)
  return h


def _check(ids, scores, k: int, *, positive: bool = False):
  """Validated (ids, float64 scores)."""
  ids = _as_ids(ids)
  scores = np.asarray(scores, np.float64)
  if scores.shape != ids.shape:
    raise ValueError(
      f"ids {ids.shape} and scores {scores.shape} must have the same shape."
    )
  if ids.size == 0:
    raise ValueError("empty input: there are no ids to select from.")
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
    raise ValueError(f"k={k!r} must be an integer.")
  if not 0 <= k <= ids.size:
    raise ValueError(f"k={k} must be in [0, {ids.size}] (the number of ids).")
  bad = ~np.isfinite(scores)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(
      f"score of id {ids[i]!r} is {scores[i]}: scores must be finite "
      f"({int(bad.sum())} are not)."
    )
  if positive:
    bad = scores <= 0
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      raise ValueError(
        f"score of id {ids[i]!r} is {scores[i]}: inverse propensity "
        f"sampling needs scores > 0 ({int(bad.sum())} are not)."
      )
  return ids, scores


def _top_k_by_key(ids: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
  """Sorted ids of the k largest keys; ties at the cut go to smaller ids."""
  n = keys.shape[0]
  if k == 0:
    return np.zeros((0,), ids.dtype)
  if k == n:
    return np.sort(ids)
  cut = np.partition(keys, n - k)[n - k]  # the k-th largest key
  above = keys > cut
  tied = np.flatnonzero(keys == cut)
  need = k - int(above.sum())
  tied = tied[np.argsort(ids[tied], kind="stable")[:need]]
  return np.sort(np.concatenate([ids[above], ids[tied]]))


def top_k(ids, scores, k: int) -> np.ndarray:
  """The k ids with the highest scores (Ask-LLM; density top-k).

  Args:
    ids: [n] unique strings.
    scores: [n] finite scores.
    k: Number to keep, 0 <= k <= n.

  Returns:
    [k] selected ids, sorted.

  Raises:
    ValueError: on empty input, a bad k, mismatched shapes or a non-finite
      score (naming its id).
  """
  ids, scores = _check(ids, scores, k)
  return _top_k_by_key(ids, scores, k)


def bottom_k(ids, scores, k: int) -> np.ndarray:
  """The k ids with the lowest scores (density bottom-k; low perplexity).

  Same arguments, result and errors as `top_k`.
  """
  ids, scores = _check(ids, scores, k)
  return _top_k_by_key(ids, -scores, k)


def uniform_sample(ids, k: int, seed: int) -> np.ndarray:
  """k ids uniformly at random without replacement, keyed by (seed, id).

  Args:
    ids: [n] unique strings.
    k: Number to keep, 0 <= k <= n.
    seed: Any integer.

  Returns:
    [k] selected ids, sorted.

  Raises:
    ValueError: on empty input or a bad k.
  """
  ids, _ = _check(ids, np.zeros(np.shape(ids)), k)
  return _top_k_by_key(ids, id_uniforms(ids, seed), k)


def inverse_propensity_keys(ids, scores, seed: int) -> np.ndarray:
  """Gumbel keys log(1/score) + G, G = -log(-log u), u = id_uniforms.

  The k largest keys are a weighted sample without replacement with weights
  1/score (Efraimidis & Spirakis' u^(1/w) keys, in log form). Validates
  nothing: use `inverse_propensity_sample`.
  """
  u = id_uniforms(ids, seed)
  return -np.log(np.asarray(scores, np.float64)) - np.log(-np.log(u))


def inverse_propensity_sample(ids, scores, k: int, seed: int) -> np.ndarray:
  """k ids without replacement, with probability proportional to 1/score.

  DENSITY's sampler: a density score high in crowded regions becomes a low
  chance of being kept. The weights are 1/score, as in the paper's text and
  theorem; its Algorithm 2 prints p = S / sum(S), which would keep crowded
  regions instead, and is not what we implement. Sequential draws without
  replacement: the first kept item is i with probability
  (1/s_i) / sum_j (1/s_j), the next one likewise among the rest, and so on.

  Args:
    ids: [n] unique strings.
    scores: [n] finite scores > 0 (e.g. kernel sums or sketch scores).
    k: Number to keep, 0 <= k <= n.
    seed: Any integer; item i's randomness depends only on (seed, ids[i]).

  Returns:
    [k] selected ids, sorted.

  Raises:
    ValueError: on empty input, a bad k, mismatched shapes, or a score that
      is not finite or not > 0 (naming its id).
  """
  ids, scores = _check(ids, scores, k, positive=True)
  return _top_k_by_key(ids, inverse_propensity_keys(ids, scores, seed), k)
