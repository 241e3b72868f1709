"""Flax T5: encoder, decoder, encoder-decoder and the Sentence-T5 encoder.

Parameter names and shapes equal T5X's (`t5x/examples/t5/network.py`), so a
T5X checkpoint's `target` tree loads with no renaming:

  token_embedder/embedding                       [vocab, embed]
  encoder/relpos_bias/rel_embedding              [heads, relpos_buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale
  encoder/layers_{i}/attention/{query,key,value}/kernel   [embed, heads*kv]
  encoder/layers_{i}/attention/out/kernel        [heads*kv, embed]
  encoder/layers_{i}/pre_mlp_layer_norm/scale
  encoder/layers_{i}/mlp/{wi | wi_0, wi_1}/kernel [embed, mlp]
  encoder/layers_{i}/mlp/wo/kernel               [mlp, embed]
  encoder/encoder_norm/scale
  decoder/... self_attention, encoder_decoder_attention,
      pre_self_attention_layer_norm, pre_cross_attention_layer_norm
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                    [embed, vocab] (untied only)

The Sentence-T5 model adds `projection/kernel` [embed, out] (the
sentence-transformers `2_Dense` layer, no bias).

Every parameter carries logical axis names (`vocab`, `embed`, `joined_kv`,
`mlp`, `heads`, `relpos_buckets`) that `data_efficient.sharding` maps onto the
('data', 'model') mesh. The model is inference-only: no dropout.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Attention logit of masked positions (T5X masks with the same magnitude).
_MASK_LOGIT = -1e10


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of a T5 network (T5 1.0 and T5 1.1 / Flan-T5).

  Attributes:
    vocab_size: Size of the (padded) SentencePiece vocabulary.
    emb_dim: Width of the residual stream (`d_model`).
    num_heads: Attention heads per layer.
    num_encoder_layers: Encoder blocks.
    num_decoder_layers: Decoder blocks; 0 for an encoder-only model.
    head_dim: Width of one attention head (`d_kv`).
    mlp_dim: Hidden width of the feed-forward block (`d_ff`).
    mlp_activations: ('relu',) for T5 1.0; ('gelu', 'linear') for the gated
      GELU of T5 1.1, whose product of the two branches feeds `wo`.
    logits_via_embedding: True ties the output layer to `token_embedder`
      (T5 1.0, logits scaled by 1/sqrt(emb_dim)); False uses an untied
      `decoder/logits_dense` (T5 1.1).
    relative_attention_num_buckets: Relative-position buckets per stack.
    relative_attention_max_distance: Distance beyond which buckets saturate.
    layer_norm_epsilon: Epsilon of the RMS layer norm.
    projection_dim: Output width of the Sentence-T5 projection, or None.
    dtype: Activation and matmul dtype ('float32' or 'bfloat16'). Layer-norm
      statistics and softmax always run in float32.
  """

  vocab_size: int
  emb_dim: int
  num_heads: int
  num_encoder_layers: int
  num_decoder_layers: int
  head_dim: int
  mlp_dim: int
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  projection_dim: int | None = None
  dtype: str = "float32"

  def replace(self, **changes) -> T5Config:
    """Returns a copy with `changes` applied (e.g. `dtype='bfloat16'`)."""
    return dataclasses.replace(self, **changes)


def logical_param(module: nn.Module, name: str, init, shape, axes):
  """A float32 parameter annotated with logical axis names (for sharding)."""
  return module.param(
    name, nn.with_logical_partitioning(init, axes), shape, jnp.float32
  )


class LayerNorm(nn.Module):
  """T5 layer norm: RMS scaling only, no mean subtraction and no bias."""

  epsilon: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = logical_param(
      self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",)
    )
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(variance + self.epsilon)
    return y.astype(self.dtype) * scale.astype(self.dtype)


_KERNEL_INIT = nn.initializers.lecun_normal()


