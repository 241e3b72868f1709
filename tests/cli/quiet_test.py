"""A quiet, informative terminal: TensorFlow's C++ start-up lines only with
--verbose, a progress bar with an ETA, a human summary (or --json)."""

import json
import os
import subprocess
import sys

import pytest
from text_fixtures import synthetic_texts

STARTUP_LINES = ("absl::InitializeLog()", "oneDNN custom operations")


@pytest.mark.slow
def test_verbose_alone_shows_tensorflows_startup_lines(tmp_path, vocab_path):
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(synthetic_texts(3)) + "\n")
  # The tokenizer imports TensorFlow (through SeqIO) in the score stage.
  env = dict(os.environ, XLA_FLAGS="")
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)

  def score(*flags):
    return subprocess.run(
      [sys.executable, "-m", "data_efficient.cli", *flags, "score",
       "--input", str(corpus), "--output", str(tmp_path / "out"), "--model",
       "tiny", "--vocab", vocab_path, "--max_length", "128"],
      capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip

  quiet = score()
  assert not any(line in quiet.stderr for line in STARTUP_LINES), quiet.stderr
  assert "RANDOM weights" in quiet.stderr  # our own warnings still show
  # The progress bar of a text corpus: its bytes read, with the docs done.
  bar = quiet.stderr.rsplit("\r", 1)[-1]
  assert "100%" in bar and "docs=3 " in bar, bar
  assert quiet.stdout.startswith(f"score: 3 rows -> {tmp_path / 'out'}\n")
  assert f"vocabulary: {vocab_path}\n" in quiet.stdout
  # The same command again: it loads the tokenizer (so TensorFlow), finds
  # the run complete, and summarises it.
  verbose = score("--verbose", "--json")
  assert all(line in verbose.stderr for line in STARTUP_LINES), verbose.stderr
  assert json.loads(verbose.stdout)["rows"] == 3
