"""Checkpoint readers: every supported format -> the T5X-named parameter tree.

`load_params(path, config)` returns plain NumPy arrays in the structure of
`nn.unbox(t5.abstract_params(config))` (names in `models/t5.py`'s docstring),
whichever format `path` holds:

  t5x_legacy             T5X checkpoint dir: msgpack `checkpoint` + one zarr
                         array per large leaf (local or gs://).
  sentence_transformers  folder with `modules.json`: T5 encoder + mean pooling
                         + Dense without bias (+ Normalize).
  hf_safetensors         `model.safetensors` or `model.safetensors.index.json`.
  hf_flax                HF Flax `flax_model.msgpack`.
  orbax_t5x              T5X Orbax step dir (`state/_METADATA` + OCDBT); only
                         the `target` parameters are read.
  orbax_params           our converted format (`orbax_io.convert`): Orbax
                         params + `data_efficient_config.json`.

The Orbax formats live in `orbax_io.py` (imported on use: Orbax is slow to
import).

Every leaf the config expects must be present with its shape and nothing else
may be: a mismatch raises `CheckpointError` naming the leaf and the file before
any tensor is read. Tensors are then read one at a time and cast to the
requested dtype at once, so host memory holds one full copy of the model, not
two. Pickle files (`pytorch_model.bin`) are refused, never unpickled.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import ml_dtypes
import numpy as np
from flax import serialization, traverse_util

from data_efficient.models import t5

_GCS = re.compile(r"^gs://([^/]+)/?(.*)$", re.DOTALL)

# Format -> the file whose presence identifies it, in detection order (an ST
# folder also holds model.safetensors, so it is checked before HF). Orbax's
# `_METADATA` wins over a legacy `checkpoint` file, as in T5X's own
# `checkpoint_utils.detect_checkpoint_type`.
_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
  ("orbax_params", ("data_efficient_config.json",)),
  ("orbax_t5x", ("_METADATA", "state/_METADATA")),
  ("t5x_legacy", ("checkpoint",)),
  ("sentence_transformers", ("modules.json",)),
  ("hf_safetensors", ("model.safetensors", "model.safetensors.index.json")),
  ("hf_flax", ("flax_model.msgpack",)),
)
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Files Orbax writes before `_METADATA` (or that survive its removal): their
# presence alone means an incomplete Orbax checkpoint.
_ORBAX_LEFTOVERS = (
  "manifest.ocdbt",
  "state/manifest.ocdbt",
  "_CHECKPOINT_METADATA",
  "params/_METADATA",
  "params/manifest.ocdbt",
)


class CheckpointError(ValueError):
  """A checkpoint is missing, unreadable, or does not match the config."""


# ---------------------------------------------------------------------------
# Files (local or gs://).


def _join(directory: str, name: str) -> str:
  return f"{directory.rstrip('/')}/{name}" if name else directory


def _kvstore(path: str) -> dict[str, Any]:
  """TensorStore kvstore spec for `path`: 'gcs' for gs://, else 'file'."""
  match = _GCS.match(path)
  if match:
    return {"driver": "gcs", "bucket": match[1], "path": match[2]}
  return {"driver": "file", "path": os.path.abspath(path)}


def _exists(path: str) -> bool:
  if not _GCS.match(path):
    return os.path.isfile(path)
  import tensorstore as ts

  spec = _kvstore(path)
  key = spec.pop("path")
  return ts.KvStore.open(spec).result().read(key).result().state == "value"


def _read_bytes(path: str) -> bytes:
  if not _GCS.match(path):
    with open(path, "rb") as f:
      return f.read()
  import tensorstore as ts

  spec = _kvstore(path)
  key = spec.pop("path")
  result = ts.KvStore.open(spec).result().read(key).result()
  if result.state != "value":
    raise CheckpointError(f"{path}: no such file.")
  return bytes(result.value)


def _read_json(path: str) -> dict[str, Any]:
  try:
    return json.loads(_read_bytes(path))
  except FileNotFoundError:
    raise CheckpointError(f"{path}: no such file.") from None
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e}).") from None


