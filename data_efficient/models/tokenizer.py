"""SentencePiece tokenisation through `seqio.SentencePieceVocabulary`.

SeqIO loads the model (local or gs:// paths, T5's normalisation settings), and
batches are encoded by SentencePiece's own multi-threaded C++ batch encoder, so
host tokenisation keeps far ahead of the device.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence

from data_efficient.io import paths

# The vocabulary of T5 1.1, Flan-T5 and T5X's released checkpoints.
DEFAULT_VOCAB = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"


class Tokenizer:
  """Batched SentencePiece encoder with T5's special ids (pad 0, EOS 1)."""

  def __init__(self, path: str = DEFAULT_VOCAB, num_threads: int | None = None):
    """Loads the SentencePiece model at `path`.

    Args:
      path: A SentencePiece `.model` file, local or gs://.
      num_threads: Encoder threads; default all cores of this host.

    Raises:
      FileNotFoundError: if `path` does not exist or cannot be read.
    """
    import seqio  # Deferred: importing seqio (and TensorFlow) takes seconds.

    self.path = path
    try:
      # SentencePiece's loader reads through tf.io.gfile, not `io.paths`:
      # a gs:// model is copied here first, so every URL goes through one
      # filesystem library (and reaches STORAGE_EMULATOR_HOST in tests).
      self._vocab = seqio.SentencePieceVocabulary(paths.local_copy(path))
      self._sp = self._vocab.tokenizer
    except Exception as e:  # seqio raises TF's NotFoundError, among others.
      raise FileNotFoundError(
        f"Cannot load the SentencePiece vocabulary {path!r} ({e}). Pass "
        "a readable .model file as the vocab setting (--vocab)."
      ) from e
    self.num_threads = num_threads or os.cpu_count() or 1

  @functools.cached_property
  def sha256(self) -> str:
    """SHA-256 of the `.model` file (recorded in manifests)."""
    return file_sha256(self.path)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return self._vocab.pad_id

  @property
  def eos_id(self) -> int:
    return self._vocab.eos_id

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (no EOS appended)."""
    return self._sp.encode(list(texts), num_threads=self.num_threads)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode(list(ids))

  def pieces(self, text: str) -> list[str]:
    return self._sp.encode(text, out_type=str)


def file_sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of the file `path` (local or gs://)."""
  return hashlib.sha256(paths.read_bytes(path)).hexdigest()


def train_vocab(
  texts: Sequence[str],
  path: str,
  vocab_size: int = 2000,
  whole_words: Sequence[str] = ("yes", "no"),
) -> str:
  """Trains a small SentencePiece model with T5's special ids on `texts`.

  Only for demos and tests, where T5's own vocabulary cannot be fetched: the
  ids mean nothing to a released checkpoint. Pad is 0, EOS 1, UNK 2 as in T5.
  Each of `whole_words` is forced to be one piece ("▁yes"), as the Ask-LLM
  answers are in T5's vocabulary.

  Returns:
    `path`, the written `.model` file.
  """
  import sentencepiece as spm

  with open(path, "wb") as f:
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts),
      model_writer=f,
      vocab_size=vocab_size,
      hard_vocab_limit=False,
      model_type="unigram",
      pad_id=0,
      eos_id=1,
      unk_id=2,
      bos_id=-1,
      user_defined_symbols=["\u2581" + w for w in whole_words],
      minloglevel=2,
    )
  return path


def check_vocab_fits(tokenizer_size: int, model_size: int, path) -> None:
  """Token ids beyond the embedding table would be clamped silently.

  Raises:
    ValueError: if the vocabulary has more pieces than the model embeds.
  """
  if tokenizer_size > model_size:
    raise ValueError(
      f"The vocabulary {path} has {tokenizer_size} pieces but the model "
      f"embeds only {model_size}: pass the --vocab the model was trained "
      "with."
    )
