"""Ask-LLM scoring: the probability that Flan-T5 answers "yes" (paper Fig. 3).

Each example is placed inside the paper's prompt. The encoder reads the whole
prompt; the decoder runs its first step only, from the pad id as T5 does; the
example's score is the softmax probability of the "yes" token over the full
vocabulary. Only the example is ever truncated, never the question.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_efficient.models import t5
from data_efficient.models.tokenizer import Tokenizer, check_vocab_fits
from data_efficient.stages import configs, engine

PROMPT_PREFIX = "###\n"
PROMPT_SUFFIX = (
  "\n###\n\nDoes the previous paragraph demarcated within ### and ### "
  "contain informative signal for pre-training a large-language model? An "
  "informative datapoint should be well-formatted, contain some usable "
  "knowledge of the world, and strictly NOT have any harmful, racist, "
  "sexist, etc. content.\n\nOPTIONS:\n- yes\n- no"
)
YES, NO = "yes", "no"

# The paper does not give the scorer's input length; 512 is T5's own.
DEFAULT_MAX_LENGTH = configs.default(configs.ScoreConfig, "max_length")


def build_prompt(example: str) -> str:
  """The paper's prompt around `example`."""
  return PROMPT_PREFIX + example + PROMPT_SUFFIX


def prompt_sha256() -> str:
  """Hash of the prompt template, recorded in every manifest."""
  return hashlib.sha256(build_prompt("{example}").encode()).hexdigest()


def answer_ids(tokenizer: Tokenizer) -> tuple[int, int]:
  """Token ids whose probability at the first decoder step scores an answer.

  The first decoder step predicts the first piece of the answer as the
  vocabulary encodes it. For T5's vocabulary "yes" and "no" are single pieces
  ("▁yes", "▁no"); a vocabulary that splits either word, or maps both to the
  same first piece, cannot score Ask-LLM and is rejected.

  Raises:
    ValueError: if the vocabulary does not encode both answers as one piece.
  """
  ids = []
  for word in (YES, NO):
    pieces = tokenizer.encode(word)
    if len(pieces) != 1:
      raise ValueError(
        f"The vocabulary {tokenizer.path!r} encodes {word!r} as "
        f"{tokenizer.pieces(word)}, not one piece; Ask-LLM needs a "
        "vocabulary where 'yes' and 'no' are single tokens (T5's is)."
      )
    ids.append(pieces[0])
  return ids[0], ids[1]


@dataclasses.dataclass(frozen=True)
class EncodedPrompts:
  """Prompt token ids (EOS included) with per-example truncation flags."""

  ids: list[np.ndarray]  # each int32 [n_tokens], ends with EOS
  truncated: np.ndarray  # bool [n]


def encode_prompts(
  tokenizer: Tokenizer, examples: Sequence[str], max_length: int
) -> EncodedPrompts:
  """Encodes each example inside the prompt, truncating only the example.

  For an example that fits, the ids are exactly the SentencePiece encoding of
  the whole prompt string followed by EOS. A longer example is cut to the
  number of its own tokens that fits, decoded back to text and placed in the
  prompt again, so the ids are still the encoding of one prompt string.

  Raises:
    ValueError: if `max_length` cannot hold the prompt with an empty example.
  """
  eos = tokenizer.eos_id
  prompts = tokenizer.encode_batch([build_prompt(x) for x in examples])
  ids: list[np.ndarray | None] = [None] * len(examples)
  truncated = np.zeros(len(examples), bool)
  long = []
  for i, p in enumerate(prompts):
    if len(p) + 1 <= max_length:
      ids[i] = np.asarray(p + [eos], np.int32)
    else:
      long.append(i)
  if long:
    overhead = len(tokenizer.encode(build_prompt(""))) + 1
    if overhead >= max_length:
      raise ValueError(
        f"max_length={max_length} is too short: the prompt alone takes "
        f"{overhead} tokens."
      )
    # Bound the work on huge documents: no piece spans anywhere near 64
    # characters, so the cut text still holds more tokens than can fit.
    heads = [examples[i][: 64 * max_length] for i in long]
    pieces = tokenizer.encode_batch(heads)
    for i, doc in zip(long, pieces, strict=True):
      ids[i] = _fit(tokenizer, doc, max_length - overhead, max_length)
      truncated[i] = True
  return EncodedPrompts(ids=ids, truncated=truncated)


