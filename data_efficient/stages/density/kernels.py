"""Kernel functions k(x, y) for density scores, and their default bandwidth.

Every kernel here is radial: a function of the squared distance between two
vectors, so one [n, m] distance tile (one matmul) serves them all.

- 'gaussian':  exp(-||x - y||^2 / (2 h^2)).
- 'laplacian': exp(-||x - y|| / h).
- 'cosine':    exp((cos(x, y) - 1) / h). On the unit sphere
  ||x - y||^2 = 2 - 2 cos(x, y), so this is the Gaussian kernel of the
  L2-normalised vectors with 2 h_gauss^2 = 2 h: inputs are normalised first.
- 'lsh':       p(c)^K, the probability that K independent p-stable
  (Gaussian) L2 hashes floor((a.x + b) / w), a ~ N(0, I), b ~ U[0, w), all
  agree on x and y, where one hash agrees with probability (Datar et al.,
  2004) p(c) = 1 - 2 Phi(-w/c) - 2 / (sqrt(2 pi) (w/c)) (1 - exp(-(w/c)^2/2)),
  p(0) = 1, for c = ||x - y||. The bandwidth is the hash width w; K is
  `hashes_per_row`. This is the kernel whose sum the RACE sketch
  (`sketch.py`) estimates, so the exact sum with it is the sketch's ground
  truth. p alone decays only like w / (2.5 c); p^K like (w / (2.5 c))^K.

Default bandwidth (`default_bandwidth`): the bandwidth at which two points at
the median pairwise distance of the data (on a seeded sample) have kernel
value `median_kernel_value`. One rule for all four kernels, tied to the
data's scale (a fixed width such as w = 1 on unit vectors makes the LSH
kernel nearly constant: about 10 hash values per row), with a per-kernel
value (`default_kernel_value`): 0.1, except 0.03 for 'lsh' with K > 1.
Why 0.03: p^K is at best Laplacian-shaped (p(c/w)^K -> v^(c/m) as K grows
with k(m) = v fixed), which separates clusters less than a Gaussian with the
same value at the median, so it needs a smaller value; too small a value
lets every point's own term (k(x, x) = 1) outweigh its neighbours in small
clusters. docs/stages.md gives the measurements.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from data_efficient.stages import configs

Kernel = str  # one of KERNELS
KERNELS = configs.KERNELS

# Squared distances below this fraction of ||x||^2 are float32 round-off of
# ||x||^2 + ||y||^2 - 2 x.y (a point against itself gives ~1e-7, i.e. a
# distance of ~3e-4): they are set to zero, which makes duplicates exact for
# the kernels that are not smooth at zero (laplacian, lsh).
_SNAP = 32 * float(np.finfo(np.float32).eps)

DEFAULT_KERNEL_VALUE = 0.1
# 'lsh' with K > 1 hashes (K = 1 keeps 0.1, what runs before K resolved).
DEFAULT_SHARP_LSH_KERNEL_VALUE = 0.03


def default_kernel_value(kernel: str, hashes_per_row: int = 1) -> float:
  """The default rule's kernel value at the median pairwise distance."""
  if kernel == "lsh" and hashes_per_row > 1:
    return DEFAULT_SHARP_LSH_KERNEL_VALUE
  return DEFAULT_KERNEL_VALUE


def check_kernel(
  kernel: str, bandwidth: float, hashes_per_row: int = 1
) -> None:
  """Raises ValueError for an unknown kernel, a non-positive bandwidth or
  hash count."""
  if isinstance(hashes_per_row, bool) or not (
    isinstance(hashes_per_row, numbers.Integral) and hashes_per_row >= 1
  ):
    raise ValueError(f"hashes_per_row={hashes_per_row!r} must be an int >= 1.")
  if kernel not in KERNELS:
    raise ValueError(f"kernel={kernel!r} is not one of {KERNELS}.")
  if not (
    isinstance(bandwidth, numbers.Real) and math.isfinite(float(bandwidth))
  ):
    raise ValueError(f"bandwidth={bandwidth!r} must be a finite number.")
  if bandwidth <= 0:
    raise ValueError(f"bandwidth={bandwidth} must be > 0.")


def normalize_inputs(kernel: str) -> bool:
  """Whether `kernel` works on L2-normalised vectors ('cosine')."""
  return kernel == "cosine"


