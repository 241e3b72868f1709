"""Tests for models/checkpoints.py: every format, and every way to fail.

The alternative formats (sharded or single safetensors, HF Flax msgpack, T5X
legacy msgpack + zarr) are written here from the committed HF fixtures, in the
layout their own libraries use, and must load to bit-identical parameters.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts
from flax import serialization, traverse_util
from safetensors.numpy import load_file, save_file

from data_efficient.models import checkpoints, t5

TESTDATA = pathlib.Path(__file__).resolve().parents[1] / "testdata"
ENCODER_DECODER = ("t5_a", "t5_b", "t5_c", "t5_tied_relu")
CheckpointError = checkpoints.CheckpointError


# ---------------------------------------------------------------------------
# Writers for the other formats (test-only, independent of the reader).


def _hf_state_dict(folder: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of an HF folder (single or sharded safetensors)."""
  state = {}
  for file in sorted(folder.glob("*.safetensors")):
    state.update(load_file(file))
  return state


def _write_sharded(state: dict, folder: pathlib.Path, num_shards: int = 3):
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


def _write_single(state: dict, folder: pathlib.Path):
  folder.mkdir(parents=True)
  save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def _write_hf_flax(state: dict, folder: pathlib.Path):
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


def _write_t5x_legacy(params: dict, folder: pathlib.Path):
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


def _write_safetensors_bf16(state: dict, file: pathlib.Path):
  """A safetensors file with BF16 tensors (safetensors.numpy cannot)."""
  header, blobs, offset = {}, [], 0
  for name in sorted(state):
    blob = np.asarray(state[name], jnp.bfloat16).tobytes()
    header[name] = {
      "dtype": "BF16",
      "shape": list(state[name].shape),
      "data_offsets": [offset, offset + len(blob)],
    }
    blobs.append(blob)
    offset += len(blob)
  raw = json.dumps(header).encode()
  file.write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


def _assert_trees_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(got),
    jax.tree.leaves(want),
    strict=True,
  ):
    assert a.dtype == b.dtype, path
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _copy(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
  dest = tmp_path / name
  shutil.copytree(TESTDATA / name, dest)
  return dest


def _config(name: str) -> t5.T5Config:
  return checkpoints.config_from_hf(TESTDATA / name)


# ---------------------------------------------------------------------------
# Detection and configs.


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


def test_config_from_hf_reads_every_field():
  assert _config("t5_b") == t5.T5Config(
    vocab_size=200,
    emb_dim=24,
    num_heads=2,
    num_encoder_layers=3,
    num_decoder_layers=1,
    head_dim=16,
    mlp_dim=40,
    mlp_activations=("gelu", "linear"),
    logits_via_embedding=False,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
  )
  c = _config("t5_c")
  assert (
    c.relative_attention_num_buckets,
    c.relative_attention_max_distance,
  ) == (16, 64)


def test_config_from_hf_t5_1_0_and_encoder_only():
  tied = _config("t5_tied_relu")
  assert tied.mlp_activations == ("relu",)
  assert tied.logits_via_embedding and tied.num_decoder_layers == 2
  encoder = _config("t5_encoder_relu")
  assert encoder.num_decoder_layers == 0 and encoder.projection_dim is None
  st = _config("sentence_t5")
  assert (st.num_decoder_layers, st.projection_dim, st.emb_dim) == (0, 24, 32)
  assert st.mlp_activations == ("relu",) and st.logits_via_embedding


@pytest.mark.parametrize(
  "fields,want",
  [
    ({"tie_word_embeddings": False}, False),  # transformers 4, Flan-T5
    ({}, True),  # transformers 4, T5 1.0 (key absent)
    ({"tie_word_embeddings": True, "scale_decoder_outputs": False}, False),
  ],
)
def test_config_from_hf_tied_logits_across_transformers_versions(
  tmp_path, fields, want
):
  hf = json.loads((TESTDATA / "t5_b" / "config.json").read_text())
  hf.pop("tie_word_embeddings")
  hf.pop("scale_decoder_outputs")
  hf.update(fields)
  (tmp_path / "config.json").write_text(json.dumps(hf))
  assert checkpoints.config_from_hf(tmp_path).logits_via_embedding is want


def test_config_from_hf_rejects_unsupported_activation(tmp_path):
  hf = json.loads((TESTDATA / "t5_b" / "config.json").read_text())
  hf["feed_forward_proj"] = "gated-silu"
  (tmp_path / "config.json").write_text(json.dumps(hf))
  with pytest.raises(CheckpointError, match="feed_forward_proj='gated-silu'"):
    checkpoints.config_from_hf(tmp_path)


def test_config_from_hf_without_config_json(tmp_path):
  with pytest.raises(CheckpointError, match="config.json"):
    checkpoints.config_from_hf(tmp_path)


# ---------------------------------------------------------------------------
# Loading.


@pytest.mark.parametrize(
  "name", [*ENCODER_DECODER, "t5_encoder_relu", "sentence_t5"]
)
def test_params_have_the_model_structure(name):
  config = _config(name)
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
    TESTDATA / "t5_b", _config("t5_b"), jnp.bfloat16
  )
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


