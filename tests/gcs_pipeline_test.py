"""Every stage on gs://, against a local Cloud Storage emulator: the
pipeline score -> embed -> density, cluster -> select -> report with every
path a gs:// URL, and a SIGKILL of `score` writing to gs:// resumed."""

import json
import signal
import subprocess
import sys
import time

import pytest
from text_fixtures import synthetic_texts

from data_efficient import report
from data_efficient.io import paths, results
from data_efficient.stages import (
  askllm,
  cluster,
  configs,
  density,
  embed,
  select,
)


def _pipeline(root, corpus, vocab_path):
  """Runs every stage with its outputs under `root` (local or gs://)."""
  tiny = configs.ModelConfig(model="tiny", vocab=vocab_path)
  source = configs.CorpusConfig(input=corpus, id_field="id")

  def stream(name):
    return configs.StreamConfig(
      output=paths.join(root, name), chunk_size=16, progress=False
    )

  askllm.score(configs.ScoreConfig(corpus=source, model=tiny, run=stream("q")))
  embed.embed(
    configs.EmbedConfig(
      corpus=source,
      model=configs.ModelConfig(model="tiny_sentence_t5", vocab=vocab_path),
      run=stream("e"),
    )
  )
  density.density(
    configs.DensityConfig(
      embeddings=paths.join(root, "e"),
      output=paths.join(root, "d"),
      rows=32,
      buckets=256,
      progress=False,
    )
  )
  # SemDeDup in groups of whole clusters, dealt on `c.scratch` beside it.
  cluster.cluster(
    configs.ClusterConfig(
      method="semdedup",
      kmeans=configs.KMeansConfig(clusters=4, iterations=2),
      embeddings=paths.join(root, "e"),
      output=paths.join(root, "c"),
      group_rows=16,
      progress=False,
    )
  )
  select.select(
    configs.SelectConfig(
      scores=(paths.join(root, "q"), paths.join(root, "d")),
      sampler="askllm-then-ips",
      rate=0.5,
      output=paths.join(root, "s"),
    )
  )
  report.report(
    configs.ReportConfig(
      corpus=source,
      scores=(paths.join(root, "q"), paths.join(root, "d")),
      selections=(paths.join(root, "s"),),
      output=paths.join(root, "report.html"),
    )
  )


def _shards(root, stage):
  directory = paths.join(root, stage)
  return {
    name: paths.read_bytes(paths.join(directory, name))
    for name in sorted(paths.listdir(directory))
    if name.endswith(".parquet")
  }


def _corpus_lines(n, seed):
  return "".join(
    json.dumps({"id": f"doc{i}", "text": t}) + "\n"
    for i, t in enumerate(synthetic_texts(n, seed=seed))
  ).encode()


@pytest.mark.slow
def test_pipeline_on_gcs_writes_what_it_writes_locally(
  tmp_path, gcs_dir, vocab_path
):
  data = _corpus_lines(48, seed=21)
  (tmp_path / "corpus.jsonl").write_bytes(data)
  paths.write_bytes(paths.join(gcs_dir, "corpus.jsonl"), data)
  _pipeline(str(tmp_path / "out"), str(tmp_path / "corpus.jsonl"), vocab_path)
  _pipeline(gcs_dir, paths.join(gcs_dir, "corpus.jsonl"), vocab_path)
  for stage in ("q", "e", "d", "c", "s"):
    assert paths.exists(paths.join(gcs_dir, stage, results.MANIFEST)), stage
    assert _shards(gcs_dir, stage) == _shards(str(tmp_path / "out"), stage)
  for scratch in ("c.scratch", "s.scratch"):
    assert not paths.exists(paths.join(gcs_dir, scratch))
  chosen = results.read_results(paths.join(gcs_dir, "s")).column("id")
  assert 0 < len(chosen) < 48
  page = paths.read_bytes(paths.join(gcs_dir, "report.html")).decode()
  assert page.startswith("<!DOCTYPE html>") or "<html" in page
  # A rerun finds every stage complete and rewrites nothing.
  stages = ("q", "e", "d", "c", "s")
  before = {s: _shards(gcs_dir, s) for s in stages}
  _pipeline(gcs_dir, paths.join(gcs_dir, "corpus.jsonl"), vocab_path)
  assert {s: _shards(gcs_dir, s) for s in stages} == before


def _score(corpus, out, vocab_path):
  askllm.score(
    configs.ScoreConfig(
      corpus=configs.CorpusConfig(input=corpus),
      model=configs.ModelConfig(model="tiny", vocab=vocab_path),
      run=configs.StreamConfig(
        output=out, chunk_size=16, chunks_per_shard=1, progress=False
      ),
    )
  )


@pytest.mark.slow
def test_score_to_gcs_resumes_after_sigkill_to_identical_shards(
  gcs_dir, vocab_path, capsys
):
  corpus = paths.join(gcs_dir, "corpus.jsonl")
  paths.write_bytes(corpus, _corpus_lines(96, seed=22))
  whole, killed = paths.join(gcs_dir, "whole"), paths.join(gcs_dir, "killed")
  _score(corpus, whole, vocab_path)
  # The same run as a command (same device count), killed mid-way.
  proc = subprocess.Popen(
    [sys.executable, "-m", "data_efficient.cli", "score", "--input", corpus,
     "--output", killed, "--model", "tiny", "--vocab", vocab_path,
     "--chunk_size", "16", "--chunks_per_shard", "1", "--no_progress"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
  )  # fmt: skip
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if paths.glob(paths.join(killed, "part-*.parquet")):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not paths.exists(paths.join(killed, results.MANIFEST))
  done_before = len(_shards(gcs_dir, "killed"))
  assert 1 <= done_before < 6
  capsys.readouterr()
  _score(corpus, killed, vocab_path)
  assert f"resuming after {16 * done_before} rows" in capsys.readouterr().err
  assert _shards(gcs_dir, "killed") == _shards(gcs_dir, "whole")
  assert results.read_manifest(killed)["num_rows"] == 96
