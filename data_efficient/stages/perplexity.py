"""The perplexity-filter baseline: mean token NLL under a prefix-LM T5.

The paper's perplexity filter scores each example by its perplexity under a
T5 language model and keeps the LOWEST. T5 is an encoder-decoder, so it is
used as a prefix language model, the objective the T5 1.1 "LM-adapted"
checkpoints (t5.1.1.lm100k) were trained on: the encoder reads a prefix of
the text, the decoder predicts the continuation.

The split (fixed, so a score is reproducible; see docs/perplexity.md):

  tokens    = SentencePiece(text), no EOS, no prompt; n = len(tokens)
  kept      = tokens[:max_tokens]              (truncated = n > max_tokens)
  k         = len(kept) // 2                   (the prefix: first half)
  inputs    = kept[:k] + [EOS]                 encoder
  targets   = kept[k:] + [EOS]                 decoder, teacher-forced from
                                               the pad id (0), as T5 does
  nll_sum   = sum over targets of -log P(target | inputs, earlier targets)
  mean_nll  = nll_sum / len(targets);  perplexity = exp(mean_nll)

T5's `prefix_lm` preprocessor draws the prefix length uniformly from
[1, n - 1] and appends EOS to both inputs and targets (also when a chunk was
cut from the middle of a document); the first half is that distribution's
mean. An example with fewer than 2 tokens has nothing to condition on or
nothing to predict: it still runs (inputs = [EOS], targets = its tokens +
EOS), but its `nll_sum`, `mean_nll` and `perplexity` are NaN.

Packing: the encoder inputs and the decoder targets of an example sit in two
parallel rows under the same segment number (`engine.make_batches` with
`decoder_target_ids`), so a
row's examples never see each other: encoder self-attention and
cross-attention are masked by segment, decoder self-attention is causal and
masked by segment. Positions are not renumbered per segment, and need not
be: T5's relative position buckets depend only on key - query differences,
which within a segment are those of an unpacked row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_efficient.models import t5
from data_efficient.models.tokenizer import Tokenizer, check_vocab_fits
from data_efficient.stages import configs, engine

# Names the prefix/target rule in manifests; change it if the rule changes.
SPLIT_VERSION = "first_half_v1"
# Document tokens read per example (prefix + continuation, EOS not counted).
DEFAULT_MAX_TOKENS = configs.default(configs.PerplexityConfig, "max_tokens")
# Fewer tokens leave an empty prefix: no prefix-LM score (NaN).
MIN_TOKENS = 2
# Packing rows are rounded up to this many tokens, the runner's default
# bucket step, so that every length bucket is a multiple of it.
_ROW_MULTIPLE = 64


@dataclasses.dataclass(frozen=True)
class PrefixLMExamples:
  """Encoder inputs and decoder targets of a batch of examples."""

  inputs: list[np.ndarray]  # each int32 [k + 1]: prefix, then EOS
  targets: list[np.ndarray]  # each int32 [n_kept - k + 1]: rest, then EOS
  truncated: np.ndarray  # bool [n]: tokens beyond max_tokens were dropped

  @property
  def n_prefix_tokens(self) -> np.ndarray:
    return np.asarray([len(x) - 1 for x in self.inputs], np.int32)

  @property
  def n_target_tokens(self) -> np.ndarray:
    """Scored tokens per example: the continuation and the EOS."""
    return np.asarray([len(x) for x in self.targets], np.int32)

  @property
  def n_tokens(self) -> np.ndarray:
    """Document tokens read per example (prefix + continuation)."""
    return self.n_prefix_tokens + self.n_target_tokens - 1


def split_prefix_target(
  tokens: Sequence[int], max_tokens: int, eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
  """The (inputs, targets) ids of one tokenized example (module docstring).

  Args:
    tokens: The example's token ids, without EOS.
    max_tokens: Most document tokens read; later ones are dropped.
    eos_id: The vocabulary's EOS id, appended to both sides.

  Returns:
    int32 encoder inputs (first half + EOS) and decoder targets (second
    half + EOS).
  """
  kept = np.asarray(tokens[:max_tokens], np.int32)
  k = len(kept) // 2
  return np.append(kept[:k], np.int32(eos_id)), np.append(
    kept[k:], np.int32(eos_id)
  )


def encode_examples(
  tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int
) -> PrefixLMExamples:
  """Tokenizes and splits every text (host side).

  Raises:
    ValueError: if `max_tokens` < MIN_TOKENS.
  """
  _check_max_tokens(max_tokens)
  # No piece spans 64 characters: cutting the text first bounds the work on
  # huge documents without changing the first max_tokens pieces.
  heads = [t[: 64 * max_tokens] for t in texts]
  pieces = tokenizer.encode_batch(heads)
  inputs, targets = [], []
  for p in pieces:
    x, y = split_prefix_target(p, max_tokens, tokenizer.eos_id)
    inputs.append(x)
    targets.append(y)
  truncated = np.asarray(
    [
      len(p) > max_tokens or len(h) < len(t)
      for p, h, t in zip(pieces, heads, texts, strict=True)
    ],
    bool,
  )
  return PrefixLMExamples(inputs=inputs, targets=targets, truncated=truncated)


def _check_max_tokens(max_tokens: int) -> None:
  if max_tokens < MIN_TOKENS:
    raise ValueError(
      f"max_tokens={max_tokens} must be at least {MIN_TOKENS}: the prefix "
      "and the continuation each need a token."
    )


def decoder_inputs(targets: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """Teacher-forcing inputs: targets shifted right within each segment.

  Every segment starts from the pad id 0, as T5X's
  `make_autoregressive_inputs` does with sequence ids.

  Args:
    targets: int32 [b, len] packed decoder targets.
    segment_ids: int32 [b, len] their segment ids.

  Returns:
    int32 [b, len].
  """
  shifted = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))
  previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)))
  return jnp.where(previous == segment_ids, shifted, 0)


def make_token_nll_fn(config: t5.T5Config):
  """Per-token negative log-likelihood of packed decoder targets (pure).

  Returns:
    fn(params, tokens, segment_ids, decoder_target_tokens,
    decoder_segment_ids) -> float32 [b, len]: -log P(target token) under
    teacher forcing (natural log, full vocabulary), 0 at padding.
  """
  model = t5.T5(config)

  def token_nll(
    params, tokens, segment_ids, decoder_target_tokens, decoder_segment_ids
  ):
    variables = {"params": params}
    encoded = model.apply(variables, tokens, segment_ids, method=model.encode)
    # [b, len, vocab] float32
    logits = model.apply(
      variables,
      encoded,
      tokens,
      decoder_inputs(decoder_target_tokens, decoder_segment_ids),
      segment_ids,
      decoder_segment_ids,
      method=model.decode,
    )
    # -log softmax at the target, without a second [b, len, vocab] array.
    target_logits = jnp.take_along_axis(
      logits, decoder_target_tokens[..., None], axis=-1
    )[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logits
    return jnp.where(decoder_segment_ids > 0, nll, 0.0)

  return token_nll


def make_step_fn(config: t5.T5Config):
  """The per-batch function the runner jits and shards (pure).

  Returns:
    fn(params, tokens, segment_ids, num_segments, decoder_target_tokens,
    decoder_segment_ids) -> dict of [b, num_segments]: `nll_sum` (float32),
    `n_scored` (decoder tokens scored) and `n_inputs` (encoder tokens,
    EOS included), both int32. Segments that hold nothing are zero.
  """
  token_nll = make_token_nll_fn(config)

  def step(
    params,
    tokens,
    segment_ids,
    num_segments: int,
    decoder_target_tokens,
    decoder_segment_ids,
  ):
    nll = token_nll(
      params, tokens, segment_ids, decoder_target_tokens, decoder_segment_ids
    )
    numbers = jnp.arange(1, num_segments + 1, dtype=jnp.int32)[None, :, None]
    # [b, s, len]: which positions belong to each segment.
    decoder_member = decoder_segment_ids[:, None, :] == numbers
    encoder_member = segment_ids[:, None, :] == numbers
    # Masked sums, not a matmul: exact float32 on every backend.
    return {
      "nll_sum": jnp.sum(jnp.where(decoder_member, nll[:, None, :], 0.0), -1),
      "n_scored": jnp.sum(decoder_member, -1, dtype=jnp.int32),
      "n_inputs": jnp.sum(encoder_member, -1, dtype=jnp.int32),
    }

  return step


def scores_from_sums(
  nll_sum: np.ndarray, n_scored: np.ndarray, n_inputs: np.ndarray
) -> dict[str, np.ndarray]:
  """nll_sum, mean_nll, perplexity (float32); NaN where the prefix is empty.

  Args:
    nll_sum: [n] summed target NLL per example.
    n_scored: [n] target tokens scored (continuation + EOS).
    n_inputs: [n] encoder tokens (prefix + EOS); 1 means an empty prefix.
  """
  nll_sum = np.asarray(nll_sum, np.float64)
  valid = (np.asarray(n_inputs) >= 2) & (np.asarray(n_scored) >= 1)
  nll_sum = np.where(valid, nll_sum, np.nan)
  mean = nll_sum / np.maximum(n_scored, 1)
  return {
    "nll_sum": nll_sum.astype(np.float32),
    "mean_nll": mean.astype(np.float32),
    "perplexity": np.exp(mean).astype(np.float32),
  }


class PerplexityStage:
  """The perplexity stage for a runner that packs decoder targets.

  `step` takes the decoder rows after `num_segments` (the runner passes
  them in that order when `seq2seq` is True).
  """

  seq2seq = True  # prepare() sets decoder_target_ids; step takes 6 args

  def __init__(
    self,
    config: t5.T5Config,
    tokenizer: Tokenizer,
    max_tokens: int = DEFAULT_MAX_TOKENS,
  ):
    if not config.num_decoder_layers:
      raise ValueError(
        "Perplexity needs an encoder-decoder T5 (e.g. --model flan_t5_small "
        "with a T5 1.1 LM-adapted checkpoint), not an encoder-only model."
      )
    _check_max_tokens(max_tokens)
    check_vocab_fits(tokenizer.vocab_size, config.vocab_size, tokenizer.path)
    self.config = config
    self.tokenizer = tokenizer
    self.max_tokens = max_tokens
    # Row cap of the packing: the longer side of the split plus its EOS.
    longest = max_tokens - max_tokens // 2 + 1
    self.max_length = -(-longest // _ROW_MULTIPLE) * _ROW_MULTIPLE
    self.step = make_step_fn(config)

  def prepare(self, texts: list[str]) -> engine.Prepared:
    examples = encode_examples(self.tokenizer, texts, self.max_tokens)
    return engine.Prepared(
      ids=examples.inputs,
      decoder_target_ids=examples.targets,
      columns={
        "n_tokens": examples.n_tokens,
        "truncated": examples.truncated,
        "n_prefix_tokens": examples.n_prefix_tokens,
        "n_target_tokens": examples.n_target_tokens,
      },
    )

  def finalize(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return scores_from_sums(
      outputs["nll_sum"], outputs["n_scored"], outputs["n_inputs"]
    )


def schema():
  """Row schema of a perplexity directory (score column: `mean_nll`)."""
  import pyarrow as pa

  from data_efficient.io import results

  return results.token_row_schema(
    ("n_prefix_tokens", pa.int32()),
    ("n_target_tokens", pa.int32()),
    ("mean_nll", pa.float32()),
    ("nll_sum", pa.float32()),
    ("perplexity", pa.float32()),
  )


def perplexity(config: configs.PerplexityConfig) -> dict:
  """The `perplexity` stage: every record's prefix-LM NLL; the manifest."""
  return engine.run_t5_stage(
    config,
    lambda model, tok: PerplexityStage(model, tok, config.max_tokens),
    schema(),
    {
      "stage": "perplexity",
      "max_tokens": config.max_tokens,
      "split": SPLIT_VERSION,
    },
    lambda stage: {"stage": "perplexity", "score_column": "mean_nll"},
  )