class Dense(nn.Module):
  """A dense layer over the last axis, with a 2-D kernel [in, out].

  T5 has no biases; `use_bias` adds one (named `bias`, as BERT's).
  """

  features: int
  axes: tuple[str, str]
  dtype: jnp.dtype
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = logical_param(
      self, "kernel", _KERNEL_INIT, (x.shape[-1], self.features), self.axes
    )
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if not self.use_bias:
      return y
    bias = logical_param(
      self, "bias", nn.initializers.zeros, (self.features,), self.axes[1:]
    )
    return y + bias.astype(self.dtype)


class DenseKernel(nn.Module):
  """The kernel of a `Dense` layer of the same name, returned unapplied."""

  shape: tuple[int, int]
  axes: tuple[str, str]

  @nn.compact
  def __call__(self) -> Array:
    return logical_param(self, "kernel", _KERNEL_INIT, self.shape, self.axes)


class Embed(nn.Module):
  """Token embedding table, also usable as a tied output layer."""

  num_embeddings: int
  features: int
  dtype: jnp.dtype

  def setup(self):
    self.embedding = logical_param(
      self,
      "embedding",
      nn.initializers.normal(stddev=1.0),
      (self.num_embeddings, self.features),
      ("vocab", "embed"),
    )

  def __call__(self, tokens: Array) -> Array:
    # [batch, length] -> [batch, length, embed]
    return jnp.take(self.embedding.astype(self.dtype), tokens, axis=0)

  def attend(self, x: Array) -> Array:
    # [batch, length, embed] -> [batch, length, vocab]
    return jnp.dot(x.astype(self.dtype), self.embedding.astype(self.dtype).T)


def relative_position_buckets(
  query_length: int,
  key_length: int,
  *,
  bidirectional: bool,
  num_buckets: int,
  max_distance: int,
) -> np.ndarray:
  """T5's relative-position bucket of every (query, key) pair.

  Shapes are static, so this runs in NumPy at trace time. The arithmetic
  (float32 log of the distance over a float64 constant) is the one the
  reference implementations use, so bucket edges agree exactly.

  Returns:
    int32 array [query_length, key_length].
  """
  context = np.arange(query_length, dtype=np.int64)[:, None]
  memory = np.arange(key_length, dtype=np.int64)[None, :]
  relative = memory - context
  buckets = np.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative)
  else:
    distance = -np.minimum(relative, 0)
  max_exact = num_buckets // 2
  # Distances below max_exact take the exact branch; clamp so log stays finite.
  far = np.maximum(distance, max_exact).astype(np.float32)
  log_ratio = np.log(far / np.float32(max_exact))
  scaled = log_ratio / np.float32(math.log(max_distance / max_exact))
  large = max_exact + (scaled * np.float32(num_buckets - max_exact)).astype(
    np.int64, copy=False
  )
  large = np.minimum(large, num_buckets - 1)
  buckets += np.where(distance < max_exact, distance, large)
  return buckets.astype(np.int32)


