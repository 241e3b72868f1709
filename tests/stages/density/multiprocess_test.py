"""`density` as a 2-process job: the rows (and sketch counts) of one process,
and a job whose process was SIGKILLed in pass 1 resumes to the same rows."""

import json
import signal
import time

import local_job
import numpy as np
import pytest

from data_efficient import sharding
from data_efficient.io import embeddings, results
from data_efficient.runs import snapshots
from data_efficient.stages import configs
from data_efficient.stages.density import run

# Small sketches and batches: several batches and shards per process, quick
# compiles.
SKETCH = {"rows": 16, "buckets": 64, "batch_rows": 64}


def unit_vectors(n, d=16, seed=0):
  x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_embed_dir(path, x, rows_per_shard=100):
  """An `embed`-like directory of `x` (ids doc-I, row 7 marked), in shards
  of `rows_per_shard` rows."""
  writer = results.ResultWriter(
    str(path),
    embeddings.schema(x.shape[1]),
    rows_per_shard=rows_per_shard,
    run_config={"stage": "embed"},
  )
  for start in range(0, len(x), 50):
    rows = range(start, min(len(x), start + 50))
    writer.write(
      {
        "id": [f"doc-{i}" for i in rows],
        "problem": ["empty_text" if i == 7 else None for i in rows],
        "n_tokens": np.full(len(rows), 5, np.int32),
        "truncated": np.zeros(len(rows), bool),
        "embedding": x[rows.start : rows.stop],
      }
    )
  writer.close()
  results.write_manifest(str(path), {"stage": "embed"})
  return str(path)


def one_process(src, out, **settings):
  """The rows and manifest of a 1-process run (this process, 8 devices)."""
  manifest = run.density(
    configs.DensityConfig(
      embeddings=src, output=str(out), progress=False, **settings
    )
  )
  return results.read_results(out), manifest


def cli(src, out, *flags):
  return ["-m", "data_efficient.cli", "density", "--embeddings", src,
          "--output", str(out), *flags]  # fmt: skip


# Runs the stage as one process of a job, then rebuilds pass 1 from its
# (complete) checkpoint to save the counts summed over the processes.
_SKETCH_JOB = local_job.job(
  """
import json
import numpy as np
import jax
from data_efficient import sharding
from data_efficient.stages import configs
from data_efficient.stages.density import run
config = configs.DensityConfig(
    embeddings=a.embeddings, output=a.output, progress=False,
    processes=configs.ProcessConfig(
        coordinator_address=a.coordinator_address,
        num_processes=a.num_processes, process_id=a.process_id),
    **json.loads(a.settings))
print("RESULT", json.dumps(run.density(config)), flush=True)
i, n = jax.process_index(), jax.process_count()
state = run.build_sketch(
    a.embeddings, run.resolve_bandwidth(a.embeddings, config),
    sharding.local_mesh(), config.batch_rows,
    checkpoint_dir=run.sketch_checkpoint_dir(a.output, i, n))
np.save(f"{a.output}.counts-{i}.npy", np.asarray(state.counts))
""",
  "--embeddings",
  "--output",
  "--settings",
  join=False,
)


@pytest.mark.slow
def test_two_processes_write_the_sketch_rows_and_counts_of_one(tmp_path):
  src = write_embed_dir(tmp_path / "emb", unit_vectors(300))
  want, manifest = one_process(src, tmp_path / "one", **SKETCH)
  config = configs.DensityConfig(**SKETCH, embeddings=src, output="")
  config = run.resolve_bandwidth(src, config)
  counts = run.build_sketch(src, config, sharding.local_mesh(), 64).counts
  two = tmp_path / "two"
  job = ["-c", _SKETCH_JOB, "--embeddings", src, "--output", str(two)]
  outputs = local_job.run([*job, "--settings", json.dumps(SKETCH)], 2)
  returned = local_job.results(outputs)
  assert returned[1] == {"process_index": 1, "rows": 150}
  assert returned[0]["process_count"] == 2
  # Every process resolved the bandwidth of the 1-process run.
  assert returned[0]["run_config"] == manifest["run_config"]
  for i in range(2):  # every process got the counts of every row
    np.testing.assert_array_equal(np.load(f"{two}.counts-{i}.npy"), counts)
    where = run.sketch_checkpoint_dir(str(two), i, 2)
    assert where.endswith(f"sketch_checkpoints/process-0000{i}-of-00002")
    assert snapshots.StateCheckpointer(where, config=None).steps()[-1] == 150
  got = results.read_results(two)
  assert got.equals(want)  # ids, problems and densities, bit for bit
  assert got.column("problem")[7].as_py() == "empty_text"
  for i in range(2):  # each process wrote its own shards
    assert list(two.glob(f"part-0000{i}-of-00002-*.parquet"))


