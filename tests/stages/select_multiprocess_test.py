"""`select` as a job of 2 local processes against 1 process and the
in-memory reference: the same ids in the same order, process 0's shards
byte for byte, errors on every process, and a rerun after a killed one."""

import json
import os

import local_job
import numpy as np
import pyarrow as pa
import pytest
import select_test

from data_efficient.io import paths, results
from data_efficient.stages import select

# Runs each case of the JSON file argv[1] as one select of a 2-process job,
# with tiny limits (many passes, gathers, buckets, runs and output shards);
# prints one RESULT line per case and process.
_JOB = local_job.job(
  """
import json, os, sys
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]
import select_multiprocess_test, select_test
from data_efficient.stages import configs, select
select_test.use_small_memory()
select._ROWS_PER_SHARD, select._WRITE_ROWS = SHARD_ROWS
for case in json.load(open(a.spec)):
  config = configs.SelectConfig(**case["config"])
  if case.get("killed"):
    select.select(config)
    if a.process_id == 0:
      select_multiprocess_test.as_if_killed(config.output)
    sharding.barrier("killed")
  try:
    got = select.select(config)
  except Exception as e:
    got = {"error": f"{type(e).__name__}: {e}"}
  line = {"case": case["name"], "process": a.process_id, **got}
  print("RESULT " + json.dumps(line), flush=True)
""",
  "spec",
)
_SHARD_ROWS = (4, 3)  # output rows per shard, ids per write

CASES = {  # name -> (sampler, input kinds, settings)
  "askllm-topk": ("askllm-topk", ["quality"], {"rate": 0.3}),
  "density-ips": ("density-ips", ["density", "quality"], {"k": 20}),
  "askllm-then-ips": (
    "askllm-then-ips",
    ["quality", "density"],
    {"rate": 0.3, "quality_rate": 0.5, "seed": 3},
  ),
  "random": ("random", ["prototypes", "perplexity"], {"rate": 0.3}),
  "perplexity": ("perplexity", ["perplexity"], {"rate": 0.2}),
  "semdedup": ("semdedup", ["semdedup", "density", "quality"], {"k": 30}),
  "prototypes": ("prototypes", ["prototypes"], {"k": 1}),
  "ties-bottomk": ("density-bottomk", ["ties"], {"k": 25}),
  "ties-topk": ("density-topk", ["ties"], {"rate": 0.5}),
  "killed": (
    "askllm-then-ips",
    ["quality", "density"],
    {"rate": 0.3, "seed": 5},
  ),
}
ERRORS = {
  "k-too-large": ("askllm-topk", ["quality"], {"k": 1000}),
  "bad-score": ("density-ips", ["bad"], {"k": 5}),
}


@pytest.fixture
def dirs(tmp_path):
  """The score directories of select_test, a tie-heavy one (two values),
  and one with a NaN score in process 1's share of its rows."""
  out = select_test.write_score_dirs(tmp_path)
  ids = np.asarray([f"t{i:03d}" for i in range(60)], object)[::-1]
  ties = np.random.default_rng(4).choice([1.0, 2.0], 60)
  out["ties"] = select_test.write_dir(
    tmp_path / "ties", "density", "density", ids, ties, rows_per_shard=7
  )
  bad = np.ones(60)
  bad[50] = np.nan
  out["bad"] = select_test.write_dir(
    tmp_path / "bad", "density", "density", ids, bad, rows_per_shard=7
  )
  return out


def as_if_killed(output: str) -> None:
  """Leaves a finished selection as a job killed while process 0 wrote it
  would: no manifest or done files, process 0's last two shards missing,
  and a stale scratch (bogus runs of kept ids, a junk bucket)."""
  names = os.listdir(output)
  shards = sorted(n for n in names if n.startswith("part-00000-"))
  for name in names:
    if name == results.MANIFEST or name.startswith("done-"):
      os.remove(os.path.join(output, name))
  for name in shards[-2:]:
    os.remove(os.path.join(output, name))
  scratch = output + ".scratch"
  os.makedirs(os.path.join(scratch, "runs-00001"))
  for run in range(3):
    path = os.path.join(scratch, "runs-00001", f"run-{run:06d}.arrow")
    with pa.ipc.new_file(path, pa.schema([("id", pa.string())])) as writer:
      writer.write_table(pa.table({"id": ["bogus"] * 5}))
  with open(os.path.join(scratch, "0-000000-00001.arrow"), "wb") as f:
    f.write(b"junk")