def test_kernels_are_transposed_from_torch_layout():
  params = checkpoints.load_params(TESTDATA / "t5_b", _config("t5_b"))
  state = _hf_state_dict(TESTDATA / "t5_b")
  np.testing.assert_array_equal(
    params["encoder"]["layers_2"]["mlp"]["wi_1"]["kernel"],
    state["encoder.block.2.layer.1.DenseReluDense.wi_1.weight"].T,
  )
  np.testing.assert_array_equal(
    params["decoder"]["relpos_bias"]["rel_embedding"],
    state[
      "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    ].T,
  )
  np.testing.assert_array_equal(
    params["decoder"]["logits_dense"]["kernel"], state["lm_head.weight"].T
  )


@pytest.mark.parametrize("name", ENCODER_DECODER)
def test_every_format_loads_identical_params(name, tmp_path):
  config = _config(name)
  want = checkpoints.load_params(TESTDATA / name, config)
  state = _hf_state_dict(TESTDATA / name)

  other = tmp_path / "safetensors"
  if (TESTDATA / name / "model.safetensors").exists():
    _write_sharded(state, other)
  else:
    _write_single(state, other)
  _write_hf_flax(state, tmp_path / "flax")
  _write_t5x_legacy(want, tmp_path / "t5x")

  for folder, fmt in [
    (other, "hf_safetensors"),
    (tmp_path / "flax", "hf_flax"),
    (tmp_path / "t5x", "t5x_legacy"),
  ]:
    assert checkpoints.detect_format(folder) == fmt
    _assert_trees_equal(checkpoints.load_params(folder, config), want)


def test_t5x_legacy_zarr_is_gzip_v2(tmp_path):
  params = checkpoints.load_params(TESTDATA / "t5_b", _config("t5_b"))
  _write_t5x_legacy(params, tmp_path / "t5x")
  zarray = tmp_path / "t5x" / "target.token_embedder.embedding" / ".zarray"
  meta = json.loads(zarray.read_text())
  assert meta["zarr_format"] == 2 and meta["compressor"]["id"] == "gzip"


def test_bfloat16_safetensors(tmp_path):
  state = _hf_state_dict(TESTDATA / "t5_b")
  (tmp_path / "m").mkdir()
  _write_safetensors_bf16(state, tmp_path / "m" / "model.safetensors")
  config = _config("t5_b")
  got = checkpoints.load_params(tmp_path / "m", config)
  want = checkpoints.load_params(TESTDATA / "t5_b", config, jnp.bfloat16)
  _assert_trees_equal(got, jax.tree.map(lambda x: x.astype(np.float32), want))


def test_hf_embedding_aliases_are_accepted(tmp_path):
  state = _hf_state_dict(TESTDATA / "t5_b")
  state["encoder.embed_tokens.weight"] = state["shared.weight"]
  state["decoder.embed_tokens.weight"] = state["shared.weight"]
  _write_single(state, tmp_path / "m")
  config = _config("t5_b")
  _assert_trees_equal(
    checkpoints.load_params(tmp_path / "m", config),
    checkpoints.load_params(TESTDATA / "t5_b", config),
  )


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
  got = checkpoints.t5x_tensorstore_spec("gs://bkt/ckpts/checkpoint_5", spec)
  assert got == {"driver": "zarr", "kvstore": want}


def test_t5x_tensorstore_spec_local_is_relative_to_checkpoint(tmp_path):
  spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": "target.x/"}}
  got = checkpoints.t5x_tensorstore_spec(str(tmp_path), spec)
  assert got["kvstore"] == {
    "driver": "file",
    "path": str(tmp_path / "target.x"),
  }


# ---------------------------------------------------------------------------
# Bad input: each is a CheckpointError naming the leaf and the file.


def _rewrite(tmp_path, edit) -> pathlib.Path:
  folder = _copy("t5_b", tmp_path)
  state = load_file(folder / "model.safetensors")
  edit(state)
  save_file(state, folder / "model.safetensors")
  return folder


def test_truncated_safetensors(tmp_path):
  folder = _copy("t5_b", tmp_path)
  file = folder / "model.safetensors"
  data = file.read_bytes()
  file.write_bytes(data[:-100])
  with pytest.raises(CheckpointError, match="truncated") as e:
    checkpoints.load_params(folder, _config("t5_b"))
  assert str(file) in str(e.value)
  file.write_bytes(data[:20])  # not even the header
  with pytest.raises(CheckpointError, match="model.safetensors"):
    checkpoints.load_params(folder, _config("t5_b"))


def test_wrong_shaped_leaf(tmp_path):
  key = "encoder.block.1.layer.1.DenseReluDense.wo.weight"

  def edit(state):
    state[key] = np.zeros((24, 41), np.float32)

  folder = _rewrite(tmp_path, edit)
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_params(folder, _config("t5_b"))
  message = str(e.value)
  assert "encoder/layers_1/mlp/wo/kernel" in message and key in message
  assert "model.safetensors" in message and "[24, 41]" in message


def test_missing_leaf(tmp_path):
  folder = _rewrite(
    tmp_path,
    lambda s: s.pop("encoder.block.0.layer.0.SelfAttention.k.weight"),
  )
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_params(folder, _config("t5_b"))
  message = str(e.value)
  assert "encoder/layers_0/attention/key/kernel" in message
  assert "encoder.block.0.layer.0.SelfAttention.k.weight" in message
  assert str(folder / "model.safetensors") in message


def test_extra_leaf(tmp_path):
  key = "encoder.block.3.layer.0.SelfAttention.q.weight"

  def edit(state):
    state[key] = np.zeros((32, 24), np.float32)

  folder = _rewrite(tmp_path, edit)
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_params(folder, _config("t5_b"))
  assert key in str(e.value) and "model.safetensors" in str(e.value)


def test_config_with_fewer_layers_than_checkpoint():
  config = _config("t5_b").replace(num_encoder_layers=2)
  with pytest.raises(CheckpointError, match=r"encoder\.block\.2\."):
    checkpoints.load_params(TESTDATA / "t5_b", config)


def test_untied_config_on_tied_checkpoint():
  config = _config("t5_tied_relu").replace(logits_via_embedding=False)
  with pytest.raises(CheckpointError, match="decoder/logits_dense/kernel"):
    checkpoints.load_params(TESTDATA / "t5_tied_relu", config)


def test_missing_shard_named(tmp_path):
  folder = _copy("t5_a", tmp_path)
  shard = sorted(folder.glob("model-*.safetensors"))[1]
  shard.unlink()
  with pytest.raises(CheckpointError, match=shard.name):
    checkpoints.load_params(folder, _config("t5_a"))


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
    checkpoints.load_params(tmp_path, _config("t5_b"))
  assert "safetensors" in str(e.value)


def test_t5x_missing_zarr_array_named(tmp_path):
  params = checkpoints.load_params(TESTDATA / "t5_b", _config("t5_b"))
  _write_t5x_legacy(params, tmp_path / "t5x")
  shutil.rmtree(tmp_path / "t5x" / "target.encoder.layers_1.mlp.wo.kernel")
  with pytest.raises(
    CheckpointError, match="target.encoder.layers_1.mlp.wo.kernel"
  ):
    checkpoints.load_params(tmp_path / "t5x", _config("t5_b"))


def test_t5x_wrong_shape_named(tmp_path):
  params = checkpoints.load_params(TESTDATA / "t5_b", _config("t5_b"))
  params["encoder"]["layers_0"]["attention"]["out"]["kernel"] = np.zeros(
    (5, 24), np.float32
  )
  _write_t5x_legacy(params, tmp_path / "t5x")
  with pytest.raises(
    CheckpointError, match="encoder/layers_0/attention/out/kernel"
  ):
    checkpoints.load_params(tmp_path / "t5x", _config("t5_b"))


def _edit_json(file: pathlib.Path, **changes):
  data = json.loads(file.read_text())
  data.update(changes)
  file.write_text(json.dumps(data))


def test_sentence_transformers_non_mean_pooling(tmp_path):
  folder = _copy("sentence_t5", tmp_path)
  _edit_json(folder / "1_Pooling" / "config.json", pooling_mode="cls")
  with pytest.raises(CheckpointError, match="1_Pooling/config.json"):
    checkpoints.load_params(folder, _config("sentence_t5"))


def test_sentence_transformers_dense_bias_is_refused(tmp_path):
  folder = _copy("sentence_t5", tmp_path)
  dense = folder / "2_Dense" / "model.safetensors"
  weights = load_file(dense)
  weights["linear.bias"] = np.zeros((24,), np.float32)
  save_file(weights, dense)
  with pytest.raises(CheckpointError, match="linear.bias") as e:
    checkpoints.load_params(folder, _config("sentence_t5"))
  assert "2_Dense/model.safetensors" in str(e.value)
