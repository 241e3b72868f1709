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


@pytest.mark.parametrize("fmt", ["hf_safetensors", "hf_flax", "t5x_legacy"])
def test_checkpoint_formats_load_from_gcs_like_locally(fmt, tmp_path, gcs_dir):
  config = fixture_config("t5_a")
  want = checkpoints.load_params(TESTDATA / "t5_a", config)
  folder = TESTDATA / "t5_a"
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