class RelativePositionBiases(nn.Module):
  """One learned bias per (head, bucket), shared by all layers of a stack."""

  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool) -> Array:
    rel_embedding = logical_param(
      self,
      "rel_embedding",
      nn.initializers.normal(stddev=1.0),
      (self.num_heads, self.num_buckets),
      ("heads", "relpos_buckets"),
    )
    buckets = relative_position_buckets(
      qlen,
      klen,
      bidirectional=bidirectional,
      num_buckets=self.num_buckets,
      max_distance=self.max_distance,
    )
    # [heads, buckets] -> [1, heads, qlen, klen]
    values = jnp.take(rel_embedding, jnp.asarray(buckets), axis=1)
    return values[None].astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """Dot-product attention without 1/sqrt(head_dim) scaling, as in T5.

  With few queries per row (the first decoder step scores one query per
  packed example against hundreds of encoder tokens) the key and value
  projections dominate the cost, so they are folded into the query side
  instead: q.(W_k h) = (W_k^T q).h and sum_j a_j W_v h_j = W_v (sum_j a_j h_j).
  That is the same function (up to float rounding) at about
  queries / head_dim of the cost; `_fold_projections` picks the cheaper form.
  """

  num_heads: int
  head_dim: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(
    self,
    inputs_q: Array,
    inputs_kv: Array,
    mask: Array,
    bias: Array | None = None,
  ) -> Array:
    """Attends `inputs_q` [b, q, embed] to `inputs_kv` [b, k, embed].

    Args:
      inputs_q: Query-side activations.
      inputs_kv: Key/value-side activations.
      mask: Boolean [b or 1, 1, q or 1, k]: which keys each query may see
        (the same for every head).
      bias: Position biases [1, heads, q, k] added to the logits, or None.
        Kept apart from the mask so neither is materialised at
        [b, heads, q, k]: both fuse into the softmax (15-20% faster than one
        precomputed additive bias in an isolated XLA:CPU attention timing;
        within noise in the whole model at 2 rows per batch).

    Returns:
      [b, q, embed].
    """
    inner = self.num_heads * self.head_dim
    embed = inputs_q.shape[-1]
    heads = (self.num_heads, self.head_dim)

    def project(name: str, x: Array) -> Array:
      # [b, len, embed] -> [b, len, heads, kv]
      y = Dense(inner, ("embed", "joined_kv"), self.dtype, name=name)(x)
      return y.reshape(y.shape[:2] + heads)

    def kernel(name: str) -> Array:
      # The kernel of projection `name` as [embed, heads, kv].
      k = DenseKernel((embed, inner), ("embed", "joined_kv"), name=name)()
      return k.astype(self.dtype).reshape((embed,) + heads)

    query = project("query", inputs_q)
    queries, keys = inputs_q.shape[1], inputs_kv.shape[1]
    if _fold_projections(queries, keys, embed, *heads):
      kv = inputs_kv.astype(self.dtype)
      # [b, q, heads, kv] x [embed, heads, kv] -> [b, q, heads, embed]
      query = jnp.einsum("bqhd,ehd->bqhe", query, kernel("key"))
      logits = jnp.einsum(
        "bqhe,bke->bhqk", query, kv, preferred_element_type=jnp.float32
      )
      weights = _softmax(logits, mask, bias, self.dtype)
      mixed = jnp.einsum("bhqk,bke->bqhe", weights, kv)
      context = jnp.einsum("bqhe,ehd->bqhd", mixed, kernel("value"))
    else:
      key = project("key", inputs_kv)
      value = project("value", inputs_kv)
      context = attend(query, key, value, mask, bias, self.dtype)
    # [b, q, heads, kv] -> [b, q, heads * kv]
    context = context.reshape(context.shape[:2] + (inner,))
    return Dense(embed, ("joined_kv", "embed"), self.dtype, name="out")(context)


def _softmax(
  logits: Array, mask: Array, bias: Array | None, dtype: jnp.dtype
) -> Array:
  """Attention weights from float32 logits: biased, masked, normalised."""
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  logits = jnp.where(mask, logits, _MASK_LOGIT)
  return jax.nn.softmax(logits, axis=-1).astype(dtype)


def attend(
  query: Array,
  key: Array,
  value: Array,
  mask: Array,
  bias: Array | None,
  dtype: jnp.dtype,
) -> Array:
  """Softmax attention of projected [b, len, heads, kv] operands.

  Args:
    query, key, value: [b, q or k, heads, kv] (any logit scaling already
      applied to `query`).
    mask: Boolean [b or 1, 1, q or 1, k]: which keys each query may see.
    bias: [1, heads, q, k] added to the float32 logits, or None.
    dtype: Dtype of the weights and the result.

  Returns:
    [b, q, heads, kv]. The heads run batched, or one at a time where that is
    faster (`_one_head_at_a_time`).
  """
  queries, keys = query.shape[1], key.shape[1]
  per_head = _one_head_at_a_time(queries, keys)
  fn = _attend_per_head if per_head else _attend
  return fn(query, key, value, mask, bias, dtype)


