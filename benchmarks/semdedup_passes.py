"""SemDeDup's groups: dealt once to files, against one input pass per group.

  python3 benchmarks/semdedup_passes.py [--rows 1000000] [--dim 64]
      [--clusters 200] [--groups 20] [--old_rev 637a5f6]

SemDeDup compares the members of a group of whole clusters at a time
(`--group_rows`), and a cluster's members are spread over the whole input.
Up to `--old_rev` every group read the rows its members span (most of the
input) again: G groups, G passes. Now each process deals its share once
into a file per group (`io.dealing`) and every group reads its own file.

This synthesises an embeddings directory as `benchmarks/scale.py` does (its
C4-like url ids and float16 vectors around 256 centres, `--dim` wide),
clusters it once here (one k-means iteration, then the assignment), and
times `baselines.semdedup_similarities` over it with `group_rows` = rows /
groups, in a fresh process each, alternately: this tree's, and the one at
`--old_rev` (extracted with `git archive`). Both must give bitwise-equal
scores. For each it prints seconds, rows/s, the bytes the process read and
wrote (/proc/self/io rchar and wchar: on gs:// every such byte is a network
transfer; locally the page cache serves the repeated reads, so the time
ratio here understates the gap) and its peak resident memory (VmHWM). The
last line is `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scale  # noqa: E402  (a sibling benchmark: its synthetic inputs)

# One timed call in a fresh process: settings in argv; JSON on the last line.
_CHILD = """
import json, sys, time
root, path, work, clusters_k, group_rows, out = sys.argv[1:7]
sys.path.insert(0, root)
import numpy as np
from data_efficient import sharding
from data_efficient.stages.cluster import baselines
assert baselines.__file__.startswith(root), baselines.__file__

def io_counts():
  with open("/proc/self/io") as f:
    fields = dict(line.split(": ") for line in f.read().splitlines())
  return int(fields["rchar"]), int(fields["wchar"])

clusters = np.load(work + "/clusters.npy")
distances = np.load(work + "/distances.npy")
mesh = sharding.make_mesh()
r0, w0 = io_counts()
t0 = time.perf_counter()
scores = baselines.semdedup_similarities(
  path, clusters, distances, int(clusters_k), mesh,
  group_rows=int(group_rows))
seconds = time.perf_counter() - t0
r1, w1 = io_counts()
np.save(out, scores)
with open("/proc/self/status") as f:
  peak = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "read": r1 - r0, "written": w1 - w0,
                  "peak": peak, "scores": out}))
"""


def cluster_once(path, work, k):
  """Saves one k-means iteration's clusters and distances under `work`."""
  from data_efficient import sharding
  from data_efficient.stages import configs
  from data_efficient.stages.cluster import kmeans

  mesh = sharding.make_mesh()
  config = configs.KMeansConfig(clusters=k, iterations=1, init="random")
  result = kmeans.fit(path, config, mesh, progress=False)
  parts = list(
    kmeans.assign(path, result.centroids, mesh, spherical=config.spherical)
  )
  np.save(f"{work}/clusters.npy", np.concatenate([p[2] for p in parts]))
  np.save(f"{work}/distances.npy", np.concatenate([p[3] for p in parts]))


def timed(root, path, work, k, group_rows, out):
  """One child's figures; its scores are saved to `out`."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  args = [root, path, work, str(k), str(group_rows), out]
  done = subprocess.run(
    [sys.executable, "-c", _CHILD, *args],
    capture_output=True,
    text=True,
    env=env,
  )
  if done.returncode:
    raise SystemExit(f"{root}: {done.stderr[-2000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--clusters", type=int, default=200)
  parser.add_argument("--groups", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument(
    "--old_rev",
    default="637a5f6",
    help="The revision whose SemDeDup read the input once per group.",
  )
  args = parser.parse_args()
  from data_efficient.stages.cluster import baselines

  with tempfile.TemporaryDirectory(prefix="semdedup-") as work:
    old_root = f"{work}/old"
    os.makedirs(old_root)
    archive = subprocess.run(
      ["git", "-C", ROOT, "archive", args.old_rev, "data_efficient"],
      capture_output=True,
      check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", old_root], input=archive, check=True)
    rng = np.random.default_rng(0)
    ids = np.asarray(scale.url_ids(args.rows, rng), object)
    problems = np.full(args.rows, None, object)
    path = scale.write_embeddings(f"{work}/embeddings", ids, problems, args.dim)
    cluster_once(path, work, args.clusters)
    group_rows = -(-args.rows // args.groups)
    runs = {"new": [], "old": []}
    for _ in range(args.rounds):
      for name, root in (("new", ROOT), ("old", old_root)):
        out = f"{work}/scores-{name}-{len(runs[name])}.npy"
        runs[name].append(
          timed(root, path, work, args.clusters, group_rows, out)
        )
        r = runs[name][-1]
        print(
          f"{name}: {r['seconds']:7.1f} s, {args.rows / r['seconds']:8.0f} "
          f"rows/s, read {r['read'] / 2**20:7.0f} MiB, wrote "
          f"{r['written'] / 2**20:6.0f} MiB, peak {r['peak'] / 2**20:6.0f} MiB",
          flush=True,
        )
    new, old = (min(runs[n], key=lambda r: r["seconds"]) for n in runs)
    same = np.array_equal(
      np.load(new["scores"]).view(np.int32),
      np.load(old["scores"]).view(np.int32),
    )
    if not same:
      raise SystemExit("the two revisions' SemDeDup scores differ")
    sizes = np.bincount(
      np.load(f"{work}/clusters.npy"), minlength=args.clusters
    )
    groups = len(baselines.cluster_groups(sizes, group_rows))
  print(
    f"RESULT rows={args.rows} dim={args.dim} groups={groups} "
    f"scores_identical={same} new_s={new['seconds']:.1f} "
    f"old_s={old['seconds']:.1f} speedup={old['seconds'] / new['seconds']:.2f} "
    f"new_read_mib={new['read'] / 2**20:.0f} old_read_mib={old['read'] / 2**20:.0f} "
    f"read_ratio={old['read'] / new['read']:.1f} "
    f"new_peak_mib={new['peak'] / 2**20:.0f} old_peak_mib={old['peak'] / 2**20:.0f}"
  )


if __name__ == "__main__":
  main()