def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows scaled to unit length; all-zero rows stay zero."""
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(norm, jnp.finfo(x.dtype).tiny)


def squared_distances_from_dot(
  dot: jax.Array, x_sqnorm: jax.Array, y_sqnorm: jax.Array, snap: bool
) -> jax.Array:
  """||x - y||^2 from x.y and the squared norms, clipped at zero.

  Args:
    dot: [n, m] inner products x_i . y_j.
    x_sqnorm: [n] squared norms of x.
    y_sqnorm: [m] squared norms of y; +inf marks a padding column, whose
      distance is then +inf (kernel value 0).
    snap: Set round-off-sized distances (< 32 eps ||x||^2) to exactly zero.

  Returns:
    [n, m] squared distances.
  """
  # [n, 1] + [1, m] - [n, m] -> [n, m]
  sqdist = x_sqnorm[:, None] + y_sqnorm[None, :] - 2.0 * dot
  sqdist = jnp.maximum(sqdist, 0.0)
  if snap:
    sqdist = jnp.where(sqdist <= (_SNAP * x_sqnorm)[:, None], 0.0, sqdist)
  return sqdist


def lsh_collision_probability(
  distance: jax.Array, width: float | jax.Array
) -> jax.Array:
  """P[floor((a.x + b)/w) = floor((a.y + b)/w)] at ||x - y|| = distance.

  With t = w / c: p = erf(t / sqrt 2) - sqrt(2/pi) / t (1 - exp(-t^2 / 2)),
  which is Datar et al.'s 1 - 2 Phi(-t) - 2 / (sqrt(2 pi) t) (1 - e^{-t^2/2})
  written with erf and expm1 to keep precision at small t. p(0) = 1 and
  p(inf) = 0.

  Args:
    distance: Distances c >= 0 (any shape); +inf is allowed.
    width: The hash width w > 0.

  Returns:
    Collision probabilities, same shape as `distance`.
  """
  s = distance / width  # s = 1 / t; s = 0 gives t = inf and p = 1.
  inv_s = 1.0 / s
  p = jax.lax.erf(inv_s * (1.0 / math.sqrt(2.0))) + math.sqrt(
    2.0 / math.pi
  ) * s * jnp.expm1(-0.5 * inv_s * inv_s)
  return jnp.where(jnp.isinf(s), 0.0, jnp.where(s == 0, 1.0, p))


def kernel_from_squared_distances(
  sqdist: jax.Array,
  kernel: str,
  bandwidth: float | jax.Array,
  hashes_per_row: int = 1,
) -> jax.Array:
  """k as a function of ||x - y||^2 (inputs already normalised for 'cosine').

  Args:
    sqdist: Squared distances (any shape), +inf allowed (gives 0).
    kernel: One of `KERNELS`.
    bandwidth: h (or the hash width w for 'lsh').
    hashes_per_row: 'lsh' only: the power K of the collision probability
      (the other kernels ignore it).

  Returns:
    Kernel values, same shape as `sqdist`.
  """
  if kernel == "gaussian":
    return jnp.exp(sqdist * (-0.5 / (bandwidth * bandwidth)))
  if kernel == "cosine":
    # cos - 1 = -||x - y||^2 / 2 for unit vectors.
    return jnp.exp(sqdist * (-0.5 / bandwidth))
  if kernel == "laplacian":
    return jnp.exp(jnp.sqrt(sqdist) * (-1.0 / bandwidth))
  if kernel == "lsh":
    p = lsh_collision_probability(jnp.sqrt(sqdist), bandwidth)
    return p if hashes_per_row == 1 else p**hashes_per_row
  raise ValueError(f"kernel={kernel!r} is not one of {KERNELS}.")


def kernel_matrix(
  x: jax.Array,
  y: jax.Array,
  kernel: Kernel,
  bandwidth: float,
  hashes_per_row: int = 1,
) -> jax.Array:
  """The [n, m] matrix k(x_i, y_j) for small inputs (one tile, no blocking).

  Args:
    x: [n, d] vectors.
    y: [m, d] vectors.
    kernel: One of `KERNELS`.
    bandwidth: h, or the LSH width w.
    hashes_per_row: 'lsh' only: the power K of the collision probability.

  Returns:
    [n, m] float32 kernel values.
  """
  check_kernel(kernel, bandwidth, hashes_per_row)
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if normalize_inputs(kernel):
    x, y = l2_normalize(x), l2_normalize(y)
  sqdist = squared_distances_from_dot(
    x @ y.T,
    jnp.sum(x * x, axis=-1),
    jnp.sum(y * y, axis=-1),
    snap=kernel in ("laplacian", "lsh"),
  )
  return kernel_from_squared_distances(
    sqdist, kernel, bandwidth, hashes_per_row
  )


def _lsh_probability_np(t: float) -> float:
  """Host float64 p as a function of t = w / c."""
  return math.erf(t / math.sqrt(2.0)) + math.sqrt(2.0 / math.pi) / t * (
    math.expm1(-0.5 * t * t)
  )


def bandwidth_for_kernel_value(
  distance: float, kernel: Kernel, value: float, hashes_per_row: int = 1
) -> float:
  """The bandwidth h with k(distance) = value (0 < value < 1).

  For 'cosine', `distance` is the Euclidean distance between the normalised
  vectors (sqrt(2 - 2 cos)); for 'lsh', k = p^K with K = `hashes_per_row`.
  """
  if not 0.0 < value < 1.0:
    raise ValueError(f"median_kernel_value={value} must be in (0, 1).")
  if not distance > 0.0:
    raise ValueError(
      f"the reference distance is {distance}: the sample has (nearly) only "
      "duplicate points; pass an explicit bandwidth."
    )
  log_v = -math.log(value)
  if kernel == "gaussian":
    return distance / math.sqrt(2.0 * log_v)
  if kernel == "cosine":
    return 0.5 * distance * distance / log_v
  if kernel == "laplacian":
    return distance / log_v
  if kernel == "lsh":
    # p is increasing in t = w / c: bisect for p(t) = value^(1/K).
    target = value ** (1.0 / hashes_per_row)
    lo, hi = 1e-12, 1.0
    while _lsh_probability_np(hi) < target:
      hi *= 2.0
    for _ in range(200):
      mid = 0.5 * (lo + hi)
      lo, hi = (mid, hi) if _lsh_probability_np(mid) < target else (lo, mid)
    return 0.5 * (lo + hi) * distance
  raise ValueError(f"kernel={kernel!r} is not one of {KERNELS}.")


def median_pairwise_distance(
  x: np.ndarray,
  *,
  normalize: bool = False,
  sample_size: int = 1000,
  seed: int = 0,
) -> float:
  """Median distance over distinct pairs of a seeded sample of rows of x.

  Args:
    x: [n, d] vectors (n >= 2).
    normalize: L2-normalise the rows first.
    sample_size: At most this many rows are used (chosen without replacement
      with `numpy.random.default_rng(seed)`).
    seed: Seed of the sample.

  Returns:
    The median, in float64.
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(
      f"need at least 2 vectors of shape [n, d] to set a bandwidth, got "
      f"shape {x.shape}."
    )
  if not np.isfinite(x).all():
    raise ValueError("the vectors contain NaN or inf.")
  if x.shape[0] > sample_size:
    rng = np.random.default_rng(seed)
    x = x[np.sort(rng.choice(x.shape[0], sample_size, replace=False))]
  if normalize:
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
  sq = np.sum(x * x, axis=1)
  sqdist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
  upper = np.triu_indices(x.shape[0], k=1)
  return float(np.sqrt(np.median(sqdist[upper])))


