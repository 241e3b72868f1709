"""Test helpers for tests/models/checkpoints: the fixtures and their writers.

The other formats (sharded or single safetensors, HF Flax msgpack, T5X legacy
msgpack + zarr, T5X Orbax) are written here from the committed HF fixtures,
in the layout their own libraries use, independently of the readers.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from flax import serialization, traverse_util
from safetensors.numpy import load_file, save_file

from data_efficient.models import checkpoints, t5
from data_efficient.models.checkpoints import hf

TESTDATA = pathlib.Path(__file__).resolve().parents[2] / "testdata"
STEP = 1000


def hf_state_dict(folder: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of an HF folder (single or sharded safetensors)."""
  state = {}
  for file in sorted(folder.glob("*.safetensors")):
    state.update(load_file(file))
  return state


def write_sharded(state: dict, folder: pathlib.Path, num_shards: int = 3):
  folder.mkdir(parents=True)
  names = sorted(state)
  weight_map = {}
  for i in range(num_shards):
    shard = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
    part = {n: state[n] for n in names[i::num_shards]}
    save_file(part, folder / shard, metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(part, shard))
  index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
  (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def write_single(state: dict, folder: pathlib.Path):
  folder.mkdir(parents=True)
  save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def write_hf_flax(state: dict, folder: pathlib.Path):
  """flax_model.msgpack with transformers' Flax T5 names and layouts."""
  flat = {}
  for name, value in state.items():
    if name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
      continue  # Flax T5 keeps the table once, under `shared`.
    parts = name.split(".")[:-1]
    if parts == ["shared"] or parts[-1] == "relative_attention_bias":
      flat[(*parts, "embedding")] = value  # nn.Embed: [num, features]
    elif parts[-1] in ("layer_norm", "final_layer_norm"):
      flat[(*parts, "weight")] = value
    else:
      flat[(*parts, "kernel")] = value.T  # nn.Dense: [in, out]
  folder.mkdir(parents=True)
  tree = traverse_util.unflatten_dict(flat)
  (folder / "flax_model.msgpack").write_bytes(
    serialization.msgpack_serialize(tree)
  )


def write_t5x_legacy(params: dict, folder: pathlib.Path):
  """A T5X legacy checkpoint as t5x/checkpoints.py writes it.

  1-D leaves go inline into the msgpack (as T5X does for unpartitioned
  parameters); the others go to zarr v2 + gzip arrays named
  `target.<dotted path>`, referenced by TensorStore spec dicts. Attention
  leaves use the pre-0.1.14 layout (a dummy GCS bucket, `path` at the top
  level) so both are read.
  """
  folder.mkdir(parents=True)
  target = {}
  for leaf, value in traverse_util.flatten_dict(params, sep="/").items():
    value = np.asarray(value)
    if value.ndim == 1:
      target[leaf] = value
      continue
    name = "target." + leaf.replace("/", ".")
    metadata = {
      "compressor": {"id": "gzip"},
      "shape": list(value.shape),
      "chunks": [max(1, d // 2) for d in value.shape],
      "dtype": "<f4",
    }
    store = ts.open(
      {
        "driver": "zarr",
        "kvstore": {"driver": "file", "path": str(folder / name)},
        "metadata": metadata,
      },
      create=True,
    ).result()
    store.write(value).result()
    spec = {"driver": "zarr", "dtype": "float32", "metadata": metadata}
    if "mlp" in leaf:  # no shape in the msgpack: read from .zarray
      del spec["metadata"]
    if "attention" in leaf:
      spec["kvstore"] = {"driver": "gcs", "bucket": "t5x-dummy-bucket"}
      spec["path"] = name
    else:
      spec["kvstore"] = {"driver": "file", "path": name}
    target[leaf] = spec
  state = {
    "version": 3,
    "optimizer": {
      "target": traverse_util.unflatten_dict(target, sep="/"),
      "state": {"step": np.asarray(1000, np.int32), "param_states": {}},
    },
  }
  (folder / "checkpoint").write_bytes(serialization.msgpack_serialize(state))


def assert_trees_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(got),
    jax.tree.leaves(want),
    strict=True,
  ):
    assert a.dtype == b.dtype, path
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def copy_fixture(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
  """A copy of the committed fixture `name` under `tmp_path`, to edit."""
  dest = tmp_path / name
  shutil.copytree(TESTDATA / name, dest)
  return dest


def fixture_config(name: str) -> t5.T5Config:
  """The T5Config of the committed fixture `name` (its config.json)."""
  return hf.config_from_hf(TESTDATA / name)


def fixture_params(name: str) -> dict:
  """The parameters of the committed fixture `name`, as loaded."""
  return checkpoints.load_params(TESTDATA / name, fixture_config(name))


def write_t5x_orbax(params: dict, run_dir: pathlib.Path) -> pathlib.Path:
  """A T5X train state saved by Orbax as T5X does; returns the step dir.

  The optimizer state mimics Adafactor's factored second moments, so a
  reader that restored it would have more to read than the parameters.
  """

  def slots(x):
    if x.ndim == 2:
      return {
        "v_row": jnp.ones(x.shape[:1], jnp.float32),
        "v_col": jnp.ones(x.shape[1:], jnp.float32),
      }
    return {"v": jnp.ones(x.shape, jnp.float32)}

  state = {
    "target": jax.tree.map(jnp.asarray, params),
    "state": {
      "step": jnp.asarray(STEP, jnp.int32),
      "param_states": jax.tree.map(slots, params),
    },
  }
  manager = ocp.CheckpointManager(
    run_dir,
    item_names=("state",),
    options=ocp.CheckpointManagerOptions(step_prefix="checkpoint"),
  )
  manager.save(STEP, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
  manager.wait_until_finished()
  manager.close()
  step_dir = run_dir / f"checkpoint_{STEP}"
  assert (step_dir / "state" / "_METADATA").is_file()
  assert (step_dir / "state" / "manifest.ocdbt").is_file()  # OCDBT
  return step_dir
