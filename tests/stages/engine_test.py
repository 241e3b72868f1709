"""Tests of the streaming runner: packing, batching, and the score stage end
to end (and through the command: resume after SIGKILL, 2 processes = 1
process)."""

import json
import os
import signal
import subprocess
import sys
import time

import local_job
import numpy as np
import pyarrow.parquet as pq
import pytest
from text_fixtures import synthetic_texts

from data_efficient.io import results
from data_efficient.models import t5
from data_efficient.stages import askllm, configs, engine


@pytest.mark.parametrize("max_segments", [1, 3, 8])
def test_pack_places_every_sequence_once_within_capacity(max_segments):
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 200, 500)
  rows = engine.pack(lengths, max_length=256, max_segments=max_segments)
  flat = sorted(i for row in rows for i in row)
  assert flat == list(range(500))
  for row in rows:
    assert len(row) <= max_segments
    assert lengths[row].sum() <= 256


def test_batches_have_few_shapes_and_little_padding():
  rng = np.random.default_rng(1)
  lengths = np.clip(rng.lognormal(np.log(300), 0.5, 2000), 16, 512).astype(int)
  ids = [np.ones(n, np.int32) for n in lengths]
  packing = engine.PackingConfig(
    max_length=512, max_segments=8, tokens_per_batch=16384
  )
  batches = list(engine.make_batches(ids, packing, batch_multiple=8))
  shapes = {(b.tokens.shape, b.num_segments) for b in batches}
  real = lengths.sum()
  padded = sum(b.tokens.size for b in batches)
  assert sum(len(m) for b in batches for m in b.members) == 2000
  assert all(b.tokens.shape[0] % 8 == 0 for b in batches)
  assert len(shapes) <= 8 * 4 * 2  # buckets x last-batch sizes x slots
  assert 1 - real / padded < 0.15, 1 - real / padded
  for b in batches:  # tokens sit where their segment ids say
    np.testing.assert_array_equal(b.tokens > 0, b.segment_ids > 0)
    # Output slots: a power of two that holds the most packed row.
    most = max(len(m) for m in b.members)
    assert most <= b.num_segments < 2 * most
    assert b.segment_ids.max() == most


def write_corpus(path, n, seed=0):
  texts = synthetic_texts(n, seed=seed)
  texts[3] = ""  # empty texts are scored and marked
  with open(path, "w") as f:
    for i, t in enumerate(texts):
      f.write(json.dumps({"id": f"doc-{i}", "text": t}) + "\n")
  return path


def score_args(corpus, out, vocab, *extra):
  return [
      "score",
      "--input", str(corpus),
      "--id_field", "id",
      "--output", str(out),
      "--model", "tiny",
      "--vocab", vocab,
      "--max_length", "256",
      "--chunk_size", "16",
      "--chunks_per_shard", "2",
      "--tokens_per_batch", "2048",
      "--no_progress",
      *extra,
  ]  # fmt: skip


def test_score_writes_every_row_and_a_manifest(
  tmp_path, vocab_path, capsys, monkeypatch
):
  corpus = write_corpus(tmp_path / "c.jsonl", 70)
  out = tmp_path / "scores"
  config = configs.ScoreConfig(  # the settings of `score_args`
    corpus=configs.CorpusConfig(input=str(corpus), id_field="id"),
    model=configs.ModelConfig(model="tiny", vocab=vocab_path),
    max_length=256,
    run=configs.StreamConfig(
      output=str(out),
      tokens_per_batch=2048,
      chunk_size=16,
      chunks_per_shard=2,
      progress=False,
    ),
  )
  returned = askllm.score(config)
  table = results.read_results(out)
  assert table.column("id").to_pylist() == [f"doc-{i}" for i in range(70)]
  p = table.column("p_yes").to_numpy()
  assert np.all((p > 0) & (p < 1))
  np.testing.assert_allclose(
    np.log(p), table.column("log_p_yes").to_numpy(), rtol=1e-5
  )
  assert table.column("problem").to_pylist()[3] == "empty"
  manifest = results.read_manifest(out)
  assert returned == manifest
  assert manifest["num_rows"] == 70
  assert manifest["problems"] == {"empty": 1}
  assert manifest["random_weights"] is True
  assert manifest["run_config"]["prompt_sha256"]
  assert "RANDOM weights" in capsys.readouterr().err
  # Rerunning a finished command changes nothing, and reads no weights.
  before = sorted(os.listdir(out))

  def no_weights(*args, **kwargs):
    raise AssertionError("a finished run's rerun read the weights")

  monkeypatch.setattr(t5, "init_params", no_weights)
  assert askllm.score(config) == manifest
  assert sorted(os.listdir(out)) == before
  assert "is already complete" in capsys.readouterr().err


