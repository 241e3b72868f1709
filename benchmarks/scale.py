"""Scale: rows/s and peak memory of select, sketch passes and k-means.

  python3 benchmarks/scale.py [--rows 1000000] [--parts select,sketch,kmeans]
      [--dim 64] [--sketch_rows 1000] [--sketch_buckets 20000]
      [--clusters 1000] [--rate 0.2] [--keep DIR]

Synthesises, with C4-like url ids (lengths log-normal around 60 characters,
one in ten thousand between 1,000 and 4,000) in different row orders, an
Ask-LLM score directory, a density directory and an embeddings directory
(float16, `--dim` wide, written with `io.embeddings.schema` and
`ResultWriter` as `embed` writes them; 768 is Sentence-T5's width, the small
default keeps the run short and time grows with d). It then measures, each
in a fresh process: `select` for each sampler, the density sketch's pass 1
(`build_sketch`, saving its counts as the stage does) and pass 2
(`density_scores` over that saved sketch), and one k-means Lloyd pass
(`lloyd_pass`, `--clusters` centroids), and reports rows/s and the process's
peak resident memory (/proc/self/status VmHWM, read by the child itself:
`ru_maxrss` of a child keeps the parent's pre-exec high-water mark). Timing
starts after the imports and the inputs' first batch (bandwidth, initial
centroids) and includes jit compilation.

With `--rows` above 10^6 every part is measured at 10^6 rows first too, and
each measurement's memory ratio (largest size / 10^6) is printed; at up to
10^6 rows the in-memory selection that `select` was before it streamed
(`choose_in_memory`, the tests' reference: every id in a fixed-width NumPy
unicode array) runs on the same inputs, under an address-space limit
(`--old_limit_gib`) so that it fails cleanly instead of meeting the OOM
killer (and within `--old_timeout` seconds), with its memory ratio.
Projections to C4 (3.65e8 rows, one host like this one) scale the measured
per-row cost and are labelled as such. The last line is `RESULT key=value`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C4_ROWS = 3.65e8
BASE_ROWS = 1_000_000
SHARD_ROWS = 1 << 17
PARTS = ("select", "sketch", "kmeans")
SAMPLERS = {
  "askllm-topk": ("q",),
  "density-ips": ("d",),
  "density-topk": ("d",),
  "density-bottomk": ("d",),
  "random": ("d",),
  "askllm-then-ips": ("q", "d"),
}

# Every child: its settings in argv[1]; prints {seconds, peak, error} last.
_HEAD = """
import importlib.util, json, resource, sys, time
sys.path.insert(0, {root!r})
setting = json.loads(sys.argv[1])
"""
_TAIL = """
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({"seconds": seconds, "peak": peak, "error": error}))
"""
_SELECT = """
from data_efficient.stages import configs, select
kind, paths, sampler, output, rate, limit = setting
spec = importlib.util.spec_from_file_location(
  "select_test", {root!r} + "/tests/stages/select_test.py")
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)
if limit:
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
t0 = time.perf_counter()
try:
  if kind == "new":
    select.select(configs.SelectConfig(
      scores=tuple(paths), sampler=sampler, rate=rate, output=output))
  else:
    inputs = [reference.read_in_memory(p) for p in paths]
    reference.choose_in_memory(sampler, inputs, rate=rate)
  error = None
except MemoryError:
  error = "MemoryError"
seconds = time.perf_counter() - t0
"""
_STAGE = """
import numpy as np
from data_efficient import sharding
from data_efficient.io import embeddings
from data_efficient.stages import configs
from data_efficient.stages.cluster import kmeans
from data_efficient.stages.density import run
part, path, work, sketch_rows, buckets, clusters = setting
mesh = sharding.make_mesh()
error = None
if part == "kmeans":
  _, _, first = next(embeddings.iter_embeddings(path, clusters))
  centroids = first / np.linalg.norm(first, axis=1, keepdims=True)
  t0 = time.perf_counter()
  kmeans.lloyd_pass(path, centroids, mesh)
else:
  config = run.resolve_bandwidth(path, configs.DensityConfig(
    embeddings=path, output=work, rows=sketch_rows, buckets=buckets,
    progress=False))
  checkpoints = work + "/" + run.SKETCH_CHECKPOINTS
  t0 = time.perf_counter()
  if part == "sketch_pass1":
    run.build_sketch(path, config, mesh, checkpoint_dir=checkpoints)
  else:
    scored = sum(len(v) for _, _, v in run.density_scores(
      path, config, mesh, progress=False, checkpoint_dir=checkpoints))
