"""Sentence-T5 embeddings of every example (the DENSITY method's input).

encoder -> masked mean pooling -> Dense (no bias) -> L2 normalise, through the
shared streaming runner, so embedding is sharded, packed and resumable like
scoring. Embeddings are stored as a fixed-size-list column next to the ids
(float32, or float16 to halve the disk), and later stages stream them back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from data_efficient.io import embeddings
from data_efficient.io.embeddings import EMBEDDING_COLUMN
from data_efficient.models import t5, wordpiece
from data_efficient.models.tokenizer import Tokenizer, check_vocab_fits
from data_efficient.stages import configs, engine

# sentence-transformers' max_seq_length for the sentence-t5 models.
DEFAULT_MAX_LENGTH = configs.default(configs.EmbedConfig, "max_length")


class EmbedStage:
  """The embedding stage for `engine.Runner`: texts in, unit vectors out.

  Works with any sentence encoder whose module has
  `embed_segments(tokens, segment_ids, num_segments)`: Sentence-T5
  (`t5.SentenceT5`, the paper's) or a BERT sentence encoder
  (`bert.SentenceBert`, e.g. all-MiniLM-L6-v2 for offline demos).
  """

  def __init__(
    self,
    model,
    encode: Callable[[list[str]], tuple[list[np.ndarray], np.ndarray]],
    *,
    max_length: int,
    dim: int,
    tokenizer: Tokenizer | wordpiece.WordPieceTokenizer,
    storage_dtype: str = "float32",
  ):
    """Builds the stage.

    Args:
      model: The sentence encoder module.
      encode: texts -> (final token ids per text, truncated flags).
      max_length: Most token ids of one text (the packing row cap).
      dim: Embedding width.
      tokenizer: The tokenizer `encode` uses (its file is recorded in
        manifests).
      storage_dtype: 'float32' or 'float16' on disk.
    """
    self.encode = encode
    self.max_length = max_length
    self.dim = dim
    self.tokenizer = tokenizer
    self.storage_dtype = np.dtype(storage_dtype)

    def step(params, tokens, segment_ids, num_segments: int):
      embeddings = model.apply(
        {"params": params},
        tokens,
        segment_ids,
        num_segments,
        method=model.embed_segments,
      )
      return {EMBEDDING_COLUMN: embeddings}

    self.step = step

  def prepare(self, texts: list[str]) -> engine.Prepared:
    # No piece spans 64 characters: cutting the text first bounds the work
    # on huge documents without changing what fits.
    heads = [t[: 64 * self.max_length] for t in texts]
    ids, truncated = self.encode(heads)
    cut = np.asarray(
      [len(t) > len(h) for t, h in zip(texts, heads, strict=True)]
    )
    return engine.Prepared(
      ids=ids,
      columns={
        "n_tokens": np.asarray([len(x) for x in ids], np.int32),
        "truncated": truncated | cut,
      },
    )

  def finalize(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
      EMBEDDING_COLUMN: outputs[EMBEDDING_COLUMN].astype(self.storage_dtype)
    }


def sentence_t5_stage(
  config: t5.T5Config,
  tokenizer: Tokenizer,
  max_length: int = DEFAULT_MAX_LENGTH,
  storage_dtype: str = "float32",
) -> EmbedStage:
  """Sentence-T5: ids cut to max_length - 1, then EOS, as
  sentence-transformers' T5 tokenizer does."""
  if config.projection_dim is None:
    raise ValueError(
      "Embedding needs a sentence encoder: --model sentence_t5_base (or "
      "another sentence_t5_* / all_minilm_l6_v2) or a sentence-transformers "
      "checkpoint."
    )
  check_vocab_fits(tokenizer.vocab_size, config.vocab_size, tokenizer.path)
  keep, eos = max_length - 1, tokenizer.eos_id

  def encode(texts):
    pieces = tokenizer.encode_batch(texts)
    ids = [np.asarray(p[:keep] + [eos], np.int32) for p in pieces]
    return ids, np.asarray([len(p) > keep for p in pieces], bool)

  return EmbedStage(
    t5.SentenceT5(config),
    encode,
    max_length=max_length,
    dim=config.projection_dim,
    tokenizer=tokenizer,
    storage_dtype=storage_dtype,
  )


def bert_stage(config, tokenizer, storage_dtype: str = "float32") -> EmbedStage:
  """A BERT sentence encoder; its WordPiece tokenizer adds [CLS]/[SEP] and
  cuts at its own max length (256 for all-MiniLM-L6-v2)."""
  from data_efficient.models import bert

  def encode(texts):
    pieces = tokenizer.encode_batch(texts)
    ids = [np.asarray(p, np.int32) for p in pieces]
    # A text that fills max_length exactly may not have been cut; the flag
    # errs on the side of saying so.
    return ids, np.asarray([len(p) >= tokenizer.max_length for p in pieces])

  return EmbedStage(
    bert.SentenceBert(config),
    encode,
    max_length=tokenizer.max_length,
    dim=config.emb_dim,
    tokenizer=tokenizer,
    storage_dtype=storage_dtype,
  )


def embed(config: configs.EmbedConfig) -> dict:
  """The `embed` stage: every record's sentence embedding; the manifest.

  Raises:
    ValueError: a vocabulary given for MiniLM, which brings its own.
  """
  config.processes.initialize()
  model, storage_dtype = config.model, config.storage_dtype
  if model.model == configs.MINILM:
    from data_efficient.models import bert
    from data_efficient.models.checkpoints import hf

    if model.vocab:
      raise ValueError(f"model={configs.MINILM!r} brings its own vocabulary.")
    model_config, params, tok = hf.load_minilm(
      model.checkpoint, dtype=model.dtype
    )

    def load_params(mesh):
      del mesh  # MiniLM is small: read with its config and vocabulary.
      return params

    stage = bert_stage(model_config, tok, storage_dtype)
    abstract = bert.abstract_params(model_config)
  else:
    model_config, load_params = engine.load_model(model)
    stage = sentence_t5_stage(
      model_config,
      engine.tokenizer_for(model),
      config.max_length,
      storage_dtype,
    )
    abstract = t5.abstract_params(model_config)
  return engine.run_model_stage(
    config,
    stage,
    model_config,
    load_params,
    abstract,
    embeddings.schema(stage.dim, storage_dtype),
    {"stage": "embed", "storage_dtype": storage_dtype},
    {"stage": "embed", "embedding_column": EMBEDDING_COLUMN},
  )
