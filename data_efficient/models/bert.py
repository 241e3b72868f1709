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
`token_types` for `data_efficient.sharding`. `checkpoints.hf.load_minilm`
maps a Hugging Face `BertModel` safetensors file onto this tree (BERT's
pooler is unused by sentence-transformers and skipped). Inference only: no
dropout.

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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from data_efficient.models import t5
from data_efficient.models.t5 import logical_param

Array = jax.Array

# config.json `hidden_act` -> our activation. "gelu" is BERT's exact erf form.
ACTIVATIONS = ("gelu", "gelu_new", "relu")


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
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(
        f"hidden_act={self.hidden_act!r} is not supported; use one of "
        f"{ACTIVATIONS}."
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
