"""Reliability: hostile input through the whole pipeline, kills, device and
process counts, and errors that come before any work is lost."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from text_fixtures import synthetic_texts

from data_efficient.io import results
from data_efficient.stages import askllm, configs, density, embed, select

HOSTILE_LINES = [
  json.dumps({"id": "empty", "text": ""}),
  json.dumps({"id": "space", "text": "   \t  "}),
  json.dumps({"id": "huge", "text": "river " * 900_000}),  # 5.4 MB
  json.dumps({"id": "nul", "text": "a\x00b\x00c"}),
  json.dumps({"id": "emoji", "text": "naïve café 日本語 😀 مرحبا Ελληνικά"}),
  json.dumps({"id": "html", "text": "<script>alert(1)</script><b>x</b>"}),
  '{"id": "broken", "text": ',  # malformed JSON
  json.dumps({"id": "nofield", "body": "no text field"}),
  json.dumps({"id": "dup", "text": "first"}),
  json.dumps({"id": "dup", "text": "second"}),
]


def hostile_corpus(path, n_clean=40):
  lines = [json.dumps({"id": f"ok{i}", "text": t})
           for i, t in enumerate(synthetic_texts(n_clean, seed=11))]  # fmt: skip
  lines[5:5] = HOSTILE_LINES
  data = "\n".join(lines).encode() + b"\n"
  bad_utf8 = b'{"id": "latin1", "text": "caf\xe9"}\n'
  path.write_bytes(data + bad_utf8)
  return path, len(lines) + 1


def test_hostile_corpus_goes_through_every_stage_accounted_for(
  tmp_path, vocab_path
):
  path, n = hostile_corpus(tmp_path / "hostile.jsonl")
  strict = configs.CorpusConfig(input=str(path), id_field="id")
  corpus = dataclasses.replace(strict, on_error="mark")
  tiny = configs.ModelConfig(model="tiny", vocab=vocab_path)

  def stream(name, **settings):
    return configs.StreamConfig(
      output=str(tmp_path / name), progress=False, **settings
    )

  # Under the default policy the first bad line stops the run, naming it.
  with pytest.raises(ValueError, match=r"hostile\.jsonl:9: NUL"):
    askllm.score(
      configs.ScoreConfig(corpus=strict, model=tiny, run=stream("strict"))
    )
  askllm.score(
    configs.ScoreConfig(
      corpus=corpus, model=tiny, run=stream("q", chunk_size=16)
    )
  )
  embed.embed(
    configs.EmbedConfig(
      corpus=corpus,
      model=dataclasses.replace(tiny, model="tiny_sentence_t5"),
      run=stream("e", chunk_size=16),
    )
  )
  density.density(
    configs.DensityConfig(
      embeddings=str(tmp_path / "e"),
      output=str(tmp_path / "d"),
      rows=32,
      buckets=256,
      progress=False,
    )
  )
  for stage in ("q", "e", "d"):
    manifest = results.read_manifest(tmp_path / stage)
    assert manifest["num_rows"] == n, stage
    table = results.read_results(tmp_path / stage, columns=["id", "problem"])
    problems = dict(
      zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True)
    )
    assert manifest["problems"] == {
        "duplicate_id": 1, "empty": 1, "invalid_utf8": 1, "malformed_json": 1,
        "missing_field": 1, "nul_bytes": 1, "whitespace": 1,
    }, stage  # fmt: skip
    assert problems["emoji"] is None and problems["html"] is None
  q = results.read_results(tmp_path / "q")
  row = q.to_pylist()[[r["id"] for r in q.to_pylist()].index("huge")]
  assert row["truncated"] and row["n_tokens"] <= 512
  select.select(
    configs.SelectConfig(
      scores=(str(tmp_path / "q"), str(tmp_path / "d")),
      sampler="askllm-then-ips",
      rate=0.5,
      output=str(tmp_path / "s"),
    )
  )
  manifest = results.read_manifest(tmp_path / "s")
  # Unreadable rows (malformed, missing field, duplicate) are never chosen.
  assert manifest["counts"]["num_excluded"] == 3
  chosen = set(results.read_results(tmp_path / "s").column("id").to_pylist())
  assert not chosen & {"broken", "nofield"}


def _run_cli(args, devices=1):
  env = dict(os.environ, PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")  # fmt: skip
  return subprocess.run(
      [sys.executable, "-m", "data_efficient.cli", *args],
      capture_output=True, text=True, env=env, timeout=600,
  )  # fmt: skip


@pytest.mark.slow
def test_selection_is_byte_identical_on_one_and_eight_devices(
  tmp_path, vocab_path
):
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(synthetic_texts(64, seed=12)) + "\n")
  shards = {}
  for devices in (1, 8):
    out = tmp_path / f"d{devices}"
    for args in (
        ["score", "--input", str(corpus), "--output", str(out / "q"),
         "--model", "tiny", "--vocab", vocab_path, "--chunk_size", "32",
         "--no_progress"],
        ["select", "--scores", str(out / "q"), "--sampler", "askllm-topk",
         "--rate", "0.25", "--output", str(out / "s")],
    ):  # fmt: skip
      proc = _run_cli(args, devices)
      assert proc.returncode == 0, proc.stderr
    shards[devices] = [
      (out / "s" / f).read_bytes()
      for f in sorted(os.listdir(out / "s"))
      if f.endswith(".parquet")
    ]
    scores = results.read_results(out / "q").column("p_yes").to_numpy()
    shards[f"scores{devices}"] = scores
  assert shards[1] == shards[8]
  # Scores agree to float rounding (per-device matmul shapes differ); they
  # are bit-identical across process counts, see runner_test.
  np.testing.assert_allclose(shards["scores1"], shards["scores8"], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_shards", [1, 3])
def test_embed_resumes_after_sigkill_to_identical_shards(
  tmp_path, vocab_path, kill_after_shards
):
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(synthetic_texts(300, seed=13)) + "\n")

  def args(out):
    return ["embed", "--input", str(corpus), "--output", str(out),
            "--model", "tiny_sentence_t5", "--vocab", vocab_path,
            "--chunk_size", "16", "--chunks_per_shard", "1",
            "--no_progress"]  # fmt: skip

  assert _run_cli(args(tmp_path / "whole")).returncode == 0
  killed = tmp_path / "killed"
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.Popen([sys.executable, "-m", "data_efficient.cli",
                           *args(killed)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if len(list(killed.glob("part-*.parquet"))) >= kill_after_shards:
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "manifest.json").exists()
  assert _run_cli(args(killed)).returncode == 0

  def shard_bytes(d):
    return {f: (d / f).read_bytes() for f in sorted(os.listdir(d))
            if f.endswith(".parquet")}  # fmt: skip

  assert shard_bytes(killed) == shard_bytes(tmp_path / "whole")


def test_errors_come_before_any_work(tmp_path, vocab_path):
  corpus = tmp_path / "c.txt"
  corpus.write_text("one\ntwo\n")
  # A truncated checkpoint: the error names the file before scoring starts.
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  src = os.path.join(os.path.dirname(__file__), "testdata", "t5_a")
  for name in os.listdir(src):
    data = open(os.path.join(src, name), "rb").read()
    if name.endswith(".safetensors"):
      data = data[: len(data) // 2]
    (ckpt / name).write_bytes(data)

  def score(output, **model):
    askllm.score(
      configs.ScoreConfig(
        corpus=configs.CorpusConfig(input=str(corpus)),
        model=configs.ModelConfig(vocab=vocab_path, **model),
        run=configs.StreamConfig(output=str(output), progress=False),
      )
    )

  with pytest.raises(Exception, match="safetensors"):
    score(tmp_path / "q", checkpoint=str(ckpt))
  assert not (tmp_path / "q").exists()
  # An output path that cannot be a directory.
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(Exception, match="file"):
    score(blocker / "q", model="tiny")
