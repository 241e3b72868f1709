"""DENSITY throughput: exact kernel sums and the RACE sketch, against peers.

Runs on the machine's real devices (do not set 8 emulated CPU devices):

  python3 benchmarks/density_throughput.py            # N=32768, sketch 10^6
  python3 benchmarks/density_throughput.py --quick    # ~2 minutes on 2 cores

Side by side, in one run:
  1. matmul peak: the best of short 2048^3 float32 `jnp.dot`s at three
     points of the run and of chained dots with the exact sums' FLOPs timed
     in their rounds (the latter also printed on its own: long runs share
     the cores with whatever else runs, as the exact sums do);
  2. exact Gaussian kernel sums of N random unit vectors (d=768) against
     themselves: ours (`exact.kernel_sums` with the form `exact.choose_form`
     picks on this host, printed with the calibration it measures), each of
     its two forms forced ('pipelined', 'fused'), a blocked NumPy
     implementation, all four timed in interleaved rounds (best and range
     printed), and scikit-learn's KernelDensity (exact: atol=rtol=0) timed
     on a subset of queries and extrapolated;
  3. the sketch's two passes (R=1000, B=20000) over N_sketch vectors made in
     chunks, in embeddings/s, at the default K hashes per row and at K = 1,
     each against its matmul-bound rate peak / (2 d R K), then at the
     default K where a pass's time goes: the hashing matmul alone, bucketing
     (matmul, mixer, range reduction), pass 1 and pass 2 over the same rows
     in interleaved rounds.
The exact form is chosen once per host and tile shape and cached (see
`exact.choose_form`); delete ~/.cache/data_efficient/exact_forms.json to
measure it again.
GFLOP/s count the distance matmuls only (2 N^2 d for exact sums, 2 N d R K
per sketch pass). The last line is `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from data_efficient import sharding
from data_efficient.stages.density import exact, kernels, sketch

_D = 768


def _interleaved_times(fns: dict, rounds: int) -> tuple[dict, dict]:
  """({name: seconds of each of `rounds` runs}, {name: last output}) after
  one warm-up of each fn, taken in turns so that load from other processes
  hits them alike."""
  outputs = {name: jax.block_until_ready(fn()) for name, fn in fns.items()}
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      outputs[name] = jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return times, outputs


def _best_time(fn, repeats: int) -> tuple[float, object]:
  """(best seconds over `repeats` runs after a warm-up, last output)."""
  out = jax.block_until_ready(fn())  # compile / warm up
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best, out


def matmul_peak_gflops(repeats: int = 5) -> float:
  """Best-of-`repeats` GFLOP/s of a 2048^3 float32 `jnp.dot`."""
  x = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
  dot = jax.jit(jnp.dot)
  return 2 * 2048**3 / _best_time(lambda: dot(x, x), repeats)[0] / 1e9


def sustained_matmul(flops: float):
  """A function running chained 2048^3 float32 dots worth `flops` in one jit
  (the exact sums' matmul work at the same scale, for the same rounds)."""
  n_dots = max(1, round(flops / (2 * 2048**3)))
  x = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
  y = x / np.sqrt(2048)  # Keeps the chained products O(1).
  run = jax.jit(
    lambda x, y: jax.lax.fori_loop(0, n_dots, lambda _, c: c @ y, x)
  )
  return functools.partial(run, x, y), n_dots * 2 * 2048**3


def sketch_breakdown(
  mesh: jax.sharding.Mesh, s: sketch.RaceSketch, n: int, rounds: int
) -> dict[str, float]:
  """Where a pass's time goes: best emb/s over `rounds` interleaved runs of
  the hashing matmul alone, bucketing (matmul, mixer, range reduction),
  pass 1 and pass 2, each over the same n rows in blocks of
  `sketch.DEFAULT_BLOCK`."""
  block = sketch.DEFAULT_BLOCK
  x = unit_vectors(n, 7)
  projections, offsets, salts = sketch._scaled(s)
  d, k, r = projections.shape

  def scan_blocks(per_block):
    # Sum of per_block over the blocks, so nothing is dead code.
    def step(total, xb):
      return total + jnp.sum(per_block(xb)), None

    blocks = x.reshape(-1, block, d)
    return jax.jit(lambda: jax.lax.scan(step, 0.0, blocks)[0])

  fns = {
    "matmul": scan_blocks(
      lambda xb: jnp.einsum("dc,nd->cn", projections.reshape(d, k * r), xb)
    ),
    "bucketing": scan_blocks(
      lambda xb: sketch._buckets(xb, projections, offsets, salts, s.buckets)
    ),
    "pass 1": lambda: sketch.add(s, x, mesh=mesh).counts,
    "pass 2": lambda: sketch.scores(s, x, mesh=mesh),
  }
  times, _ = _interleaved_times(fns, rounds)
  return {name: n / min(t) for name, t in times.items()}


def unit_vectors(n: int, seed: int) -> jax.Array:
  x = jax.random.normal(jax.random.key(seed), (n, _D), jnp.float32)
  return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def numpy_kernel_sums(x: np.ndarray, h: float, block: int = 2048):
  """Blocked exact Gaussian sums in NumPy (BLAS matmul + NumPy exp)."""
  sq = np.sum(x * x, axis=1)
  out = np.zeros(len(x), np.float32)
  scale = np.float32(-0.5 / (h * h))
  for i in range(0, len(x), block):
    q = x[i : i + block]
    for j in range(0, len(x), block):
      tile = q @ x[j : j + block].T  # [qb, kb]
      tile *= -2.0
      tile += sq[i : i + block, None]
      tile += sq[None, j : j + block]
      np.maximum(tile, 0.0, out=tile)
      tile *= scale
      np.exp(tile, out=tile)
      out[i : i + block] += tile.sum(axis=1)
  return out


def sklearn_queries_per_s(x: np.ndarray, h: float, n_queries: int) -> float:
  from sklearn.neighbors import KernelDensity  # noqa: PLC0415

  kde = KernelDensity(kernel="gaussian", bandwidth=h, atol=0, rtol=0).fit(x)
  start = time.perf_counter()
  kde.score_samples(x[:n_queries])
  return n_queries / (time.perf_counter() - start)


def sketch_passes(
  mesh: jax.sharding.Mesh,
  n: int,
  chunk: int,
  rows: int,
  buckets: int,
  hashes_per_row: int,
  seed: int,
):
  """Seconds for pass 1 and pass 2 over n vectors made chunk by chunk."""
  w = kernels.default_bandwidth(
    np.asarray(unit_vectors(4096, 99)), "lsh", hashes_per_row=hashes_per_row
  )
  s = sketch.init(
    _D,
    w,
    rows=rows,
    buckets=buckets,
    hashes_per_row=hashes_per_row,
    seed=seed,
  )
  chunks = [(start, min(chunk, n - start)) for start in range(0, n, chunk)]

  def chunk_data(start, size):
    return jax.block_until_ready(unit_vectors(size, seed + start))

  # Compile every chunk shape (full chunks and a shorter last one) up front:
  # compiling is a one-off cost per shape, not a per-embedding rate.
  for size in sorted({size for _, size in chunks}):
    warm = chunk_data(0, size)
    warm_sketch = sketch.add(s, warm, mesh=mesh)
    jax.block_until_ready(sketch.scores(warm_sketch, warm, mesh=mesh))
  t_add = 0.0
  for start, size in chunks:
    x = chunk_data(start, size)
    t0 = time.perf_counter()
    s = jax.block_until_ready(sketch.add(s, x, mesh=mesh))
    t_add += time.perf_counter() - t0
  t_score = 0.0
  checksum = 0.0
  for start, size in chunks:
    x = chunk_data(start, size)
    t0 = time.perf_counter()
    scores = jax.block_until_ready(sketch.scores(s, x, mesh=mesh))
    t_score += time.perf_counter() - t0
    checksum += float(jnp.sum(scores))
  assert sketch.num_examples(s) == n
  used = np.mean(
    [np.count_nonzero(np.asarray(s.counts[r])) for r in range(min(rows, 20))]
  )
  return t_add, t_score, w, used, checksum / n


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=32768, help="exact-sum N")
  parser.add_argument("--sketch_n", type=int, default=1_000_000)
  parser.add_argument("--sketch_chunk", type=int, default=65536)
  parser.add_argument(
    "--breakdown_n", type=int, default=16384, help="sketch breakdown rows"
  )
  parser.add_argument(
    "--query_block", type=int, default=exact.DEFAULT_QUERY_BLOCK
  )
  parser.add_argument("--key_block", type=int, default=exact.DEFAULT_KEY_BLOCK)
  parser.add_argument("--sklearn_queries", type=int, default=64)
  parser.add_argument(
    "--rounds", type=int, default=3, help="interleaved exact-sum rounds"
  )
  parser.add_argument(
    "--quick", action="store_true", help="N=8192, sketch_n=131072"
  )
  args = parser.parse_args()
  if args.quick:
    args.n, args.sketch_n, args.sklearn_queries = 8192, 131072, 32
  n = args.n
  print(f"devices: {jax.devices()}")
  mesh = sharding.make_mesh()

  # Other processes may share the cores: the peak is the best of several
  # measurements spread over the run.
  peaks = [matmul_peak_gflops()]

  x = unit_vectors(n, 0)
  x_np = np.asarray(x)
  h = kernels.default_bandwidth(x_np, "gaussian")
  flops = 2.0 * n * n * _D
  blocks = {"query_block": args.query_block, "key_block": args.key_block}
  form = exact.choose_form(mesh, n, n, _D, **blocks)
  tile = (min(args.query_block, n), min(args.key_block, n))
  calibration = exact.measure_forms(mesh.local_devices[0], *tile, _D)

  matmul, matmul_flops = sustained_matmul(flops)

  def ours(form=None):
    return exact.kernel_sums(
      x, x, "gaussian", h, mesh=mesh, form=form, **blocks
    )

  times, outputs = _interleaved_times(
    {
      "ours": ours,
      "pipelined": functools.partial(ours, "pipelined"),
      "fused": functools.partial(ours, "fused"),
      "numpy": functools.partial(numpy_kernel_sums, x_np, h),
      "matmul": matmul,
    },
    rounds=args.rounds,
  )
  times["matmul"] = [t * flops / matmul_flops for t in times.pop("matmul")]
  outputs.pop("matmul")
  best = {name: min(t) for name, t in times.items()}
  gflops = {name: flops / t / 1e9 for name, t in best.items()}
  peaks.append(gflops["matmul"])
  peaks.append(matmul_peak_gflops())
  ours_s, numpy_s = best["ours"], best["numpy"]
  sums = {name: np.asarray(out) for name, out in outputs.items()}
  max_rel = float(np.max(np.abs(sums["ours"] - sums["numpy"]) / sums["numpy"]))
  forms_equal = bool(np.array_equal(sums["pipelined"], sums["fused"]))
  skl_qps = sklearn_queries_per_s(x_np, h, args.sklearn_queries)
  sklearn_s = n / skl_qps
  rows, buckets = sketch.DEFAULT_ROWS, sketch.DEFAULT_BUCKETS
  k = sketch.DEFAULT_HASHES_PER_ROW
  passes = {
    hashes: sketch_passes(
      mesh, args.sketch_n, args.sketch_chunk, rows, buckets, hashes, seed=0
    )
    for hashes in (k, 1)
  }
  breakdown = sketch_breakdown(
    mesh,
    sketch.init(_D, passes[k][2], rows=rows, buckets=buckets, hashes_per_row=k),
    args.breakdown_n,
    rounds=3,
  )
  peaks.append(matmul_peak_gflops())
  peak = max(peaks)
  print(
    f"matmul peak (2048^3 float32): {peak:.1f} GFLOP/s (best of "
    f"{', '.join(f'{p:.0f}' for p in peaks)}, measured across the run)"
  )

  def line(name, note):
    runs = ", ".join(f"{flops / t / 1e9:.0f}" for t in times[name])
    return (
      f"  {name:9s} {best[name]:7.2f} s  {gflops[name]:6.1f} GFLOP/s "
      f"({gflops[name] / peak:.0%} of peak; rounds {runs}) {note}\n"
    )

  print(
    f"exact Gaussian sums, N={n}, d={_D}, h={h:.3f}, blocks "
    f"{args.query_block}x{args.key_block}, best of {args.rounds} "
    "interleaved rounds:\n"
    + line("ours", f"(form chosen here: {form})")
    + line("pipelined", "(matmul of block j+1 beside exp-sum of block j)")
    + line("fused", "(a tile's matmul and exp-sum in one step)")
    + line("numpy", f"(max rel diff to ours {max_rel:.1e})")
    + line("matmul", "(chained 2048^3 dots, the same FLOPs, same rounds)")
    + f"  sklearn   {sklearn_s:7.1f} s  {flops / sklearn_s / 1e9:6.2f} GFLOP/s "
    f"(EXTRAPOLATED from {args.sklearn_queries} queries: "
    f"{skl_qps:.1f} queries/s)\n"
    f"  calibration ({tile[0]}x{tile[1]} tiles, measured now): pipelined "
    f"{calibration['pipelined']:.0f}, fused {calibration['fused']:.0f} "
    f"GFLOP/s; the two forms' sums bit-identical: {forms_equal}\n"
    f"  ratios: ours/numpy {numpy_s / ours_s:.2f}x, ours/sklearn "
    f"{sklearn_s / ours_s:.0f}x, ours/pipelined "
    f"{best['pipelined'] / ours_s:.2f}x, ours/fused "
    f"{best['fused'] / ours_s:.2f}x"
  )
  rates = {}
  for hashes, (t_add, t_score, w, used, mean_score) in passes.items():
    bound = peak * 1e9 / (2.0 * _D * rows * hashes)
    add_rate, score_rate = args.sketch_n / t_add, args.sketch_n / t_score
    rates[hashes] = (add_rate, score_rate, bound)
    print(
      f"RACE sketch R={rows} B={buckets} K={hashes}, N={args.sketch_n} in "
      f"chunks of {args.sketch_chunk}, width {w:.3f} ({used:.0f} buckets "
      f"used per row), mean score {mean_score:.0f}:\n"
      f"  pass 1 (add)    {t_add:7.2f} s  {add_rate:9.0f} emb/s "
      f"({add_rate / bound:.0%} of matmul-bound {bound:.0f} emb/s)\n"
      f"  pass 2 (scores) {t_score:7.2f} s  {score_rate:9.0f} emb/s "
      f"({score_rate / bound:.0%} of matmul-bound)"
    )
  add_rate, score_rate, bound = rates[k]
  print(
    f"  K={k} vs K=1: pass 1 {add_rate / rates[1][0]:.2f}x, pass 2 "
    f"{score_rate / rates[1][1]:.2f}x the rate\n"
    f"K={k} breakdown, {args.breakdown_n} rows in one call, best of 3 "
    "interleaved rounds: "
    + ", ".join(
      f"{name} {rate:.0f} emb/s ({rate / bound:.0%})"
      for name, rate in breakdown.items()
    )
    + " of the matmul bound"
  )
  print(
    "RESULT "
    f"peak_gflops={peak:.1f} "
    f"exact_n={n} "
    f"exact_s={ours_s:.3f} "
    f"exact_gflops={flops / ours_s / 1e9:.1f} "
    f"exact_frac_peak={flops / ours_s / 1e9 / peak:.3f} "
    f"exact_frac_sustained_matmul={gflops['ours'] / gflops['matmul']:.3f} "
    f"sustained_matmul_gflops={gflops['matmul']:.1f} "
    f"exact_form={form} "
    f"pipelined_gflops={gflops['pipelined']:.1f} "
    f"fused_gflops={gflops['fused']:.1f} "
    f"numpy_gflops={gflops['numpy']:.1f} "
    f"calibration_pipelined_gflops={calibration['pipelined']:.1f} "
    f"calibration_fused_gflops={calibration['fused']:.1f} "
    f"forms_bit_identical={forms_equal} "
    f"numpy_s={numpy_s:.3f} "
    f"sklearn_s_extrapolated={sklearn_s:.1f} "
    f"vs_numpy={numpy_s / ours_s:.2f} "
    f"vs_sklearn={sklearn_s / ours_s:.1f} "
    f"vs_pipelined={best['pipelined'] / ours_s:.2f} "
    f"vs_fused={best['fused'] / ours_s:.2f} "
    f"sketch_n={args.sketch_n} "
    f"hashes_per_row={k} "
    f"add_emb_per_s={add_rate:.0f} "
    f"scores_emb_per_s={score_rate:.0f} "
    f"add_frac_bound={add_rate / bound:.3f} "
    f"scores_frac_bound={score_rate / bound:.3f} "
    f"k1_add_emb_per_s={rates[1][0]:.0f} "
    f"k1_scores_emb_per_s={rates[1][1]:.0f} "
    f"k1_add_frac_bound={rates[1][0] / rates[1][2]:.3f} "
    f"k1_scores_frac_bound={rates[1][1] / rates[1][2]:.3f} "
    f"hash_matmul_frac_bound={breakdown['matmul'] / bound:.3f} "
    f"bucketing_frac_bound={breakdown['bucketing'] / bound:.3f}"
  )


if __name__ == "__main__":
  main()