def _cli(args, devices=1, **kwargs):
  flags = f"--xla_force_host_platform_device_count={devices}"
  env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_FLAGS=flags)
  return subprocess.Popen(
    [sys.executable, "-m", "data_efficient.cli", *args],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    env=env,
    **kwargs,
  )


def _shard_bytes(out):
  return {
    name: (out / name).read_bytes()
    for name in sorted(os.listdir(out))
    if name.endswith(".parquet")
  }


@pytest.mark.slow
def test_score_resumes_after_sigkill_to_identical_shards(tmp_path, vocab_path):
  corpus = write_corpus(tmp_path / "c.jsonl", 400)
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  proc = _cli(score_args(corpus, whole, vocab_path))
  assert proc.wait(timeout=600) == 0, proc.stdout.read().decode()
  proc = _cli(score_args(corpus, killed, vocab_path))
  deadline = time.time() + 600
  while time.time() < deadline:  # kill once a few shards are complete
    if len(list(killed.glob("part-*.parquet"))) >= 3:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  written = len(list(killed.glob("part-*.parquet")))
  assert 3 <= written < 13 and not (killed / "manifest.json").exists()
  proc = _cli(score_args(corpus, killed, vocab_path))
  output = proc.communicate(timeout=600)[0].decode()
  assert proc.returncode == 0, output
  assert "resuming after" in output
  assert _shard_bytes(killed) == _shard_bytes(whole)
  assert results.read_manifest(killed)["num_rows"] == 400


@pytest.mark.slow
def test_two_processes_produce_the_rows_of_one(tmp_path, vocab_path):
  corpus = write_corpus(tmp_path / "c.jsonl", 120)
  one, two = tmp_path / "one", tmp_path / "two"
  # Two devices per process, as TPU hosts have several chips (batches are
  # packed per process, for its devices).
  proc = _cli(score_args(corpus, one, vocab_path), devices=2)
  assert proc.wait(timeout=600) == 0, proc.stdout.read().decode()
  local_job.run(
    ["-m", "data_efficient.cli", *score_args(corpus, two, vocab_path)]
  )
  a = results.read_results(one).sort_by("id")
  b = results.read_results(two).sort_by("id")
  assert results.read_manifest(two)["process_count"] == 2
  assert a.column("id").to_pylist() == b.column("id").to_pylist()
  np.testing.assert_array_equal(
    a.column("p_yes").to_numpy(), b.column("p_yes").to_numpy()
  )
  shards = [pq.read_table(f) for f in sorted(two.glob("part-*.parquet"))]
  assert sum(t.num_rows for t in shards) == 120


@pytest.mark.slow
def test_a_bad_record_in_one_share_fails_every_process(tmp_path, vocab_path):
  corpus = write_corpus(tmp_path / "c.jsonl", 120)
  lines = corpus.read_text().splitlines()
  lines[100] = '{"id": "doc-100", "text": '  # in one process's share
  corpus.write_text("\n".join(lines) + "\n")
  procs = local_job.launch(
    [
      "-m",
      "data_efficient.cli",
      *score_args(corpus, tmp_path / "o", vocab_path),
    ]
  )
  outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
  assert all(p.returncode != 0 for p in procs), outputs
  # The process that read it names the file and (1-based) line; the other
  # stops too, quoting it, instead of waiting for its peer.
  (bad,) = [i for i, out in enumerate(outputs) if "ProcessError" not in out]
  assert "c.jsonl:101" in outputs[bad]
  other = outputs[1 - bad]
  assert f"ProcessError: process {bad} of 2 failed" in other
  assert "c.jsonl:101" in other
  assert not (tmp_path / "o" / "manifest.json").exists()