def default_bandwidth(
  x: np.ndarray,
  kernel: Kernel,
  *,
  hashes_per_row: int = 1,
  median_kernel_value: float | None = None,
  sample_size: int = 1000,
  seed: int = 0,
) -> float:
  """The bandwidth (LSH width) that gives k = v at the median distance.

  The median pairwise distance m is measured on a seeded sample of at most
  `sample_size` rows; the result solves k(m) = v = `median_kernel_value`.
  With v = 0.1: gaussian h = m / sqrt(2 ln 10), laplacian h = m / ln 10,
  cosine h = (1 - median cos) / ln 10, lsh (K = 1) w ~= m / 3.94 (by
  bisection; for K > 1, p(m / w) = v^(1/K)). Larger values give wider,
  smoother kernels.

  Args:
    x: [n, d] vectors (e.g. a sample of the embeddings).
    kernel: One of `KERNELS`.
    hashes_per_row: 'lsh' only: the kernel's power K.
    median_kernel_value: Kernel value at the median distance, in (0, 1);
      None = `default_kernel_value(kernel, hashes_per_row)`.
    sample_size: Rows used to estimate the median distance.
    seed: Seed of the row sample.

  Returns:
    A positive float.
  """
  if kernel not in KERNELS:
    raise ValueError(f"kernel={kernel!r} is not one of {KERNELS}.")
  m = median_pairwise_distance(
    x,
    normalize=normalize_inputs(kernel),
    sample_size=sample_size,
    seed=seed,
  )
  if median_kernel_value is None:
    median_kernel_value = default_kernel_value(kernel, hashes_per_row)
  return bandwidth_for_kernel_value(
    m, kernel, median_kernel_value, hashes_per_row
  )
