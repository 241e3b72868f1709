"""Tests of `checkpointing` and of resuming the sketch's pass 1 and k-means
from it, in process and after a real SIGKILL; and of a density run killed
in pass 2."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from data_efficient import sharding
from data_efficient.io import results
from data_efficient.runs import snapshots
from data_efficient.stages import configs
from data_efficient.stages.cluster import kmeans
from data_efficient.stages.density import run, sketch


def state(value):
  return {"counts": jnp.full((3, 4), value, jnp.int32), "w": np.ones(2) * value}


def test_save_restore_keeps_the_last_few(tmp_path):
  ckpt = snapshots.StateCheckpointer(
    tmp_path / "c", config={"seed": 1}, max_to_keep=2
  )
  assert ckpt.restore_latest(state(0)) is None
  for step in (10, 20, 30):
    ckpt.save(step, state(step), {"rows_added": step})
  assert ckpt.steps() == [20, 30]
  restored, progress = ckpt.restore_latest(state(0))
  np.testing.assert_array_equal(restored["counts"], np.full((3, 4), 30))
  np.testing.assert_array_equal(restored["w"], [30.0, 30.0])
  assert progress == {"rows_added": 30, "step": 30, "config": {"seed": 1}}
  as_stored, _ = ckpt.restore(20)
  np.testing.assert_array_equal(as_stored["counts"], np.full((3, 4), 20))
  ckpt.close()


def test_partial_save_is_ignored_and_damaged_step_is_a_clear_error(tmp_path):
  where = tmp_path / "c"
  with snapshots.StateCheckpointer(where, config={}) as ckpt:
    ckpt.save(1, state(1))
    ckpt.save(2, state(2))
  # A save killed half-way leaves Orbax's temporary directory.
  shutil.copytree(where / "2", where / "3.orbax-checkpoint-tmp-1234")
  with snapshots.StateCheckpointer(where, config={}) as ckpt:
    assert ckpt.steps() == [1, 2]
    shutil.rmtree(where / "2" / "state" / "d")
    with pytest.raises(snapshots.CheckpointError) as e:
      ckpt.restore_latest(state(0))
    assert str(where / "2") in str(e.value)
    assert "resume from step 1" in str(e.value)
    shutil.rmtree(where / "2")
    assert ckpt.restore_latest(state(0))[1]["step"] == 1


def test_other_settings_are_refused(tmp_path):
  with snapshots.StateCheckpointer(tmp_path, config={"rows": 8}) as c:
    c.save(5, state(5))
  with snapshots.StateCheckpointer(tmp_path, config={"rows": 16}) as c:
    with pytest.raises(snapshots.CheckpointError, match="rows: 8 -> 16"):
      c.restore_latest(state(0))


class Interrupted(Exception):
  pass


def fail_after(monkeypatch, module, name, calls):
  """Makes module.name raise Interrupted on its `calls`-th call."""
  original, seen = getattr(module, name), [0]

  def wrapper(*args, **kwargs):
    seen[0] += 1
    if seen[0] == calls:
      raise Interrupted
    return original(*args, **kwargs)

  monkeypatch.setattr(module, name, wrapper)


def test_sketch_pass_1_resumes_to_identical_counts(tmp_path, monkeypatch):
  x = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
  path = str(tmp_path / "x.npy")
  np.save(path, x)
  config = configs.DensityConfig(
    rows=16, buckets=64, bandwidth=1.0, seed=3, embeddings=path, output=""
  )
  mesh = sharding.make_mesh()
  want = run.build_sketch(path, config, mesh, batch_rows=96)
  where = str(tmp_path / "ckpt")
  with monkeypatch.context() as m:
    fail_after(m, sketch, "add", 7)
    with pytest.raises(Interrupted):
      run.build_sketch(path, config, mesh, 96, checkpoint_dir=where,
                       checkpoint_every=200)  # fmt: skip
  assert snapshots.StateCheckpointer(where, config={}).steps()[-1] == 576
  added = []
  with monkeypatch.context() as m:
    original = sketch.add
    m.setattr(sketch, "add", lambda s, v, **k: added.append(len(v)) or original(s, v, **k))  # fmt: skip
    got = run.build_sketch(path, config, mesh, 96, checkpoint_dir=where,
                           checkpoint_every=200)  # fmt: skip
  assert sum(added) == 1000 - 576  # only the rows after the checkpoint
  np.testing.assert_array_equal(got.counts, want.counts)
  # Pass 1 is recorded as complete: a third run adds nothing.
  added.clear()
  with monkeypatch.context() as m:
    m.setattr(sketch, "add", lambda *a, **k: added.append(1))
    again = run.build_sketch(path, config, mesh, 96, checkpoint_dir=where)
  assert not added
  np.testing.assert_array_equal(again.counts, want.counts)


def test_kmeans_resumes_to_identical_centroids(tmp_path, monkeypatch):
  x = np.random.default_rng(1).normal(size=(500, 8)).astype(np.float32)
  path = str(tmp_path / "x.npy")
  np.save(path, x)
  config = configs.KMeansConfig(clusters=6, iterations=5, seed=2)
  mesh = sharding.make_mesh()
  want = kmeans.fit(path, config, mesh, batch_rows=128)
  where = str(tmp_path / "ckpt")
  with monkeypatch.context() as m:
    fail_after(m, kmeans, "lloyd_pass", 4)
    with pytest.raises(Interrupted):
      kmeans.fit(path, config, mesh, batch_rows=128, checkpoint_dir=where)
  passes = []
  with monkeypatch.context() as m:
    original = kmeans.lloyd_pass
    m.setattr(kmeans, "lloyd_pass", lambda *a, **k: passes.append(1) or original(*a, **k))  # fmt: skip
    got = kmeans.fit(path, config, mesh, batch_rows=128, checkpoint_dir=where)
  assert len(passes) == 2  # iterations 4 and 5
  np.testing.assert_array_equal(got.centroids, want.centroids)
  assert got.inertia == want.inertia


# ---------------------------------------------------------------------------
# A real SIGKILL in a subprocess, then the same command again.


def cli_command(*args):
  return [sys.executable, "-m", "data_efficient.cli", *args]


def env():
  e = dict(os.environ)
  e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONPATH"] = os.getcwd() + os.pathsep + e.get("PYTHONPATH", "")
  return e


def kill_when(command, ready, timeout=40.0):
  """Starts `command`, SIGKILLs it once `ready()` holds; True if killed."""
  proc = subprocess.Popen(
    command,
    env=env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.monotonic() + timeout
  try:
    while time.monotonic() < deadline and proc.poll() is None:
      if ready():
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
      time.sleep(0.02)
    return False
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def run_to_end(command):
  done = subprocess.run(
    command, env=env(), capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stderr


def steps(directory):
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


@pytest.mark.slow
def test_density_killed_in_sketch_pass_1_resumes_to_identical_output(
  tmp_path,
):
  n = 240_000
  x = np.random.default_rng(0).normal(size=(n, 64)).astype(np.float32)
  path = str(tmp_path / "x.npy")
  np.save(path, x)

  def command(out):
    return cli_command(
      "density", "--embeddings", path, "--output", str(out),
      # One hash per row keeps this kill-and-resume test as cheap as it was
      # before K existed (the checkpoints do not depend on K).
      "--rows", "500", "--buckets", "4096", "--bandwidth", "4",
      "--hashes_per_row", "1",
      "--batch_rows", "8192", "--checkpoint_every", "8192",
    )  # fmt: skip

  run_to_end(command(tmp_path / "whole"))
  out = tmp_path / "killed"
  where = out / run.SKETCH_CHECKPOINTS
  assert kill_when(command(out), lambda: len(steps(where)) >= 2)
  saved = steps(where)
  assert 0 < saved[-1] < n, saved  # killed in the middle of pass 1
  assert not os.path.exists(out / results.MANIFEST)
  log = run_to_end(command(out))
  assert f"resuming sketch pass 1 after {saved[-1]} rows" in log
  counts = []
  for d in (tmp_path / "whole", out):
    ckpt_dir = d / run.SKETCH_CHECKPOINTS
    with snapshots.StateCheckpointer(ckpt_dir, config=None) as ckpt:
      last = ckpt.latest_step()
      assert last == n
      counts.append(np.asarray(ckpt.restore(last)[0]["counts"]))
  np.testing.assert_array_equal(counts[0], counts[1])
  assert counts[0].sum(axis=1).tolist() == [n] * 500
  a = results.read_results(tmp_path / "whole")
  b = results.read_results(out)
  assert a.equals(b)


@pytest.mark.slow
def test_density_killed_in_sketch_pass_2_resumes_to_identical_output(
  tmp_path,
):
  n, batch = 120_000, 4096
  x = np.random.default_rng(2).normal(size=(n, 64)).astype(np.float32)
  path = str(tmp_path / "x.npy")
  np.save(path, x)

  def command(out):
    return cli_command(
      "density", "--embeddings", path, "--output", str(out),
      "--rows", "1000", "--buckets", "1024", "--bandwidth", "4",
      "--batch_rows", str(batch), "--checkpoint_every", "40960",
    )  # fmt: skip

  def shards(d):
    return sorted(p for p in os.listdir(d) if p.endswith(".parquet"))

  run_to_end(command(tmp_path / "whole"))
  out = tmp_path / "killed"
  assert kill_when(
    command(out), lambda: out.is_dir() and len(shards(out)) >= 3, timeout=300
  )
  written = len(shards(out))
  assert 3 <= written < n // batch + 1 and not (out / results.MANIFEST).exists()
  log = run_to_end(command(out))
  # Pass 1 comes back whole from its last checkpoint; pass 2 writes only the
  # shards that are missing.
  assert f"resuming sketch pass 1 after {n} rows" in log
  assert f"resuming after {written * batch} rows already written" in log
  assert shards(out) == shards(tmp_path / "whole")
  for name in shards(out):
    assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


@pytest.mark.slow
def test_cluster_killed_in_kmeans_resumes_to_identical_output(tmp_path):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(60_000, 32)).astype(np.float32)
  path = str(tmp_path / "x.npy")
  np.save(path, x)
  iterations = 12

  def command(out):
    return cli_command(
      "cluster", "--embeddings", path, "--output", str(out),
      "--method", "semdedup", "--clusters", "64",
      "--iterations", str(iterations), "--batch_rows", "2048",
      "--init", "random", "--seed", "4",
    )  # fmt: skip

  run_to_end(command(tmp_path / "whole"))
  out = tmp_path / "killed"
  where = out / "kmeans_checkpoints"
  assert kill_when(command(out), lambda: steps(where) and steps(where)[-1] >= 2)
  saved = steps(where)
  assert 0 < saved[-1] < iterations, saved
  log = run_to_end(command(out))
  assert "kmeans: resuming after iteration" in log
  centroids = []
  for d in (tmp_path / "whole", out):
    with snapshots.StateCheckpointer(
      d / "kmeans_checkpoints", config=None
    ) as ckpt:
      assert ckpt.latest_step() == iterations
      centroids.append(np.asarray(ckpt.restore(iterations)[0]["centroids"]))
  np.testing.assert_array_equal(centroids[0], centroids[1])
  a = results.read_results(tmp_path / "whole")
  b = results.read_results(out)
  assert a.equals(b)
  assert (
    results.read_manifest(out)["clustering"]
    == results.read_manifest(tmp_path / "whole")["clustering"]
  )