def _attend(query, key, value, mask, bias, dtype) -> Array:
  """All heads at once: [b, len, heads, kv] operands -> [b, q, heads, kv].

  Heads-major [b, heads, len, kv] operands: each head's two matmuls then
  read contiguous rows (30% faster than contracting the [b, len, heads, kv]
  layout in an isolated XLA:CPU attention timing; a few percent in the whole
  model).
  """
  query, key, value = (x.transpose(0, 2, 1, 3) for x in (query, key, value))
  logits = jnp.einsum(
    "bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32
  )
  weights = _softmax(logits, mask, bias, dtype)
  return jnp.einsum("bhqk,bhkd->bhqd", weights, value).transpose(0, 2, 1, 3)


def _attend_per_head(query, key, value, mask, bias, dtype) -> Array:
  """`_attend`, one head at a time (a loop), so that one head's [b, q, k]
  logits and weights stay in cache instead of all heads' going to memory."""
  mask = mask[:, 0]  # the same for every head

  def one_head(operands):
    q, k, v, head_bias = operands  # [b, len, kv] each, [q, k] or None
    logits = jnp.einsum(
      "bqd,bkd->bqk", q, k, preferred_element_type=jnp.float32
    )
    weights = _softmax(logits, mask, head_bias, dtype)
    return jnp.einsum("bqk,bkd->bqd", weights, v)

  # [b, len, heads, kv] -> [heads, b, len, kv], and back.
  per_head = [jnp.moveaxis(x, 2, 0) for x in (query, key, value)]
  head_bias = None if bias is None else bias[0]
  return jnp.moveaxis(jax.lax.map(one_head, (*per_head, head_bias)), 0, 2)


def _one_head_at_a_time(queries: int, keys: int) -> bool:
  """Whether `_attend_per_head` is faster than `_attend` here.

  On XLA:CPU, attention over long rows is bound by memory traffic of the
  [b, heads, q, k] logits. Measured on Flan-T5-Base's encoder (2 cores,
  same process): one head at a time is 5% faster at 512 tokens per row, 3%
  at 256, 1% slower at 128 and below. With it, 4 rows of 512 tokens per
  batch score 7-10% faster per row than the 2 rows that were best before
  (`engine.CPU_TOKENS_PER_DEVICE`).
  Accelerators keep all heads in one batched matmul.
  """
  return jax.default_backend() == "cpu" and queries * keys >= 256 * 256


def _fold_projections(
  queries: int, keys: int, embed: int, num_heads: int, head_dim: int
) -> bool:
  """Whether folding W_k, W_v into the queries costs fewer FLOPs.

  Per key: projecting costs ~4 embed * inner (+ 4 queries * inner to score
  and mix); folding costs ~4 queries * heads * embed. Folding also moves
  both kernels into a heads-major layout once per call (XLA transposes
  them), so it only pays when there are more keys than queries.
  """
  inner = num_heads * head_dim
  cheaper = queries * num_heads * embed < inner * (embed + queries)
  return cheaper and keys > queries


class MlpBlock(nn.Module):
  """Feed-forward block; several activations are multiplied (gated)."""

  mlp_dim: int
  activations: Sequence[str]
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: Array) -> Array:
    hidden = None
    for i, name in enumerate(self.activations):
      dense_name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      h = Dense(self.mlp_dim, ("embed", "mlp"), self.dtype, name=dense_name)(x)
      h = _activation(name)(h)
      hidden = h if hidden is None else hidden * h
    return Dense(x.shape[-1], ("mlp", "embed"), self.dtype, name="wo")(hidden)


def _activation(name: str):
  if name == "linear":
    return lambda x: x
  if name == "gelu":  # tanh approximation, as T5X and HF's `gelu_new`
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu
  raise ValueError(f"Unknown MLP activation {name!r}: use relu, gelu, linear.")


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, mask: Array, bias: Array) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    h = LayerNorm(
      cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm"
    )(x)
    h = MultiHeadAttention(
      cfg.num_heads, cfg.head_dim, dtype, name="attention"
    )(h, h, mask, bias)
    x = x + h
    h = LayerNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    return x + MlpBlock(cfg.mlp_dim, cfg.mlp_activations, dtype, name="mlp")(h)


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(
    self,
    y: Array,
    encoded: Array,
    self_mask: Array,
    self_bias: Array,
    cross_mask: Array,
  ) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    eps = cfg.layer_norm_epsilon
    h = LayerNorm(eps, dtype, name="pre_self_attention_layer_norm")(y)
    h = MultiHeadAttention(
      cfg.num_heads, cfg.head_dim, dtype, name="self_attention"
    )(h, h, self_mask, self_bias)
    y = y + h
    h = LayerNorm(eps, dtype, name="pre_cross_attention_layer_norm")(y)
    h = MultiHeadAttention(
      cfg.num_heads, cfg.head_dim, dtype, name="encoder_decoder_attention"
    )(h, encoded, cross_mask)
    y = y + h
    h = LayerNorm(eps, dtype, name="pre_mlp_layer_norm")(y)
    return y + MlpBlock(cfg.mlp_dim, cfg.mlp_activations, dtype, name="mlp")(h)


