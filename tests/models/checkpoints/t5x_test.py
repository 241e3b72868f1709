"""Tests for models/checkpoints/t5x.py: T5X legacy msgpack + zarr."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from checkpoint_fixtures import TESTDATA, fixture_config, write_t5x_legacy

from data_efficient.models import checkpoints
from data_efficient.models.checkpoints import t5x

CheckpointError = checkpoints.CheckpointError


def test_t5x_legacy_zarr_is_gzip_v2(tmp_path):
  params = checkpoints.load_params(TESTDATA / "t5_b", fixture_config("t5_b"))
  write_t5x_legacy(params, tmp_path / "t5x")
  zarray = tmp_path / "t5x" / "target.token_embedder.embedding" / ".zarray"
  meta = json.loads(zarray.read_text())
  assert meta["zarr_format"] == 2 and meta["compressor"]["id"] == "gzip"


@pytest.mark.parametrize(
  "spec,want",
  [
    (  # tensorstore >= 0.1.14: path inside the kvstore
      {"driver": "zarr", "kvstore": {"driver": "file", "path": "target.a.b"}},
      {
        "driver": "gcs",
        "bucket": "bkt",
        "path": "ckpts/checkpoint_5/target.a.b",
      },
    ),
    (  # older: dummy bucket, path at the top level
      {
        "driver": "zarr",
        "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket"},
        "path": "target.a.b",
      },
      {
        "driver": "gcs",
        "bucket": "bkt",
        "path": "ckpts/checkpoint_5/target.a.b",
      },
    ),
  ],
)
def test_t5x_tensorstore_spec_on_gcs(spec, want):
  got = t5x.tensorstore_spec("gs://bkt/ckpts/checkpoint_5", spec)
  assert got == {"driver": "zarr", "kvstore": want}


def test_t5x_tensorstore_spec_local_is_relative_to_checkpoint(tmp_path):
  spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": "target.x/"}}
  got = t5x.tensorstore_spec(str(tmp_path), spec)
  assert got["kvstore"] == {
    "driver": "file",
    "path": str(tmp_path / "target.x"),
  }


# ---------------------------------------------------------------------------
# Bad input: a CheckpointError naming the leaf and the file.


def test_t5x_missing_zarr_array_named(tmp_path):
  params = checkpoints.load_params(TESTDATA / "t5_b", fixture_config("t5_b"))
  write_t5x_legacy(params, tmp_path / "t5x")
  shutil.rmtree(tmp_path / "t5x" / "target.encoder.layers_1.mlp.wo.kernel")
  with pytest.raises(
    CheckpointError, match="target.encoder.layers_1.mlp.wo.kernel"
  ):
    checkpoints.load_params(tmp_path / "t5x", fixture_config("t5_b"))


def test_t5x_wrong_shape_named(tmp_path):
  params = checkpoints.load_params(TESTDATA / "t5_b", fixture_config("t5_b"))
  params["encoder"]["layers_0"]["attention"]["out"]["kernel"] = np.zeros(
    (5, 24), np.float32
  )
  write_t5x_legacy(params, tmp_path / "t5x")
  with pytest.raises(
    CheckpointError, match="encoder/layers_0/attention/out/kernel"
  ):
    checkpoints.load_params(tmp_path / "t5x", fixture_config("t5_b"))