seconds = time.perf_counter() - t0
"""


def url_ids(rows: int, rng: np.random.Generator) -> list[str]:
  """C4-like urls: unique, lengths ~ log-normal(60), a few 1,000-4,000."""
  lengths = np.clip(rng.lognormal(np.log(60), 0.5, rows), 14, 900)
  long = rng.random(rows) < 1e-4
  lengths[long] = rng.integers(1000, 4001, int(long.sum()))
  lengths[0] = 4000
  letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789/-_.", "u1")
  pool = letters[rng.integers(0, letters.size, 1 << 16)].tobytes().decode()
  starts = rng.integers(0, (1 << 16) - 4000, rows)
  ids = []
  for i, (start, n) in enumerate(zip(starts, lengths.astype(int), strict=True)):
    head = f"https://s{i}.example.com/"
    ids.append(head + pool[start : start + max(0, n - len(head))])
  return ids


def write_shards(path, schema, stage, rows, columns_at, manifest=()):
  """A results directory of `rows` rows, `columns_at(slice)` per shard."""
  from data_efficient.io import results

  writer = results.ResultWriter(
    path, schema, rows_per_shard=SHARD_ROWS, run_config={"stage": stage}
  )
  for start in range(0, rows, SHARD_ROWS):
    writer.write(columns_at(slice(start, min(rows, start + SHARD_ROWS))))
  writer.close()
  results.write_manifest(path, {"stage": stage, **dict(manifest)})
  return path


def write_scores(path, stage, column, ids, values, problems):
  import pyarrow as pa

  schema = pa.schema(
    [("id", pa.string()), ("problem", pa.string()), (column, pa.float32())]
  )
  extra = {"score_column": column} if stage == "score" else {}

  def columns_at(rows):
    return {"id": ids[rows], "problem": problems[rows], column: values[rows]}

  return write_shards(path, schema, stage, len(ids), columns_at, extra)


def write_embeddings(path, ids, problems, dim, seed=0):
  """float16 embeddings around 256 random centres, as `embed` stores them."""
  from data_efficient.io import embeddings

  centres = np.random.default_rng(seed).normal(size=(256, dim))

  def columns_at(rows):
    rng = np.random.default_rng([seed, rows.start])
    n = rows.stop - rows.start
    # [n, dim]: a centre plus noise, so clusters and neighbourhoods exist.
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, dim))
    return {
      "id": ids[rows],
      "problem": problems[rows],
      "n_tokens": np.full(n, 512, np.int32),
      "truncated": np.zeros(n, bool),
      embeddings.EMBEDDING_COLUMN: x.astype(np.float16),
    }

  return write_shards(
    path,
    embeddings.schema(dim, "float16"),
    "embed",
    len(ids),
    columns_at,
    {"embedding_column": embeddings.EMBEDDING_COLUMN},
  )


def child(body, setting, limit=0, timeout=None):
  """One measurement in a fresh process: seconds, peak bytes, error."""
  code = (_HEAD + body).format(root=ROOT) + _TAIL
  try:
    done = subprocess.run(
      [sys.executable, "-c", code, json.dumps(setting)],
      capture_output=True,
      text=True,
      timeout=timeout,
    )
  except subprocess.TimeoutExpired:
    return {"seconds": None, "peak": None, "error": f"over {timeout} s"}
  if done.returncode:
    return {"seconds": None, "peak": None, "error": done.stderr[-300:]}
  return json.loads(done.stdout.strip().splitlines()[-1])


def synthesise(rows, work, args):
  """Input directories of `rows` rows under `work`; prints the id lengths."""
  rng = np.random.default_rng(0)
  ids = np.asarray(url_ids(rows, rng), object)
  lengths = np.fromiter(map(len, ids), int, len(ids))
  problems = np.where(rng.random(rows) < 0.01, "malformed_json", None)
  density = (rng.lognormal(0, 1, rows) + 0.01).astype(np.float32)
  quality = rng.random(rows).astype(np.float32)
  order = rng.permutation(rows)
  paths = {}
  if "select" in args.parts:
    paths["d"] = write_scores(
      os.path.join(work, "density"), "density", "density", ids, density,
      problems,
    )  # fmt: skip
    paths["q"] = write_scores(
      os.path.join(work, "askllm"), "score", "p_yes", ids[order],
      quality[order], problems[order],
    )  # fmt: skip
  if {"sketch", "kmeans"} & set(args.parts):
    paths["e"] = write_embeddings(
      os.path.join(work, "embeddings"), ids, problems, args.dim
    )
  print(
    f"{rows} rows, id lengths: median {int(np.median(lengths))}, "
    f"mean {lengths.mean():.0f}, max {lengths.max()} characters",
    flush=True,
  )
  return paths, int(lengths.max())


def measure(rows, paths, work, args):
  """{name: (seconds, peak bytes)} of every part at `rows`; prints each."""
  measured = {}

  def report(name, new, extra=""):
    if new["error"]:
      raise SystemExit(f"{name} at {rows} rows: {new['error']}")
    measured[name] = (new["seconds"], new["peak"])
    print(
      f"  {name:16s} {rows / new['seconds']:9.0f} rows/s, "
      f"peak {new['peak'] / 2**20:7.0f} MiB{extra}",
      flush=True,
    )

  for sampler, needs in SAMPLERS.items() if "select" in args.parts else ():
    inputs = [paths[n] for n in needs]
    out = os.path.join(work, f"sel-{sampler}")
    new = child(_SELECT, ["new", inputs, sampler, out, args.rate, 0])
    extra = ""
    if rows <= args.base_rows and not new["error"]:
      limit = int(args.old_limit_gib * 2**30)
      old = child(
        _SELECT,
        ["old", inputs, sampler, out, args.rate, limit],
        limit,
        args.old_timeout,
      )
      if old["error"]:
        extra = (
          f" | in-memory: failed ({old['error'].strip().splitlines()[-1]}) "
          f"under a {args.old_limit_gib:g} GiB address-space limit"
        )
        measured[f"{sampler}_memory_ratio"] = f">{limit / new['peak']:.1f}"
      else:
        extra = (
          f" | in-memory: {rows / old['seconds']:9.0f} rows/s, peak "
          f"{old['peak'] / 2**20:7.0f} MiB, "
          f"ratio {old['peak'] / new['peak']:.1f}x"
        )
        measured[f"{sampler}_memory_ratio"] = round(
          old["peak"] / new["peak"], 1
        )
    report(sampler, new, extra)
  stages = []
  if "sketch" in args.parts:
    stages += ["sketch_pass1", "sketch_pass2"]
  if "kmeans" in args.parts:
    stages.append("kmeans")
  for part in stages:
    setting = [
      part, paths["e"], os.path.join(work, "density-sketch"),
      args.sketch_rows, args.sketch_buckets, args.clusters,
    ]  # fmt: skip
    report(
      "kmeans_iteration" if part == "kmeans" else part, child(_STAGE, setting)
    )
  return measured


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=BASE_ROWS)
  parser.add_argument(
    "--parts",
    default=",".join(PARTS),
    help="Comma-separated of: " + ",".join(PARTS),
  )
  parser.add_argument(
    "--base_rows",
    type=int,
    default=BASE_ROWS,
    help="Above this, every part is measured at this size too (the memory "
    "ratio's base) and the in-memory select is skipped.",
  )
  parser.add_argument("--dim", type=int, default=64, help="Embedding width.")
  parser.add_argument("--sketch_rows", type=int, default=1000)
  parser.add_argument("--sketch_buckets", type=int, default=20000)
  parser.add_argument("--clusters", type=int, default=1000)
  parser.add_argument("--rate", type=float, default=0.2)
  parser.add_argument("--old_limit_gib", type=float, default=6.0)
  parser.add_argument("--old_timeout", type=float, default=120.0)
  parser.add_argument("--keep", help="Directory to keep the inputs in.")
  args = parser.parse_args()
  args.parts = args.parts.split(",")
  if unknown := set(args.parts) - set(PARTS):
    parser.error(f"--parts: unknown {sorted(unknown)}; choose from {PARTS}")
  sys.path.insert(0, ROOT)
  work = args.keep or tempfile.mkdtemp(prefix="scale-")
  sizes = sorted({min(args.base_rows, args.rows), args.rows})
  print(
    f"parts {','.join(args.parts)}; select rate {args.rate}; embeddings "
    f"{args.dim}-d float16 (sketch and k-means time grows with d: measured "
    f"at d={args.dim}, not 768); sketch {args.sketch_rows} x "
    f"{args.sketch_buckets}; k-means k={args.clusters}"
  )
  by_size, widest = {}, 0
  for rows in sizes:
    directory = os.path.join(work, str(rows))
    paths, longest = synthesise(rows, directory, args)
    widest = max(widest, longest)
    by_size[rows] = measure(rows, paths, directory, args)
    if not args.keep:
      shutil.rmtree(directory)
  rows, measured = sizes[-1], by_size[sizes[-1]]
  result = {"rows": rows, "dim": args.dim}
  for name, value in by_size[sizes[0]].items():
    if name.endswith("_memory_ratio"):  # In-memory / streaming select.
      result[name] = value
  for name, value in measured.items():
    if name.endswith("_memory_ratio"):
      continue
    seconds, peak = value
    result[f"{name}_rows_per_s"] = round(rows / seconds)
    result[f"{name}_peak_mib"] = round(peak / 2**20)
    line = (
      f"PROJECTION (from the per-row cost measured at {rows} rows, not "
      f"measured) for C4, {C4_ROWS:.3g} rows on one such host: {name} "
      f"{C4_ROWS * seconds / rows / 3600:.1f} h"
    )
    if len(sizes) > 1:
      growth = peak / by_size[sizes[0]][name][1]
      result[f"{name}_peak_growth"] = round(growth, 2)
      line += f"; peak memory at {rows} / at {sizes[0]} rows = {growth:.2f}x"
    print(line + f", peak ~{peak / 2**20:.0f} MiB if it stays flat.")
  if "select" in args.parts:
    print(
      f"PROJECTION (not measured): the in-memory select's id array alone "
      f"at C4: {4 * widest * C4_ROWS / 2**40:.0f} TiB ({widest}-character "
      "ids)."
    )
  if not args.keep:
    shutil.rmtree(work)
  print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
  main()
