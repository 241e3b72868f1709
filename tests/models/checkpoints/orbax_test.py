"""Tests for models/checkpoints/orbax.py: T5X Orbax and our converted format.

T5X Orbax checkpoints are written by Orbax itself, in T5X's layout
(`checkpoint_fixtures.write_t5x_orbax`): a CheckpointManager with step prefix
'checkpoint' and one item 'state' holding the train state {'target': params,
'state': {'step', 'param_states'}}, OCDBT (Orbax's default, and T5X's).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time

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
  write_t5x_orbax,
)
from flax import traverse_util

from data_efficient import sharding
from data_efficient.models import checkpoints, t5
from data_efficient.models.checkpoints import assembly, orbax

CheckpointError = checkpoints.CheckpointError
# Every bad directory must fail within this many seconds, never hang.
FAIL_FAST_S = 30


# ---------------------------------------------------------------------------
# T5X Orbax checkpoints.


def test_t5x_orbax_loads_equal_to_safetensors(t5x_orbax):
  assert checkpoints.detect_format(t5x_orbax) == "orbax_t5x"
  assert checkpoints.detect_format(t5x_orbax / "state") == "orbax_t5x"
  for path in (t5x_orbax, t5x_orbax / "state"):
    got = checkpoints.load_params(path, fixture_config("t5_a"))
    assert_trees_equal(got, fixture_params("t5_a"))


def test_orbax_wins_over_legacy_marker(t5x_orbax, tmp_path):
  # T5X's own detection checks _METADATA before the msgpack `checkpoint`.
  step = shutil.copytree(t5x_orbax, tmp_path / "step")
  (step / "state" / "checkpoint").write_bytes(b"\x80")
  assert checkpoints.detect_format(step / "state") == "orbax_t5x"


def test_t5x_orbax_reads_only_the_target(t5x_orbax, monkeypatch):
  seen = []
  restore = ocp.PyTreeCheckpointHandler.restore

  def spy(self, directory, args=None):
    seen.append(args)
    return restore(self, directory, args=args)

  monkeypatch.setattr(ocp.PyTreeCheckpointHandler, "restore", spy)
  checkpoints.load_params(t5x_orbax, fixture_config("t5_a"), dtype=jnp.bfloat16)
  (args,) = seen
  assert args.partial_restore and set(args.item) == {"target"}
  assert set(args.restore_args) == {"target"}


def test_t5x_orbax_casts_while_reading(t5x_orbax):
  got = checkpoints.load_params(
    t5x_orbax, fixture_config("t5_a"), dtype=jnp.bfloat16
  )
  want = jax.tree.map(lambda x: x.astype(jnp.bfloat16), fixture_params("t5_a"))
  assert_trees_equal(got, want)


@pytest.mark.parametrize(
  "edit,match",
  [
    ("missing", r"encoder/layers_1/mlp/wo/kernel \[64, 32\] is missing"),
    ("shape", r"encoder/layers_0/attention/out/kernel has shape \[5, 32\]"),
    ("extra", "encoder/layers_2/mlp/wo/kernel"),
  ],
)
def test_t5x_orbax_leaf_errors_name_leaf_and_dir(edit, match, tmp_path):
  params = fixture_params("t5_a")
  layers = params["encoder"]
  if edit == "missing":
    del layers["layers_1"]["mlp"]["wo"]
  elif edit == "shape":
    layers["layers_0"]["attention"]["out"]["kernel"] = np.zeros((5, 32))
  else:
    layers["layers_2"] = {"mlp": {"wo": {"kernel": np.zeros((64, 32))}}}
  step = write_t5x_orbax(params, tmp_path / "run")
  with pytest.raises(CheckpointError, match=match) as e:
    checkpoints.load_params(step, fixture_config("t5_a"))
  assert str(step / "state") in str(e.value)


def test_orbax_tree_without_target(tmp_path):
  ocp.PyTreeCheckpointer().save(tmp_path / "item", {"params": np.ones(3)})
  with pytest.raises(CheckpointError, match="no 'target' subtree"):
    checkpoints.load_params(tmp_path / "item", fixture_config("t5_a"))


# ---------------------------------------------------------------------------
# Restoring onto a mesh.


@pytest.mark.parametrize("source", ["converted", "t5x_orbax"])
def test_restore_sharded_places_every_leaf(source, request):
  path = request.getfixturevalue(source)
  config = fixture_config("t5_a")
  mesh = sharding.make_mesh(model_parallelism=2)
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  got = orbax.restore_sharded(
    path, config if source == "t5x_orbax" else None, mesh
  )
  want = sharding.param_shardings(t5.abstract_params(config), mesh)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (key, array), spec in zip(
    jax.tree_util.tree_leaves_with_path(got),
    jax.tree.leaves(want),
    strict=True,
  ):
    assert isinstance(array, jax.Array), key
    assert array.sharding == spec, jax.tree_util.keystr(key)
  assert_trees_equal(jax.tree.map(np.asarray, got), fixture_params("t5_a"))
  # Model-parallel leaves really are split: each device holds half.
  kernel = got["decoder"]["logits_dense"]["kernel"]  # [embed, vocab]
  assert kernel.sharding.spec == jax.P(None, "model")
  assert {s.data.shape for s in kernel.addressable_shards} == {(32, 128)}


def test_restore_sharded_casts(converted):
  mesh = sharding.make_mesh(model_parallelism=2)
  got = orbax.restore_sharded(converted, None, mesh, dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(got)} == {jnp.dtype(jnp.bfloat16)}


def test_restore_sharded_refuses_other_formats():
  with pytest.raises(CheckpointError, match="convert"):
    orbax.restore_sharded(
      TESTDATA / "t5_a", fixture_config("t5_a"), sharding.make_mesh()
    )


def test_restore_sharded_checks_config(converted):
  config = fixture_config("t5_a").replace(mlp_dim=48)
  with pytest.raises(CheckpointError, match="mlp/wi_0/kernel has shape"):
    orbax.restore_sharded(converted, config, sharding.make_mesh(2))


# ---------------------------------------------------------------------------
# Incomplete and corrupt directories: a CheckpointError naming the
# directory, quickly.


def _data_files(item: pathlib.Path) -> list[pathlib.Path]:
  files = sorted(p for p in item.rglob("d/*") if p.is_file())
  assert files
  return files


def _largest(files):
  return max(files, key=lambda p: p.stat().st_size)


CORRUPTIONS = {
  "no _METADATA": lambda item: (item / "_METADATA").unlink(),
  "bad _METADATA": lambda item: (item / "_METADATA").write_text("{not json"),
  "no manifest": lambda item: (item / "manifest.ocdbt").unlink(),
  "truncated manifest": lambda item: (item / "manifest.ocdbt").write_bytes(
    (item / "manifest.ocdbt").read_bytes()[:10]
  ),
  "no data file": lambda item: _largest(_data_files(item)).unlink(),
  "every data file gone": lambda item: [p.unlink() for p in _data_files(item)],
  "truncated data file": lambda item: _largest(_data_files(item)).write_bytes(
    _largest(_data_files(item)).read_bytes()[:50]
  ),
  "garbage data file": lambda item: _largest(_data_files(item)).write_bytes(
    b"\0" * _largest(_data_files(item)).stat().st_size
  ),
  "no ocdbt dirs": lambda item: [
    shutil.rmtree(p) for p in item.glob("ocdbt.process_*")
  ],
}


# A failed read leaves Orbax's other pending reads to be garbage-collected,
# which Python reports as "exception ignored in coroutine": noise, not a bug
# in what is tested.
_QUIET = pytest.mark.filterwarnings(
  "ignore::pytest.PytestUnraisableExceptionWarning"
)


def _assert_fails_fast(load, where: pathlib.Path):
  start = time.monotonic()
  with pytest.raises(CheckpointError) as e:
    load()
  assert time.monotonic() - start < FAIL_FAST_S
  assert str(where) in str(e.value)


@_QUIET
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_t5x_orbax(corruption, t5x_orbax, tmp_path):
  step = shutil.copytree(t5x_orbax, tmp_path / "step")
  CORRUPTIONS[corruption](step / "state")
  _assert_fails_fast(
    lambda: checkpoints.load_params(step, fixture_config("t5_a")), step
  )


@_QUIET
@pytest.mark.parametrize(
  "corruption", ["no _METADATA", "no data file", "truncated data file"]
)
def test_corrupt_converted(corruption, converted, tmp_path):
  dst = shutil.copytree(converted, tmp_path / "dst")
  CORRUPTIONS[corruption](dst / "params")
  mesh = sharding.make_mesh(2)
  _assert_fails_fast(
    lambda: checkpoints.load_params(dst, fixture_config("t5_a")), dst
  )
  _assert_fails_fast(lambda: orbax.restore_sharded(dst, None, mesh), dst)


def test_interrupted_conversion_is_refused(converted, tmp_path):
  dst = shutil.copytree(converted, tmp_path / "dst")
  (dst / orbax.CONFIG_FILE).unlink()
  with pytest.raises(CheckpointError, match="incomplete Orbax") as e:
    checkpoints.detect_format(dst)
  assert str(dst) in str(e.value)


@pytest.mark.parametrize(
  "edit,match",
  [
    ({"format": "other"}, "'format' is 'other'"),
    ({"format_version": 2}, "format_version 2"),
    ({"config": {"vocab_size": 256}}, "'config' is incomplete"),
    ({"config": {"heads": 2}}, r"unknown T5Config field\(s\) \['heads'\]"),
  ],
)
def test_bad_config_file(edit, match, converted, tmp_path):
  dst = shutil.copytree(converted, tmp_path / "dst")
  file = dst / orbax.CONFIG_FILE
  file.write_text(json.dumps({**json.loads(file.read_text()), **edit}))
  with pytest.raises(CheckpointError, match=match) as e:
    checkpoints.config_from_checkpoint(dst)
  assert str(file) in str(e.value)


def test_params_item_alone_points_to_its_parent(converted):
  with pytest.raises(CheckpointError, match="pass its parent directory"):
    checkpoints.load_params(converted / "params", fixture_config("t5_a"))


def test_orbax_structure_matches_model(converted):
  stored = ocp.PyTreeCheckpointer().metadata(converted / "params")
  names = set(traverse_util.flatten_dict(stored.item_metadata.tree, sep="/"))
  assert names == set(assembly.expected_shapes(fixture_config("t5_a")))