def _fit(
  tokenizer: Tokenizer, doc: list[int], keep: int, max_length: int
) -> np.ndarray:
  """Prompt ids for the longest prefix of `doc` whose prompt fits."""
  keep = min(keep, len(doc))
  while True:
    prompt = tokenizer.encode(build_prompt(tokenizer.decode(doc[:keep])))
    if len(prompt) + 1 <= max_length or keep == 0:
      return np.asarray(prompt + [tokenizer.eos_id], np.int32)
    # Re-encoding at the seams can add a piece or two: cut that much more.
    keep = max(0, keep - (len(prompt) + 1 - max_length))


def make_score_fn(config: t5.T5Config, yes_id: int, no_id: int):
  """The per-batch scoring function (pure; the runner jits and shards it).

  Rows may pack several prompts: `segment_ids` [b, len] numbers them 1..s in
  each row (0 = padding). Each segment gets one decoder query, the first
  decoder step of its own example, which sees only its own encoder tokens.

  Returns:
    fn(params, tokens, segment_ids, num_segments) -> dict of [b, s] float32:
    `log_p_yes` and `log_p_no` (log-softmax over the full vocabulary).
  """
  model = t5.T5(config)

  def score(params, tokens, segment_ids, num_segments: int):
    batch = tokens.shape[0]
    # [b, s]: decoder query j of a row belongs to segment j + 1.
    decoder_segments = jnp.broadcast_to(
      jnp.arange(1, num_segments + 1, dtype=jnp.int32), (batch, num_segments)
    )
    decoder_tokens = jnp.zeros((batch, num_segments), jnp.int32)
    variables = {"params": params}
    encoded = model.apply(variables, tokens, segment_ids, method=model.encode)
    # [b, s, vocab]: the first decoder step of every segment.
    logits = model.apply(
      variables,
      encoded,
      tokens,
      decoder_tokens,
      segment_ids,
      decoder_segments,
      method=model.decode,
    )
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return {
      "log_p_yes": log_probs[..., yes_id],
      "log_p_no": log_probs[..., no_id],
    }

  return score


class AskLLMStage:
  """The Ask-LLM stage for `engine.Runner`: prompts in, P("yes") out."""

  def __init__(
    self,
    config: t5.T5Config,
    tokenizer: Tokenizer,
    max_length: int = DEFAULT_MAX_LENGTH,
  ):
    check_vocab_fits(tokenizer.vocab_size, config.vocab_size, tokenizer.path)
    self.config = config
    self.tokenizer = tokenizer
    self.max_length = max_length
    self.yes_id, self.no_id = answer_ids(tokenizer)
    self.step = make_score_fn(config, self.yes_id, self.no_id)

  def prepare(self, texts: list[str]):
    encoded = encode_prompts(self.tokenizer, texts, self.max_length)
    return engine.Prepared(
      ids=encoded.ids,
      columns={
        "n_tokens": np.asarray([len(x) for x in encoded.ids], np.int32),
        "truncated": encoded.truncated,
      },
    )

  def finalize(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    log_p_yes = outputs["log_p_yes"].astype(np.float32)
    log_p_no = outputs["log_p_no"].astype(np.float32)
    # P(yes | yes or no) = sigmoid(log P(yes) - log P(no)), computed stably.
    renorm = 0.5 * (1.0 + np.tanh(0.5 * (log_p_yes - log_p_no)))
    return {
      "p_yes": np.exp(log_p_yes),
      "log_p_yes": log_p_yes,
      "p_yes_renorm": renorm.astype(np.float32),
    }


def schema():
  """Row schema of a `score` directory."""
  import pyarrow as pa

  from data_efficient.io import results

  return results.token_row_schema(
    ("p_yes", pa.float32()),
    ("log_p_yes", pa.float32()),
    ("p_yes_renorm", pa.float32()),
  )


def score(config: configs.ScoreConfig) -> dict:
  """The `score` stage: Ask-LLM P('yes') of every record; the manifest."""
  return engine.run_t5_stage(
    config,
    lambda model, tok: AskLLMStage(model, tok, config.max_length),
    schema(),
    {"stage": "score", "prompt_sha256": prompt_sha256()},
    lambda stage: {
      "stage": "score",
      "score_column": "p_yes",
      "answer_ids": {"yes": stage.yes_id, "no": stage.no_id},
    },
  )