@pytest.mark.slow
def test_two_processes_write_the_exact_rows_of_one(tmp_path):
  src = write_embed_dir(tmp_path / "emb", unit_vectors(300, seed=1))
  exact = ["--estimator", "exact", "--kernel", "gaussian", "--batch_rows", "64"]
  want, manifest = one_process(src, tmp_path / "one", **{
    "estimator": "exact", "kernel": "gaussian", "batch_rows": 64})  # fmt: skip
  two = tmp_path / "two"
  outputs = local_job.run(cli(src, two, *exact, "--no_progress"), 2)
  assert f"density: 300 rows -> {two}" in outputs[0]
  assert f"process 1: 150 rows -> {two} (process 0 writes" in outputs[1]
  assert results.read_manifest(two)["run_config"] == manifest["run_config"]
  assert results.read_results(two).equals(want)


def steps(directory):
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_job_whose_process_was_killed_in_pass_1_resumes_to_the_same_rows(
  tmp_path,
):
  n = 4000
  src = str(tmp_path / "x.npy")
  np.save(src, unit_vectors(n, seed=2))
  out = tmp_path / "den"
  flags = [f"--{k}={v}" for k, v in SKETCH.items()] + ["--checkpoint_every=64"]
  # Process 1 is killed once it has saved twice; process 0 then stops when
  # JAX's coordination service misses process 1's heartbeats.
  procs = local_job.launch(
    cli(src, out, *flags, "--no_progress", "--heartbeat_timeout", "10"), 2
  )
  where = out / run.SKETCH_CHECKPOINTS / "process-00001-of-00002"
  deadline = time.monotonic() + 300
  while len(steps(where)) < 2 and time.monotonic() < deadline:
    assert procs[1].poll() is None, procs[1].communicate()[0].decode()
    time.sleep(0.02)
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait()
  saved = steps(where)[-1]
  assert 0 < saved < n // 2  # killed in the middle of its pass 1
  killed = time.monotonic()
  output = procs[0].communicate(timeout=120)[0].decode()
  print(f"process 0 stopped {time.monotonic() - killed:.1f}s after the kill")
  assert procs[0].returncode != 0
  assert "heartbeat" in output
  assert not (out / results.MANIFEST).exists()
  # The whole job again: process 1 resumes its pass 1, process 0 its own.
  logs = local_job.run(cli(src, out, *flags), 2)
  assert f"resuming sketch pass 1 after {saved} rows" in logs[1]
  assert "resuming sketch pass 1 after" in logs[0]
  want, _ = one_process(src, tmp_path / "one", **SKETCH)
  assert results.read_results(out).equals(want)


@pytest.mark.slow
def test_a_bad_row_in_one_share_stops_every_process_at_once(tmp_path):
  x = unit_vectors(300)
  x[250, 3] = np.nan  # In process 1's share.
  src = str(tmp_path / "x.npy")
  np.save(src, x)
  procs = local_job.launch(
    # A given bandwidth: the default rule's sample would meet the NaN on
    # every process.
    cli(
      src,
      tmp_path / "out",
      "--no_progress",
      "--rows",
      "16",
      "--buckets",
      "64",
      "--batch_rows",
      "64",
      "--bandwidth",
      "0.5",
    )  # fmt: skip
  )
  outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
  assert all(p.returncode != 0 for p in procs), outputs
  assert "the embedding of id '250' (row 250) contains NaN" in outputs[1]
  assert "process 1 of 2 failed in sketch pass 1" in outputs[0]
  assert not (tmp_path / "out" / "manifest.json").exists()