def detect_format(path: str | os.PathLike) -> str:
  """The checkpoint format of the directory `path`.

  Returns:
    One of 'orbax_params', 'orbax_t5x', 't5x_legacy',
    'sentence_transformers', 'hf_safetensors', 'hf_flax'.

  Raises:
    CheckpointError: if the directory holds none of them (the message lists
      the files looked for), only a pickled PyTorch checkpoint, or an
      incomplete Orbax checkpoint.
  """
  path = os.fspath(path)
  for name, markers in _MARKERS:
    if any(_exists(_join(path, m)) for m in markers):
      return name
  for pickle_name in _PICKLES:
    if _exists(_join(path, pickle_name)):
      raise CheckpointError(
        f"{_join(path, pickle_name)} is a pickled PyTorch checkpoint, which "
        "is never unpickled here (pickle can run arbitrary code). Re-save "
        "it as safetensors with transformers: "
        "`Model.from_pretrained(dir).save_pretrained(dir, "
        "safe_serialization=True)`."
      )
  for leftover in _ORBAX_LEFTOVERS:
    if _exists(_join(path, leftover)):
      raise CheckpointError(
        f"{path}: holds {leftover} but no _METADATA or "
        "data_efficient_config.json: an incomplete Orbax checkpoint (an "
        "interrupted write or conversion, or removed files). Use another "
        "step, or write or convert it again."
      )
  looked_for = ", ".join(
    f"{m} ({name})" for name, markers in _MARKERS for m in markers
  )
  raise CheckpointError(
    f"{path}: no checkpoint found. Looked for: {looked_for}."
  )


# ---------------------------------------------------------------------------
# Config from Hugging Face `config.json`.