def _config(tmp_path, dirs, name, sampler, kinds, settings, where):
  return {
    "scores": [dirs[kind] for kind in kinds],
    "sampler": sampler,
    "output": str(tmp_path / where / name),
    **settings,
  }


def _shards(path):
  """The bytes of process 0's shards, in order."""
  names = sorted(n for n in os.listdir(path) if n.startswith("part-00000-"))
  return [open(os.path.join(path, n), "rb").read() for n in names]


@pytest.mark.slow
def test_two_processes_select_what_one_process_selects(
  tmp_path, dirs, monkeypatch
):
  select_test.use_small_memory(monkeypatch.setattr)
  monkeypatch.setattr(select, "_ROWS_PER_SHARD", _SHARD_ROWS[0])
  monkeypatch.setattr(select, "_WRITE_ROWS", _SHARD_ROWS[1])
  spec = [
    {"name": name, "config": _config(tmp_path, dirs, name, *case, "two")}
    for name, case in {**CASES, **ERRORS}.items()
  ]
  spec[list(CASES).index("killed")]["killed"] = True
  (tmp_path / "spec.json").write_text(json.dumps(spec))
  job = _JOB.replace("TESTS", repr(os.path.dirname(__file__))).replace(
    "SHARD_ROWS", repr(_SHARD_ROWS)
  )
  outputs = local_job.run(["-c", job, str(tmp_path / "spec.json")], 2)
  got = {}
  for output in outputs:
    for line in output.splitlines():
      if line.startswith("RESULT "):
        row = json.loads(line[len("RESULT ") :])
        got[row["case"], row["process"]] = row
  assert len(got) == 2 * len(spec)

  for name, (sampler, kinds, settings) in CASES.items():
    paths = [dirs[kind] for kind in kinds]
    one = tmp_path / "one" / name
    want, manifest = select_test.run_select(one, paths, sampler, **settings)
    reference, counts = select_test.choose_in_memory(
      sampler, [select_test.read_in_memory(p) for p in paths], **settings
    )
    two = tmp_path / "two" / name
    ids = results.read_results(two).column("id").to_pylist()
    assert ids == want == list(reference), name
    assert got[name, 0]["counts"] == manifest["counts"] == counts, name
    assert got[name, 1] == {"case": name, "process": 1, "process_index": 1,
                            "rows": 0}  # fmt: skip
    assert _shards(two) == _shards(one), name
    assert not os.path.exists(f"{two}.scratch")
  # The killed run's rerun kept its first shards and rewrote the last two.
  assert len(_shards(tmp_path / "two" / "killed")) > 2

  # Every process raises, none hangs; process 0 names the cause.
  for process in (0, 1):
    error = got["k-too-large", process]["error"]
    assert error.startswith("ValueError: k=1000 is more than the"), error
  bad = dirs["bad"]
  assert got["bad-score", 1]["error"].startswith(
    f"ValueError: {bad}: score of id 't009' is nan: scores must be finite"
  )
  assert got["bad-score", 0]["error"].startswith(
    "ProcessError: process 1 of 2 failed in pass 0 to find the k-th row: "
    f"ValueError: {bad}: score of id 't009'"
  )
  for name in ERRORS:
    assert not os.path.exists(tmp_path / "two" / name / results.MANIFEST)
    assert not os.path.exists(tmp_path / "two" / f"{name}.scratch")


def _cli_select(output, *flags):
  return ["-m", "data_efficient.cli", "select", "--output", str(output), *flags]


