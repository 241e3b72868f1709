"""The cluster stage as a 2-process job (gloo on CPU, 2 devices each): the
rows of one process, the same initial sample, and a rerun after a SIGKILL."""

import hashlib
import re
import signal
import time

import local_job
import numpy as np
import pyarrow as pa
import pytest

from data_efficient.io import embeddings, results
from data_efficient.runs import snapshots
from data_efficient.stages.cluster import baselines

N, D, K = 400, 16, 6
ITERATIONS = 8


def corpus(seed=0):
  """400 ids and unit-ish vectors: 6 tight clusters, the last 40 rows
  near-copies of the first 40, and a few ids repeated across the halves."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(K, D))
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  x = centers[rng.integers(0, K, N - 40)]
  x = x + 0.08 * rng.normal(size=x.shape)
  x = np.concatenate([x, x[:40] + 1e-4 * rng.normal(size=(40, D))])
  # Urls of varied lengths; rows 200..204 repeat the ids of rows 0..4 (a
  # corpus read with on_error='mark' repeats ids).
  ids = [f"https://site{i % 7}.example/{'p' * (i % 13)}{i}" for i in range(N)]
  ids[200:205] = ids[0:5]
  return ids, x.astype(np.float32)


def write_embeddings(path, ids, x, rows_per_shard=64):
  """An embed directory of `x` (shards of 64 rows: the processes' shares
  start inside one)."""
  writer = results.ResultWriter(
    path,
    embeddings.schema(D),
    run_config={"stage": "embed"},
    rows_per_shard=rows_per_shard,
  )
  for s in range(0, len(ids), rows_per_shard):
    part = slice(s, s + rows_per_shard)
    n = len(ids[part])
    writer.write(
      {
        "id": ids[part],
        "problem": [None] * n,
        "n_tokens": [1] * n,
        "truncated": [False] * n,
        "embedding": pa.array(list(x[part]), pa.list_(pa.float32(), D)),
      }
    )
  writer.close()
  results.write_manifest(path, {"stage": "embed"})
  return str(path)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
  return write_embeddings(tmp_path_factory.mktemp("emb") / "emb", *corpus())


def cluster_args(method, embedded, output):
  return [
    "-m", "data_efficient.cli", "cluster", "--method", method,
    "--embeddings", embedded, "--output", str(output),
    "--clusters", str(K), "--iterations", str(ITERATIONS),
    "--init_sample", "100", "--batch_rows", "50", "--group_rows", "120",
    "--eps", "0.01",
  ]  # fmt: skip


@pytest.fixture(scope="module")
def runs(embedded, tmp_path_factory):
  """method -> (1-process output, 2-process output, their logs), run once."""
  done = {}

  def get(method):
    if method not in done:
      where = tmp_path_factory.mktemp(method)
      one, two = where / "one", where / "two"
      logs = local_job.run(cluster_args(method, embedded, one), 1)
      logs += local_job.run(cluster_args(method, embedded, two), 2)
      done[method] = one, two, logs
    return done[method]

  return get


def centroids(output):
  where = str(output / baselines.KMEANS_CHECKPOINTS)
  with snapshots.StateCheckpointer(where, config=None) as ckpt:
    state, progress = ckpt.restore_latest()
  assert progress["iteration"] == ITERATIONS
  return np.asarray(state["centroids"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["semdedup", "prototypes"])
def test_two_processes_write_the_rows_of_one(runs, method):
  one, two, logs = runs(method)
  a, b = results.read_results(one), results.read_results(two)
  assert b.num_rows == a.num_rows == N
  manifest = results.read_manifest(two)
  assert manifest["process_count"] == 2
  # Each process wrote the rows of its share (200 each), in input order.
  rows = {}
  for shard in manifest["shards"]:  # part-PPPPP-of-00002-SSSSSS.parquet
    process = int(shard["file"].split("-")[1])
    rows[process] = rows.get(process, 0) + shard["num_rows"]
  assert rows == {0: 200, 1: 200}
  np.testing.assert_allclose(centroids(one), centroids(two), atol=1e-6)
  for column in a.column_names:
    if column == "centroid_distance":  # from the centroids: float rounding
      np.testing.assert_allclose(
        a.column(column).to_numpy(), b.column(column).to_numpy(), atol=1e-6
      )
    else:  # identical, the similarities (of the embeddings) too
      assert a.column(column).to_pylist() == b.column(column).to_pylist()
  want, got = results.read_manifest(one)["clustering"], manifest["clustering"]
  np.testing.assert_allclose(got.pop("inertia"), want.pop("inertia"), rtol=1e-5)
  assert got == want
  if method == "semdedup":
    assert got["num_removed"] == 40  # the near-copies
  # The CLI's summary on process 1 (which gets no manifest).
  assert f"process 1: 200 rows -> {two}" in logs[-1]


_SAMPLE_JOB = local_job.job(
  """
import hashlib, json
from data_efficient.stages.cluster import kmeans
ids, vectors = kmeans.sample_rows(a.embeddings, 300, seed=3, batch_rows=37)
x = hashlib.sha256(vectors.tobytes()).hexdigest()
print("RESULT " + json.dumps({"ids": ids.tolist(), "x": x}))
""",
  "--embeddings",
)


@pytest.mark.slow
def test_every_process_gets_the_initial_sample_of_one(embedded):
  from data_efficient.stages.cluster import kmeans

  logs = local_job.run(["-c", _SAMPLE_JOB, "--embeddings", embedded], 2)
  got = local_job.results(logs)
  ids, x = kmeans.sample_rows(embedded, 300, seed=3, batch_rows=64)
  # Repeated ids (equal keys) on both processes' shares are in the sample.
  assert len(set(ids)) < len(ids)
  assert len(got) == 2
  for sample in got:
    assert sample["ids"] == ids.tolist()
    assert sample["x"] == hashlib.sha256(x.tobytes()).hexdigest()


@pytest.mark.slow
def test_a_killed_process_ends_the_job_and_the_rerun_resumes(
  runs, embedded, tmp_path
):
  _, uninterrupted, _ = runs("semdedup")
  out = tmp_path / "killed"
  args = cluster_args("semdedup", embedded, out)
  procs = local_job.launch(args, 2)
  try:
    # Process 0 prints an iteration after the previous one's checkpoint.
    for line in procs[0].stdout:
      if line.startswith(b"kmeans: iteration 3/"):
        procs[1].send_signal(signal.SIGKILL)
        break
    t0 = time.monotonic()
    log = procs[0].communicate(timeout=400)[0].decode()
    # The survivor fails (its next collective finds the peer gone; JAX's
    # heartbeat timeout, 100 s, ends its shutdown) instead of waiting.
    assert procs[0].returncode != 0, log
    assert time.monotonic() - t0 < 300
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
      proc.communicate()
  steps = snapshots.StateCheckpointer(
    str(out / baselines.KMEANS_CHECKPOINTS), config=None
  ).steps()
  assert steps and 2 <= steps[-1] < ITERATIONS
  assert not (out / "manifest.json").exists()
  logs = local_job.run(args, 2)
  resumed = re.search(r"resuming after iteration (\d+)", logs[0])
  assert resumed and int(resumed.group(1)) == steps[-1]
  want = results.read_results(uninterrupted)
  assert results.read_results(out).equals(want)
  assert (
    results.read_manifest(out)["clustering"]
    == results.read_manifest(uninterrupted)["clustering"]
  )
