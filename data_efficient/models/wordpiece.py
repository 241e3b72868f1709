"""BERT WordPiece tokenisation through the `tokenizers` library.

Reads a Hugging Face / sentence-transformers model folder: `tokenizer.json`
when present (the exact pipeline the model shipped with), else `vocab.txt`
with the lower-casing that `tokenizer_config.json` gives. Each text becomes
`[CLS] pieces... [SEP]`, truncated to `max_length` ids in all (the special
tokens included, as sentence-transformers does), never padded: the runner
packs and pads. Batches are encoded by the library's multi-threaded Rust
encoder (thread count: the TOKENIZERS_PARALLELISM / RAYON_NUM_THREADS
environment variables).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

# BERT's special ids in the standard uncased vocabulary (checked on load).
PAD = "[PAD]"
CLS = "[CLS]"
SEP = "[SEP]"


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    return {}
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e}).") from None


def default_max_length(folder: str | os.PathLike) -> int:
  """The truncation length a model folder asks for.

  sentence-transformers' `max_seq_length` (sentence_bert_config.json) wins
  over the tokenizer's `model_max_length` (tokenizer_config.json); 512, the
  usual BERT position table, if neither is given.
  """
  folder = pathlib.Path(folder)
  st = _read_json(folder / "sentence_bert_config.json")
  if "max_seq_length" in st:
    return int(st["max_seq_length"])
  tok = _read_json(folder / "tokenizer_config.json")
  value = tok.get("model_max_length")
  # transformers writes a huge sentinel (1e30) when the length is unknown.
  if isinstance(value, int) and 0 < value <= 1_000_000:
    return value
  return 512


class WordPieceTokenizer:
  """Batched BERT WordPiece encoder: `[CLS] ... [SEP]`, pad id 0."""

  def __init__(self, folder: str | os.PathLike, max_length: int | None = None):
    """Loads the tokenizer of the model folder `folder`.

    Args:
      folder: Directory holding `tokenizer.json` or `vocab.txt` (plus
        optionally `tokenizer_config.json`, `sentence_bert_config.json`).
      max_length: Most ids per text, [CLS] and [SEP] included; default
        `default_max_length(folder)` (256 for all-MiniLM-L6-v2).

    Raises:
      FileNotFoundError: if the folder has neither tokenizer file.
      ValueError: if the vocabulary lacks [PAD], [CLS] or [SEP], or [PAD]
        is not id 0 (the models here treat id 0 as padding).
    """
    import tokenizers  # Deferred: only the BERT embedder needs it.

    folder = pathlib.Path(folder)
    self.path = folder
    self.max_length = int(max_length or default_max_length(folder))
    if self.max_length < 2:
      raise ValueError(
        f"max_length={self.max_length}: must leave room for [CLS] and [SEP]."
      )
    if (folder / "tokenizer.json").is_file():
      self.file = folder / "tokenizer.json"
      tok = tokenizers.Tokenizer.from_file(str(self.file))
    elif (folder / "vocab.txt").is_file():
      self.file = folder / "vocab.txt"
      config = _read_json(folder / "tokenizer_config.json")
      tok = tokenizers.implementations.BertWordPieceTokenizer(
        str(folder / "vocab.txt"),
        lowercase=bool(config.get("do_lower_case", True)),
        strip_accents=config.get("strip_accents"),
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
      )
    else:
      raise FileNotFoundError(
        f"{folder}: no tokenizer.json or vocab.txt; pass the model folder "
        "that holds the BERT tokenizer."
      )
    # A saved tokenizer.json may carry its own fixed padding and truncation
    # (all-MiniLM-L6-v2's pads every text to 128): replace both.
    tok.no_padding()
    tok.enable_truncation(self.max_length)
    self._tok = tok
    # sentence-transformers lower-cases the text itself when its module
    # config says so (on top of whatever the tokenizer normalises).
    st = _read_json(folder / "sentence_bert_config.json")
    self.lowercase_texts = bool(st.get("do_lower_case", False))
    ids = {t: tok.token_to_id(t) for t in (PAD, CLS, SEP)}
    missing = [t for t, i in ids.items() if i is None]
    if missing or ids[PAD] != 0:
      raise ValueError(
        f"{folder}: the vocabulary must hold {PAD} as id 0 and {CLS}, {SEP} "
        f"(found {ids})."
      )
    self.cls_id = ids[CLS]
    self.sep_id = ids[SEP]
    # The template adds [CLS]/[SEP]; checked because a tokenizer.json might
    # have no post-processor.
    if tok.encode("").ids != [self.cls_id, self.sep_id]:
      raise ValueError(
        f"{folder}: the tokenizer does not wrap texts in {CLS} ... {SEP}."
      )

  @property
  def sha256(self) -> str:
    """SHA-256 of the tokenizer file read (recorded in manifests)."""
    from data_efficient.models import tokenizer

    return tokenizer.file_sha256(self.file)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size()

  @property
  def pad_id(self) -> int:
    return 0

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text: `[CLS] ... [SEP]`, at most `max_length` of them."""
    texts = [t.lower() for t in texts] if self.lowercase_texts else list(texts)
    return [e.ids for e in self._tok.encode_batch(texts)]

  def encode(self, text: str) -> list[int]:
    return self.encode_batch([text])[0]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(list(ids))