def _key_mask(
  query_segments: Array | None, key_tokens: Array, key_segments: Array | None
) -> Array:
  """[b, 1, q or 1, k]: which keys each query may see: non-padding, and of
  the same segment if rows are packed."""
  # [b, k] -> [b, 1, k]
  mask = (key_tokens > 0)[:, None, :]
  if key_segments is not None:
    mask = mask & (query_segments[:, :, None] == key_segments[:, None, :])
  return mask[:, None]


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, segment_ids: Array | None = None) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    length = tokens.shape[1]
    # Padding keys are masked; packed rows also block cross-segment attention.
    mask = _key_mask(segment_ids, tokens, segment_ids)
    bias = RelativePositionBiases(
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      cfg.num_heads,
      jnp.float32,
      name="relpos_bias",
    )(length, length, bidirectional=True)
    # [batch, length] -> [batch, length, embed]
    x = self.shared_embedding(tokens)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, mask, bias)
    return LayerNorm(cfg.layer_norm_epsilon, dtype, name="encoder_norm")(x)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(
    self,
    encoded: Array,
    encoder_tokens: Array,
    decoder_tokens: Array,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
  ) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    length = decoder_tokens.shape[1]
    # [1 or b, 1, length, length]
    self_mask = jnp.asarray(np.tril(np.ones((length, length), dtype=bool)))
    self_mask = self_mask[None, None]
    if decoder_segment_ids is not None:
      same = decoder_segment_ids[:, :, None] == decoder_segment_ids[:, None, :]
      self_mask = self_mask & same[:, None]
    self_bias = RelativePositionBiases(
      cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance,
      cfg.num_heads,
      jnp.float32,
      name="relpos_bias",
    )(length, length, bidirectional=False)
    cross_mask = _key_mask(
      decoder_segment_ids, encoder_tokens, encoder_segment_ids
    )
    # [batch, dec_length] -> [batch, dec_length, embed]
    y = self.shared_embedding(decoder_tokens)
    for i in range(cfg.num_decoder_layers):
      y = DecoderLayer(cfg, name=f"layers_{i}")(
        y, encoded, self_mask, self_bias, cross_mask
      )
    y = LayerNorm(cfg.layer_norm_epsilon, dtype, name="decoder_norm")(y)
    if cfg.logits_via_embedding:
      # Tied output layer: T5 1.0 rescales by 1/sqrt(emb_dim).
      logits = self.shared_embedding.attend(y) / np.sqrt(y.shape[-1])
    else:
      logits = Dense(
        cfg.vocab_size, ("embed", "vocab"), dtype, name="logits_dense"
      )(y)
    # [batch, dec_length, vocab], float32 for a stable softmax downstream.
    return logits.astype(jnp.float32)


