"""Selection at scale: rows/s and peak memory of `select`, per sampler.

  python3 benchmarks/scale.py [--rows 1000000] [--rate 0.2] [--keep DIR]

Synthesises an Ask-LLM score directory and a density directory of `--rows`
rows with C4-like url ids (lengths log-normal around 60 characters, one in
ten thousand between 1,000 and 4,000), in different row orders, then runs
`select` for each sampler in a fresh process and reports rows/s and the
process's peak resident memory (/proc/self/status VmHWM, read by the child
itself: `ru_maxrss` of a child keeps the parent's pre-exec high-water mark).
Timing starts after the imports. At up to 10^6 rows it also runs the in-memory selection that `select` was
before it streamed (`choose_in_memory`, the tests' reference: every id in a
fixed-width NumPy unicode array) on the same inputs, under an address-space
limit (`--old_limit_gib`) so that it fails cleanly instead of meeting the
OOM killer (and within `--old_timeout` seconds), and prints the memory
ratio. Projections to C4 (3.65e8 rows)
are labelled as such. The last line is `RESULT key=value ...`.
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
SAMPLERS = {
  "askllm-topk": ("q",),
  "density-ips": ("d",),
  "density-topk": ("d",),
  "density-bottomk": ("d",),
  "random": ("d",),
  "askllm-then-ips": ("q", "d"),
}

_CHILD = """
import importlib.util, json, resource, sys, time
sys.path.insert(0, {root!r})
from data_efficient.io import scores
from data_efficient.stages import configs, select
kind, paths, sampler, output, limit = json.loads(sys.argv[1])
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
      scores=tuple(paths), sampler=sampler, rate={rate}, output=output))
  else:
    inputs = [scores.read_scores(p) for p in paths]
    reference.choose_in_memory(sampler, inputs, rate={rate})
  error = None
except MemoryError:
  error = "MemoryError"
seconds = time.perf_counter() - t0
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({{"seconds": seconds, "peak": peak, "error": error}}))
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


def write_scores(path, stage, column, ids, values, problems):
  import pyarrow as pa

  from data_efficient.io import results

  schema = pa.schema(
    [("id", pa.string()), ("problem", pa.string()), (column, pa.float32())]
  )
  writer = results.ResultWriter(
    path, schema, rows_per_shard=1 << 17, run_config={"stage": stage}
  )
  for start in range(0, len(ids), 1 << 17):
    rows = slice(start, start + (1 << 17))
    writer.write(
      {"id": ids[rows], "problem": problems[rows], column: values[rows]}
    )
  writer.close()
  extra = {"score_column": column} if stage == "score" else {}
  results.write_manifest(path, {"stage": stage, **extra})
  return path


def child(kind, paths, sampler, output, rate, limit=0, timeout=None):
  """One selection in a fresh process: seconds, peak bytes, error."""
  code = _CHILD.format(root=ROOT, rate=rate)
  arg = json.dumps([kind, paths, sampler, output, limit])
  try:
    done = subprocess.run(
      [sys.executable, "-c", code, arg],
      capture_output=True,
      text=True,
      timeout=timeout,
    )
  except subprocess.TimeoutExpired:
    return {"seconds": None, "peak": None, "error": f"over {timeout} s"}
  if done.returncode:
    return {"seconds": None, "peak": None, "error": done.stderr[-300:]}
  return json.loads(done.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--rate", type=float, default=0.2)
  parser.add_argument("--old_limit_gib", type=float, default=6.0)
  parser.add_argument("--old_timeout", type=float, default=120.0)
  parser.add_argument("--keep", help="Directory to keep the inputs in.")
  args = parser.parse_args()
  sys.path.insert(0, ROOT)
  work = args.keep or tempfile.mkdtemp(prefix="scale-")
  rng = np.random.default_rng(0)
  ids = np.asarray(url_ids(args.rows, rng), object)
  lengths = np.fromiter(map(len, ids), int, len(ids))
  problems = np.where(rng.random(args.rows) < 0.01, "malformed_json", None)
  density = (rng.lognormal(0, 1, args.rows) + 0.01).astype(np.float32)
  quality = rng.random(args.rows).astype(np.float32)
  order = rng.permutation(args.rows)
  paths = {
    "d": write_scores(
      os.path.join(work, "density"),
      "density",
      "density",
      ids,
      density,
      problems,
    ),  # fmt: skip
    "q": write_scores(
      os.path.join(work, "askllm"),
      "score",
      "p_yes",
      ids[order],
      quality[order],
      problems[order],
    ),  # fmt: skip
  }
  print(
    f"{args.rows} rows, id lengths: median {int(np.median(lengths))}, "
    f"mean {lengths.mean():.0f}, max {lengths.max()} characters; "
    f"rate {args.rate}"
  )
  result = {"rows": args.rows}
  peaks = []
  for sampler, needs in SAMPLERS.items():
    inputs = [paths[n] for n in needs]
    out = os.path.join(work, f"sel-{sampler}-{len(os.listdir(work))}")
    new = child("new", inputs, sampler, out, args.rate)
    if new["error"]:
      raise SystemExit(f"{sampler}: {new['error']}")
    peaks.append(new["peak"])
    speed = args.rows / new["seconds"]
    line = (
      f"{sampler:16s} streaming: {speed:9.0f} rows/s, "
      f"peak {new['peak'] / 2**20:7.0f} MiB"
    )
    result[f"{sampler}_rows_per_s"] = round(speed)
    result[f"{sampler}_peak_mib"] = round(new["peak"] / 2**20)
    if args.rows <= 1_000_000:
      limit = int(args.old_limit_gib * 2**30)
      old = child(
        "old", inputs, sampler, out, args.rate, limit, args.old_timeout
      )
      if old["error"]:
        line += (
          f" | in-memory: failed ({old['error'].strip().splitlines()[-1]}) "
          f"under a {args.old_limit_gib:g} GiB address-space limit"
        )
        result[f"{sampler}_memory_ratio"] = f">{limit / new['peak']:.1f}"
      else:
        line += (
          f" | in-memory: {args.rows / old['seconds']:9.0f} rows/s, peak "
          f"{old['peak'] / 2**20:7.0f} MiB, "
          f"ratio {old['peak'] / new['peak']:.1f}x"
        )
        result[f"{sampler}_memory_ratio"] = round(old["peak"] / new["peak"], 1)
    print(line, flush=True)
  slowest = min(v for k, v in result.items() if k.endswith("_rows_per_s"))
  widest = 4 * lengths.max() * C4_ROWS
  print(
    f"PROJECTION (not measured) for C4, {C4_ROWS:.3g} rows: streaming peak "
    f"stays ~{max(peaks) / 2**20:.0f} MiB (it does not grow with rows), "
    f"{C4_ROWS / slowest / 3600:.1f} h for the slowest sampler on one such "
    f"core; the in-memory path's id array alone: {widest / 2**40:.0f} TiB "
    f"({lengths.max()}-character ids)."
  )
  result["peak_mib_max"] = round(max(peaks) / 2**20)
  if not args.keep:
    shutil.rmtree(work)
  print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
  main()
