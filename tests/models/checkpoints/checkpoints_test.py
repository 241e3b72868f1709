"""Tests for models/checkpoints/__init__.py: the public face.

Detection, loading every format to identical parameters (on the host or,
for Orbax checkpoints, sharded onto a mesh), configs, and conversion.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from checkpoint_fixtures import (
  TESTDATA,
  assert_trees_equal,
  fixture_config,
  fixture_params,
  hf_state_dict,
  write_hf_flax,
  write_sharded,
  write_single,
  write_t5x_legacy,
  write_t5x_orbax,
)

from data_efficient import sharding
from data_efficient.models import checkpoints, t5
from data_efficient.models.checkpoints import orbax

ENCODER_DECODER = ("t5_a", "t5_b", "t5_c", "t5_tied_relu")
CheckpointError = checkpoints.CheckpointError


# ---------------------------------------------------------------------------
# Detection.


@pytest.mark.parametrize(
  "name,fmt",
  [
    ("t5_a", "hf_safetensors"),  # sharded
    ("t5_b", "hf_safetensors"),
    ("t5_encoder_relu", "hf_safetensors"),
    ("sentence_t5", "sentence_transformers"),
  ],
)
def test_detect_format(name, fmt):
  assert checkpoints.detect_format(TESTDATA / name) == fmt


def test_directory_without_checkpoint(tmp_path):
  (tmp_path / "notes.txt").write_text("nothing here")
  with pytest.raises(CheckpointError) as e:
    checkpoints.detect_format(tmp_path)
  message = str(e.value)
  assert str(tmp_path) in message
  for marker in (
    "checkpoint",
    "model.safetensors",
    "flax_model.msgpack",
    "modules.json",
  ):
    assert marker in message


def test_pytorch_bin_only_is_refused_unread(tmp_path):
  shutil.copy(TESTDATA / "t5_b" / "config.json", tmp_path)
  # Not a real pickle: the loader must refuse by name, never open it.
  (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 not unpickled")
  with pytest.raises(CheckpointError, match="pytorch_model.bin") as e:
    checkpoints.load_params(tmp_path, fixture_config("t5_b"))
  assert "safetensors" in str(e.value)


# ---------------------------------------------------------------------------
# Loading.


@pytest.mark.parametrize(
  "name", [*ENCODER_DECODER, "t5_encoder_relu", "sentence_t5"]
)
def test_params_have_the_model_structure(name):
  config = fixture_config(name)
  params = checkpoints.load_params(TESTDATA / name, config)
  want = nn.unbox(t5.abstract_params(config))
  assert jax.tree.structure(params) == jax.tree.structure(want)
  for got, spec in zip(
    jax.tree.leaves(params), jax.tree.leaves(want), strict=True
  ):
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == spec.shape


def test_params_cast_to_requested_dtype():
  params = checkpoints.load_params(
    TESTDATA / "t5_b", fixture_config("t5_b"), dtype=jnp.bfloat16
  )
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("name", ENCODER_DECODER)
def test_every_format_loads_identical_params(name, tmp_path):
  config = fixture_config(name)
  want = checkpoints.load_params(TESTDATA / name, config)
  state = hf_state_dict(TESTDATA / name)

  other = tmp_path / "safetensors"
  if (TESTDATA / name / "model.safetensors").exists():
    write_sharded(state, other)
  else:
    write_single(state, other)
  write_hf_flax(state, tmp_path / "flax")
  write_t5x_legacy(want, tmp_path / "t5x")

  for folder, fmt in [
    (other, "hf_safetensors"),
    (tmp_path / "flax", "hf_flax"),
    (tmp_path / "t5x", "t5x_legacy"),
  ]:
    assert checkpoints.detect_format(folder) == fmt
    assert_trees_equal(checkpoints.load_params(folder, config), want)


@pytest.mark.parametrize("source", ["converted", "t5x_orbax"])
def test_load_params_with_mesh_restores_sharded(source, request):
  path = request.getfixturevalue(source)
  config = fixture_config("t5_a")
  mesh = sharding.make_mesh(model_parallelism=2)
  got = checkpoints.load_params(path, config, mesh=mesh)
  want = orbax.restore_sharded(path, config, mesh, np.float32)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (key, a), b in zip(
    jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
  ):
    assert isinstance(a, jax.Array), key
    assert a.sharding == b.sharding, jax.tree_util.keystr(key)
  assert_trees_equal(
    jax.tree.map(np.asarray, got), jax.tree.map(np.asarray, want)
  )


def test_load_params_with_mesh_reads_other_formats_to_host():
  config = fixture_config("t5_a")
  got = checkpoints.load_params(
    TESTDATA / "t5_a", config, mesh=sharding.make_mesh(model_parallelism=2)
  )
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(got))
  assert_trees_equal(got, fixture_params("t5_a"))


# ---------------------------------------------------------------------------
# Configs.


def test_config_from_checkpoint(t5x_orbax):
  assert checkpoints.config_from_checkpoint(
    TESTDATA / "t5_b"
  ) == fixture_config("t5_b")
  with pytest.raises(CheckpointError, match="--model"):
    checkpoints.config_from_checkpoint(t5x_orbax)


# ---------------------------------------------------------------------------
# convert: every format round-trips to identical parameters.


def _write_source(fmt: str, folder: pathlib.Path) -> tuple[str, t5.T5Config]:
  """`fmt` written from a committed fixture; returns (name, config)."""
  name = "sentence_t5" if fmt == "sentence_transformers" else "t5_a"
  if fmt == "hf_safetensors":
    write_single(hf_state_dict(TESTDATA / name), folder)
    shutil.copy(TESTDATA / name / "config.json", folder)
  elif fmt == "sentence_transformers":
    shutil.copytree(TESTDATA / name, folder)
  elif fmt == "hf_flax":
    write_hf_flax(hf_state_dict(TESTDATA / name), folder)
    shutil.copy(TESTDATA / name / "config.json", folder)
  elif fmt == "t5x_legacy":
    write_t5x_legacy(fixture_params(name), folder)
  elif fmt == "orbax_t5x":
    folder = write_t5x_orbax(fixture_params(name), folder)
  return str(folder), fixture_config(name)


@pytest.mark.parametrize(
  "fmt",
  [
    "t5x_legacy",
    "orbax_t5x",
    "hf_safetensors",
    "hf_flax",
    "sentence_transformers",
  ],
)
def test_convert_round_trips_every_format(fmt, tmp_path):
  src, config = _write_source(fmt, tmp_path / "src")
  (pathlib.Path(src) / checkpoints.VOCAB_FILE).write_bytes(b"sentencepiece")
  assert checkpoints.detect_format(src) == fmt
  want = checkpoints.load_params(src, config)
  # T5X checkpoints carry no config: the model must be named.
  model = config if fmt in ("t5x_legacy", "orbax_t5x") else None
  dst = tmp_path / "dst"
  assert checkpoints.convert(src, dst, model=model) == config
  assert checkpoints.detect_format(dst) == "orbax_params"
  assert checkpoints.config_from_checkpoint(dst) == config
  assert_trees_equal(checkpoints.load_params(dst, config), want)
  # ... and a converted checkpoint converts again, unchanged.
  again = tmp_path / "again"
  checkpoints.convert(dst, again)
  assert_trees_equal(checkpoints.load_params(again, config), want)
  # Both keep the folder's vocabulary.
  assert checkpoints.vocab_file(again) == f"{again}/{checkpoints.VOCAB_FILE}"
  assert (again / checkpoints.VOCAB_FILE).read_bytes() == b"sentencepiece"


def test_convert_stores_requested_dtype(tmp_path):
  config = fixture_config("t5_b")
  checkpoints.convert(TESTDATA / "t5_b", tmp_path / "bf16", dtype="bfloat16")
  manifest = json.loads((tmp_path / "bf16" / orbax.CONFIG_FILE).read_text())
  assert manifest["param_dtype"] == "bfloat16"
  assert manifest["source"]["format"] == "hf_safetensors"
  stored = ocp.PyTreeCheckpointer().metadata(tmp_path / "bf16" / "params")
  dtypes = {m.dtype for m in jax.tree.leaves(stored.item_metadata.tree)}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}
  want = checkpoints.load_params(TESTDATA / "t5_b", config, dtype=jnp.bfloat16)
  got = checkpoints.load_params(tmp_path / "bf16", config, dtype=jnp.bfloat16)
  assert_trees_equal(got, want)


def test_convert_with_preset_name_checks_shapes(tmp_path):
  with pytest.raises(CheckpointError, match="is missing|has shape"):
    checkpoints.convert(TESTDATA / "t5_a", tmp_path / "dst", model="tiny")
  assert not (tmp_path / "dst" / orbax.CONFIG_FILE).exists()
  with pytest.raises(CheckpointError, match="Unknown model preset"):
    checkpoints.convert(TESTDATA / "t5_a", tmp_path / "dst", model="t5_huge")


def test_convert_refuses_non_empty_destination(tmp_path, converted):
  with pytest.raises(CheckpointError, match="not an empty directory"):
    checkpoints.convert(TESTDATA / "t5_a", converted)