class T5(nn.Module):
  """T5 encoder-decoder (or encoder-only when num_decoder_layers == 0)."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(
      cfg.vocab_size, cfg.emb_dim, jnp.dtype(cfg.dtype)
    )
    self.encoder = Encoder(cfg, self.token_embedder)
    if cfg.num_decoder_layers:
      self.decoder = Decoder(cfg, self.token_embedder)

  def encode(
    self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None
  ) -> Array:
    """[batch, length] int32 (0 = padding) -> [batch, length, embed]."""
    return self.encoder(encoder_input_tokens, encoder_segment_ids)

  def decode(
    self,
    encoded: Array,
    encoder_input_tokens: Array,
    decoder_input_tokens: Array,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
  ) -> Array:
    """Decoder logits [batch, dec_length, vocab] given the encoder output.

    With segment ids, several examples share one row: each decoder token sees
    only encoder tokens (and earlier decoder tokens) of its own segment.
    """
    return self.decoder(
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
    )

  def __call__(
    self, encoder_input_tokens: Array, decoder_input_tokens: Array
  ) -> Array:
    """Teacher-forced logits [batch, dec_length, vocab]."""
    encoded = self.encode(encoder_input_tokens)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens)


class SentenceT5(nn.Module):
  """Sentence-T5: encoder -> masked mean pool -> Dense (no bias) -> L2 norm."""

  config: T5Config

  def setup(self):
    cfg = self.config
    if cfg.projection_dim is None:
      raise ValueError("SentenceT5 needs a config with projection_dim set.")
    self.token_embedder = Embed(
      cfg.vocab_size, cfg.emb_dim, jnp.dtype(cfg.dtype)
    )
    self.encoder = Encoder(cfg, self.token_embedder)
    self.projection = Dense(
      cfg.projection_dim, ("embed", "mlp"), jnp.dtype(cfg.dtype)
    )

  def __call__(self, tokens: Array) -> Array:
    """[batch, length] int32 (0 = padding) -> unit vectors [batch, out] f32."""
    segments = (tokens > 0).astype(jnp.int32)
    return self.embed_segments(tokens, segments, 1)[:, 0]

  def embed_segments(
    self, tokens: Array, segment_ids: Array, num_segments: int
  ) -> Array:
    """Embeds several sequences packed per row.

    Args:
      tokens: [batch, length] int32, 0 = padding.
      segment_ids: [batch, length], 1..num_segments per row, 0 = padding.
      num_segments: Most sequences in a row.

    Returns:
      float32 unit vectors [batch, num_segments, out]; rows of segments
      that hold no tokens are zero.
    """
    encoded = self.encoder(tokens, segment_ids).astype(jnp.float32)
    # [batch, segments, length]: which tokens belong to each segment.
    member = (
      segment_ids[:, None, :] == jnp.arange(1, num_segments + 1)[None, :, None]
    )
    member = member.astype(jnp.float32)
    counts = jnp.sum(member, axis=-1, keepdims=True)
    # Masked mean over each segment's tokens -> [batch, segments, embed].
    pooled = jnp.einsum(
      "bsl,ble->bse", member, encoded, precision=jax.lax.Precision.HIGHEST
    ) / jnp.maximum(counts, 1.0)
    projected = self.projection(pooled.astype(jnp.dtype(self.config.dtype)))
    projected = projected.astype(jnp.float32)
    norm = jnp.linalg.norm(projected, axis=-1, keepdims=True)
    # sentence-transformers' Normalize clamps the norm at 1e-12.
    return projected / jnp.maximum(norm, 1e-12)


def make_model(config: T5Config) -> nn.Module:
  """The module for `config`: SentenceT5 if it projects, else T5."""
  return SentenceT5(config) if config.projection_dim else T5(config)


def _init(config: T5Config, rng: Array) -> dict:
  """Initialises every parameter of `config`'s model (boxed, with axes)."""
  model = make_model(config)
  tokens = jnp.ones((1, 8), jnp.int32)
  if isinstance(model, SentenceT5):
    return model.init(rng, tokens)["params"]
  if not config.num_decoder_layers:
    return model.init(rng, tokens, method=model.encode)["params"]
  return model.init(rng, tokens, tokens[:, :1])["params"]


def abstract_params(config: T5Config) -> dict:
  """The boxed parameter tree (shapes, dtypes, logical axes), no memory."""
  return jax.eval_shape(functools.partial(_init, config), jax.random.key(0))


def init_params(config: T5Config, seed: int = 0) -> dict:
  """Random float32 parameters (plain arrays) for `config`."""
  return nn.unbox(_init(config, jax.random.key(seed)))