_ACTIVATIONS = {"relu": ("relu",), "gated-gelu": ("gelu", "linear")}


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
  if _exists(_join(path, "modules.json")):
    modules = _sentence_transformer_modules(path)
    projection_dim = _dense_config(modules["Dense"])[1]
    path = modules["Transformer"]
  config_file = _join(path, "config.json")
  if not _exists(config_file):
    raise CheckpointError(
      f"{config_file}: no such file. config_from_hf needs a Hugging Face "
      "T5 folder; for a T5X checkpoint pick a preset instead."
    )
  hf = _read_json(config_file)
  if hf.get("model_type", "t5") not in ("t5", "mt5"):
    raise CheckpointError(
      f"{config_file}: model_type={hf['model_type']!r} is not a T5 "
      "(expected 't5' or 'mt5')."
    )
  proj = hf.get("feed_forward_proj", "relu")
  if proj not in _ACTIVATIONS:
    raise CheckpointError(
      f"{config_file}: feed_forward_proj={proj!r} is not supported; "
      f"use one of {sorted(_ACTIVATIONS)}."
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
    mlp_activations=_ACTIVATIONS[proj],
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
# Stored tensors and the generic, validating assembly.


@dataclasses.dataclass(frozen=True)
class _Stored:
  """One tensor in a checkpoint, not yet read."""

  file: str
  shape: tuple[int, ...]
  read: Callable[[], np.ndarray]


@dataclasses.dataclass(frozen=True)
class _Rule:
  """Where a T5X leaf lives in a checkpoint.

  Attributes:
    names: Stored names, first present wins; the others, if present too, are
      aliases that must have the same shape (e.g. `encoder.embed_tokens`).
    transpose: Stored as [out, in] (torch Linear) or [buckets, heads].
  """

  names: tuple[str, ...]
  transpose: bool = False


@functools.lru_cache(maxsize=16)
def _expected_shapes(config: t5.T5Config) -> dict[str, tuple[int, ...]]:
  """T5X leaf path ('encoder/layers_0/...') -> shape, for `config`.

  Cached (tracing the model takes a moment); callers must not mutate it.
  """
  abstract = nn.unbox(t5.abstract_params(config.replace(dtype="float32")))
  flat = traverse_util.flatten_dict(abstract, sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _assemble(
  stored: Mapping[str, _Stored],
  rules: Mapping[str, _Rule],
  config: t5.T5Config,
  dtype: Any,
  *,
  ignored: Callable[[str], bool] = lambda name: False,
  where: str,
  tied_head: str | None = None,
) -> dict[str, Any]:
  """Validates `stored` against `config`, then reads it leaf by leaf.

  Args:
    stored: Stored name -> tensor.
    rules: T5X leaf path -> where it is stored; must cover every leaf.
    config: The model config the checkpoint must match.
    dtype: Dtype of the returned arrays.
    ignored: Stored names that are known to be unused (not an error).
    where: The checkpoint, for messages about absent tensors.
    tied_head: Stored name of an output layer that must equal the embedding
      (a tied model that also stores it); checked if present.

  Returns:
    The nested T5X parameter tree of NumPy arrays.
  """
  expected = _expected_shapes(config)
  if set(rules) != set(expected):  # a bug in a rule table, not in the file
    raise AssertionError(sorted(set(rules) ^ set(expected)))
  chosen: dict[str, tuple[str, _Rule]] = {}
  used: set[str] = set()
  for leaf, shape in expected.items():
    rule = rules[leaf]
    present = [n for n in rule.names if n in stored]
    if not present:
      raise CheckpointError(
        f"{where}: parameter {leaf} {list(shape)} is missing (looked for "
        f"{' or '.join(repr(n) for n in rule.names)}). Does the config "
        "match this checkpoint (layers, vocab_size, tied embeddings)?"
      )
    for name in present:
      got = stored[name].shape[::-1] if rule.transpose else stored[name].shape
      if tuple(got) != shape:
        raise CheckpointError(
          f"{stored[name].file}: tensor {name!r} for parameter {leaf} has "
          f"shape {list(stored[name].shape)}, expected "
          f"{list(shape[::-1] if rule.transpose else shape)} from the "
          "config. Use the config that came with the checkpoint."
        )
    chosen[leaf] = (present[0], rule)
    used.update(present)
  if tied_head is not None and tied_head in stored:
    used.add(tied_head)
  extra = sorted(n for n in stored if n not in used and not ignored(n))
  if extra:
    raise CheckpointError(
      f"{stored[extra[0]].file}: tensor {extra[0]!r} is not a parameter of "
      f"this model ({len(extra)} unexpected tensor(s): "
      f"{', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}). The "
      "checkpoint and the config disagree (layers, decoder, projection?)."
    )

  params = {}
  for leaf, (name, rule) in chosen.items():
    value = stored[name].read()
    if rule.transpose:
      value = value.T
    if value.shape != expected[leaf]:  # the file lied in its header
      raise CheckpointError(
        f"{stored[name].file}: tensor {name!r} read with shape "
        f"{list(value.shape)}, its header said {list(stored[name].shape)}."
      )
    params[leaf] = np.ascontiguousarray(value, dtype=dtype)
    del value
  if tied_head is not None and tied_head in stored:
    head = stored[tied_head].read()
    if not np.array_equal(
      head.astype(dtype), params["token_embedder/embedding"]
    ):
      raise CheckpointError(
        f"{stored[tied_head].file}: {tied_head!r} differs from the token "
        "embedding, but the config ties them (logits_via_embedding=True). "
        "An untied head with scaled outputs is not supported; check "
        "tie_word_embeddings / scale_decoder_outputs in config.json."
      )
  return traverse_util.unflatten_dict(params, sep="/")


# ---------------------------------------------------------------------------
# Hugging Face names.


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


def _hf_torch_rules(config: t5.T5Config) -> dict[str, _Rule]:
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
      rules[leaf] = _Rule(names)
    else:
      rules[leaf] = _Rule((name,), transpose=kind in ("linear", "relpos"))
  return rules


def _hf_flax_rules(config: t5.T5Config) -> dict[str, _Rule]:
  """Rules for HF Flax names (`flax_model.msgpack`): kernels are [in, out]."""
  suffix = {
    "linear": "kernel",
    "norm": "weight",
    "embed": "embedding",
    "relpos": "embedding",
  }
  return {
    leaf: _Rule(
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
# safetensors (parsed here: the `safetensors` NumPy API cannot return bf16).

_SAFETENSORS_DTYPES = {
  "F64": np.dtype(np.float64),
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
}


def _safetensors_index(file: str) -> dict[str, _Stored]:
  """Tensors of one .safetensors file, validated against the file size."""
  try:
    size = os.path.getsize(file)
    with open(file, "rb") as f:
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
      array = np.fromfile(
        file, dtype=dtype, count=count, offset=data_start + begin
      )
      return array.reshape(shape)

    stored[name] = _Stored(file, shape, read)
  return stored


def _hf_safetensors_stored(directory: str) -> tuple[dict[str, _Stored], str]:
  """All tensors of an HF folder, and the file to name when one is missing.

  Reads `model.safetensors` or, failing that, the shards listed by
  `model.safetensors.index.json` (as transformers does).
  """
  single = _join(directory, "model.safetensors")
  if os.path.isfile(single):
    return _safetensors_index(single), single
  index_file = _join(directory, "model.safetensors.index.json")
  if not os.path.isfile(index_file):
    detect_format(directory)  # raises the right error (pickle, nothing)
    raise CheckpointError(f"{directory}: no model.safetensors found.")
  weight_map = _read_json(index_file).get("weight_map")
  if not isinstance(weight_map, dict):
    raise CheckpointError(f"{index_file}: no 'weight_map' object.")
  stored = {}
  shards: dict[str, dict[str, _Stored]] = {}
  for name, shard in sorted(weight_map.items()):
    if shard not in shards:
      shards[shard] = _safetensors_index(_join(directory, shard))
    if name not in shards[shard]:
      raise CheckpointError(
        f"{_join(directory, shard)}: tensor {name!r}, listed there by "
        f"{index_file}, is not in the file."
      )
    stored[name] = shards[shard][name]
  return stored, index_file


def _read_hf_safetensors(path: str, config: t5.T5Config, dtype) -> dict:
  stored, where = _hf_safetensors_stored(path)
  return _assemble(
    stored,
    _hf_torch_rules(config),
    config,
    dtype,
    ignored=_hf_ignored,
    where=where,
    tied_head="lm_head.weight" if config.logits_via_embedding else None,
  )


# ---------------------------------------------------------------------------
# HF Flax msgpack.


def _read_hf_flax(path: str, config: t5.T5Config, dtype) -> dict:
  file = _join(path, "flax_model.msgpack")
  try:
    # msgpack has no index: the whole file is decoded, then cast leaf by leaf.
    tree = serialization.msgpack_restore(_read_bytes(file))
  except Exception as e:  # msgpack raises several unrelated types
    raise CheckpointError(
      f"{file}: not a readable Flax msgpack ({e})."
    ) from None
  if set(tree) == {"params"}:
    tree = tree["params"]
  flat = traverse_util.flatten_dict(tree, sep="/")
  stored = {
    name: _Stored(file, tuple(np.shape(v)), lambda name=name: flat.pop(name))
    for name, v in flat.items()
  }
  return _assemble(
    stored,
    _hf_flax_rules(config),
    config,
    dtype,
    ignored=_hf_ignored,
    where=file,
    tied_head="lm_head/kernel" if config.logits_via_embedding else None,
  )


# ---------------------------------------------------------------------------
# sentence-transformers folders.


def _sentence_transformer_modules(path: str) -> dict[str, str]:
  """Module type -> folder, checking the module sequence is Sentence-T5's."""
  modules_file = _join(path, "modules.json")
  modules = _read_json(modules_file)
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
    found[kind] = _join(path, module.get("path", ""))
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
  config_file = _join(folder, "config.json")
  pooling = _read_json(config_file)
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
      f"{config_file}: pooling mode {mode!r}; Sentence-T5 here supports "
      "only mean pooling."
    )


def _dense_config(folder: str) -> tuple[int, int]:
  """(in_features, out_features) of the Dense module, checking its form."""
  config_file = _join(folder, "config.json")
  dense = _read_json(config_file)
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
  dense_file = _join(modules["Dense"], "model.safetensors")
  if not os.path.isfile(dense_file):
    if os.path.isfile(_join(modules["Dense"], "pytorch_model.bin")):
      raise CheckpointError(
        f"{_join(modules['Dense'], 'pytorch_model.bin')} is a pickle, which "
        "is never unpickled here. Re-save the model as safetensors: "
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
      f"{_join(modules['Dense'], 'config.json')} says "
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
  rules = _hf_torch_rules(config)
  rules["projection/kernel"] = _Rule(("linear.weight",), transpose=True)
  return _assemble(
    stored, rules, config, dtype, ignored=_hf_ignored, where=where
  )


# ---------------------------------------------------------------------------
# T5X legacy (msgpack + tensorstore zarr).


def _is_ts_spec(node: Any) -> bool:
  # Parameter subtrees never have a key named 'driver'.
  return isinstance(node, dict) and "driver" in node


def _flatten_target(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  if isinstance(tree, dict) and not _is_ts_spec(tree):
    for key, value in tree.items():
      yield from _flatten_target(value, f"{prefix}{key}/")
  else:
    yield prefix.rstrip("/"), tree


def t5x_tensorstore_spec(directory: str, spec: Mapping[str, Any]) -> dict:
  """The TensorStore spec that opens one leaf of a T5X legacy checkpoint.

  T5X stores each leaf's zarr path relative to the checkpoint directory,
  either in `spec['kvstore']['path']` or (tensorstore < 0.1.14) in
  `spec['path']`, and a dummy GCS bucket; the real location is rebuilt from
  `directory` (local or gs://bucket/...).

  Raises:
    CheckpointError: if the spec names no path.
  """
  kvstore = spec.get("kvstore")
  relative = kvstore.get("path") if isinstance(kvstore, dict) else None
  relative = relative or spec.get("path")
  if not relative:
    raise CheckpointError(
      f"{directory}: a tensorstore spec has no 'path' ({dict(spec)})."
    )
  return {
    "driver": spec.get("driver", "zarr"),
    "kvstore": _kvstore(_join(directory, str(relative).strip("/"))),
  }


def _read_t5x_legacy(path: str, config: t5.T5Config, dtype) -> dict:
  import tensorstore as ts

  file = _join(path, "checkpoint")
  try:
    state = serialization.msgpack_restore(_read_bytes(file))
    target = state["optimizer"]["target"]
  except (KeyError, TypeError):
    raise CheckpointError(
      f"{file}: no optimizer/target tree; not a T5X legacy checkpoint."
    ) from None
  except CheckpointError:
    raise
  except Exception as e:  # msgpack raises several unrelated types
    raise CheckpointError(f"{file}: not a readable msgpack ({e}).") from None

  stored = {}
  for name, leaf in _flatten_target(target):
    if _is_ts_spec(leaf):
      spec = t5x_tensorstore_spec(path, leaf)
      kvstore = spec["kvstore"]
      where = kvstore["path"]
      if kvstore["driver"] == "gcs":
        where = f"gs://{kvstore['bucket']}/{where}"

      def open_array(spec=spec, where=where):
        try:
          return ts.open(spec, read=True).result()
        except Exception as e:  # tensorstore reports I/O as ValueError etc.
          raise CheckpointError(
            f"{where}: cannot open the zarr array ({e})."
          ) from None

      shape = (leaf.get("metadata") or {}).get("shape")
      if shape is None:  # only the array's own .zarray knows
        shape = open_array().shape
      stored[name] = _Stored(
        where,
        tuple(int(d) for d in shape),
        lambda open_array=open_array: open_array().read().result(),
      )
    else:
      array = np.asarray(leaf)
      stored[name] = _Stored(file, array.shape, lambda array=array: array)
  rules = {leaf: _Rule((leaf,)) for leaf in _expected_shapes(config)}
  return _assemble(stored, rules, config, dtype, where=file)


# ---------------------------------------------------------------------------
# Orbax (T5X train state, and our converted format): see orbax_io.py.


def _read_orbax(fmt: str) -> Callable[[str, t5.T5Config, Any], dict]:
  def read(path: str, config: t5.T5Config, dtype) -> dict:
    from data_efficient.models import orbax_io

    return orbax_io.read_params(path, fmt, config, dtype)

  return read


# ---------------------------------------------------------------------------

# Formats read through TensorStore/Orbax, which open gs:// themselves.
_REMOTE_FORMATS = ("t5x_legacy", "orbax_t5x", "orbax_params")

_READERS = {
  "orbax_t5x": _read_orbax("orbax_t5x"),
  "orbax_params": _read_orbax("orbax_params"),
  "t5x_legacy": _read_t5x_legacy,
  "sentence_transformers": _read_sentence_transformers,
  "hf_safetensors": _read_hf_safetensors,
  "hf_flax": _read_hf_flax,
}


def load_params(
  path: str | os.PathLike, config: t5.T5Config, dtype: Any = np.float32
) -> dict:
  """Reads the checkpoint at `path` into the T5X-named tree for `config`.

  Args:
    path: Checkpoint directory (any format `detect_format` knows; gs:// for
      T5X and Orbax checkpoints).
    config: The model the parameters are for; every leaf is checked against
      it.
    dtype: Dtype of the returned arrays (e.g. np.float32, jnp.bfloat16).

  Returns:
    Nested dict of NumPy arrays, the structure of
    `nn.unbox(t5.abstract_params(config))`.

  Raises:
    CheckpointError: on a missing, extra or mis-shaped leaf (naming the leaf
      and the file), an unreadable file, or an unsupported format.
  """
  path = os.fspath(path)
  fmt = detect_format(path)
  if _GCS.match(path) and fmt not in _REMOTE_FORMATS:
    raise CheckpointError(
      f"{path}: {fmt} checkpoints are read from local disk only; copy the "
      "folder locally first."
    )
  return _READERS[fmt](path, config, np.dtype(dtype))