@pytest.mark.slow
def test_the_cli_job_writes_the_shards_of_one_process(tmp_path, dirs):
  flags = ["--scores", dirs["quality"], "--scores", dirs["density"],
           "--sampler", "askllm-then-ips", "--rate", "0.3"]  # fmt: skip
  one, _ = select_test.run_select(
    tmp_path / "one", [dirs["quality"], dirs["density"]], "askllm-then-ips",
    rate=0.3,
  )  # fmt: skip
  outputs = local_job.run(_cli_select(tmp_path / "two", *flags), 2)
  assert "process 1: 0 rows" in outputs[1]
  assert "select: 27 of 90 examples" in outputs[0]
  two = results.read_manifest(tmp_path / "two")
  assert two["process_count"] == 2
  assert results.read_results(tmp_path / "two").column("id").to_pylist() == one
  assert _shards(tmp_path / "two") == _shards(tmp_path / "one")

  procs = local_job.launch(
    _cli_select(tmp_path / "big", *flags[:-2], "--k", "1000"), 2
  )
  for proc in procs:
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode != 0
    assert "k=1000 is more than the" in output, output
  assert not os.path.exists(tmp_path / "big")


# `data-efficient select ARGS...` with tiny output shards; with "die" first,
# process 0 kills itself (SIGKILL) once it has written two shards.
_DYING_CLI = """
import os, signal, sys
from data_efficient import cli
from data_efficient.io import paths, results
from data_efficient.stages import select
select._ROWS_PER_SHARD, select._WRITE_ROWS = SHARD_ROWS
write = results.ResultWriter.write
def dying_write(self, batch):
  write(self, batch)
  if self.process_index == 0 and len(self._shard_rows) == 2:
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[1] == "die":
  results.ResultWriter.write = dying_write
sys.exit(cli.main(sys.argv[2:]))
""".replace("SHARD_ROWS", repr(_SHARD_ROWS))


@pytest.mark.slow
def test_a_killed_job_fails_at_once_and_its_rerun_selects_the_same(
  tmp_path, dirs, monkeypatch
):
  monkeypatch.setattr(select, "_ROWS_PER_SHARD", _SHARD_ROWS[0])
  monkeypatch.setattr(select, "_WRITE_ROWS", _SHARD_ROWS[1])
  paths = [dirs["quality"], dirs["density"]]
  want, _ = select_test.run_select(
    tmp_path / "one", paths, "askllm-then-ips", rate=0.3
  )
  argv = ["select", "--scores", paths[0], "--scores", paths[1], "--sampler",
          "askllm-then-ips", "--rate", "0.3", "--output",
          str(tmp_path / "two")]  # fmt: skip
  procs = local_job.launch(["-c", _DYING_CLI, "die", *argv], 2)
  outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
  # Process 1 fails as soon as process 0 (the coordinator) is gone.
  assert procs[0].returncode == -9 and procs[1].returncode != 0, outputs[1]
  assert not os.path.exists(tmp_path / "two" / results.MANIFEST)
  assert len(_shards(tmp_path / "two")) == 2
  local_job.run(["-c", _DYING_CLI, "live", *argv], 2)
  assert results.read_results(tmp_path / "two").column("id").to_pylist() == want
  assert _shards(tmp_path / "two") == _shards(tmp_path / "one")
  assert not os.path.exists(tmp_path / "two.scratch")


@pytest.mark.slow
def test_a_job_on_gs_selects_what_one_local_process_selects(
  tmp_path, dirs, gcs_dir
):
  """The pod set-up: inputs, output and the shared scratch all on gs://."""
  remote = []
  for kind in ("quality", "density"):
    for name in os.listdir(dirs[kind]):
      data = open(os.path.join(dirs[kind], name), "rb").read()
      paths.write_bytes(paths.join(gcs_dir, kind, name), data)
    remote += ["--scores", paths.join(gcs_dir, kind)]
  want, _ = select_test.run_select(
    tmp_path / "one", [dirs["quality"], dirs["density"]], "density-ips", k=20
  )
  output = paths.join(gcs_dir, "sel")
  local_job.run(
    _cli_select(output, *remote, "--sampler", "density-ips", "--k", "20"), 2
  )
  assert results.read_results(output).column("id").to_pylist() == want
  shard = "part-00000-of-00002-000000.parquet"
  assert (
    paths.read_bytes(paths.join(output, shard)) == _shards(tmp_path / "one")[0]
  )
  assert not paths.exists(output + ".scratch")
