"""Builds the tiny BERT sentence-embedder fixture under tests/testdata/.

Run from the repository root (needs torch, transformers and
sentence-transformers; the tests that read the results do not):

  python3 tests/testdata/make_bert_reference.py

`bert_tiny/` is a random BertModel (with its unused pooler) and a small
WordPiece vocabulary, saved by sentence-transformers as Transformer +
Pooling(mean) + Normalize with max_seq_length 24, shorter than the position
table (64), as all-MiniLM-L6-v2's 256 is shorter than its 512.
`bert_tiny.npz` holds:

  texts       [n] str, including accents, capitals, CJK and one text longer
              than max_seq_length
  tokens      [n, len] int32, the tokenizer's ids right-padded with 0
  embeddings  [n, embed] float32, each text encoded alone (no padding)
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import numpy as np
import torch
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

HERE = pathlib.Path(__file__).resolve().parent
NAME = "bert_tiny"
MAX_SEQ_LENGTH = 24

_WORDS = (
  "the of and to in a is that for it as was with be by on river mountain "
  "city music science history language computer market data model token "
  "sentence cafe naive play run walk"
).split()
_PIECES = "##s ##ed ##ing ##er ##ly ##e ##a ##i ##o ##n ##t ##r".split()
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-") + ["中", "文"]

TEXTS = [
  "The river runs.",
  "Music and science, history and language!",
  "A CAFÉ for the naïve players",  # lower-cased, accents kept (not stripped)
  "中文 text with unknown words like zzyzx",
  "walking " * 40,  # truncated to MAX_SEQ_LENGTH ids
  "data",
  "",
]


def _vocab() -> list[str]:
  special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  words = list(dict.fromkeys(_WORDS + _CHARS + _PIECES))
  return special + words + ["café", "naïve"]


def main() -> None:
  torch.manual_seed(0)
  out = HERE / NAME
  shutil.rmtree(out, ignore_errors=True)
  with tempfile.TemporaryDirectory() as tmp:
    hf = pathlib.Path(tmp) / "hf"
    hf.mkdir()
    vocab = _vocab()
    (hf / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizerFast(
      vocab=str(hf / "vocab.txt"), do_lower_case=True
    )
    config = transformers.BertConfig(
      vocab_size=len(vocab),
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=4,
      intermediate_size=48,
      max_position_embeddings=64,
      type_vocab_size=2,
      hidden_act="gelu",
    )
    model = transformers.BertModel(config).eval()
    # Default init leaves LayerNorm at 1/0 and tiny weights: randomise every
    # tensor so that a swapped or misnamed one changes the output.
    with torch.no_grad():
      for name, p in model.named_parameters():
        if "LayerNorm.weight" in name:
          p.copy_(1 + 0.2 * torch.randn_like(p))
        else:
          p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(hf, safe_serialization=True)
    tokenizer.save_pretrained(hf)

    embedder = SentenceTransformer(
      modules=[
        Transformer(str(hf), max_seq_length=MAX_SEQ_LENGTH),
        Pooling(config.hidden_size, pooling_mode="mean"),
        Normalize(),
      ],
      device="cpu",
    )
    embedder.save(str(out))
  # The model card is prose with versions and dates; the tests do not need it.
  (out / "README.md").unlink(missing_ok=True)

  embedder = SentenceTransformer(str(out), device="cpu").eval()
  ids = embedder.tokenize(TEXTS)["input_ids"].numpy().astype(np.int32)
  embeddings = np.stack(
    [embedder.encode([t], convert_to_numpy=True)[0] for t in TEXTS]
  )
  np.savez(
    HERE / f"{NAME}.npz",
    texts=np.asarray(TEXTS),
    tokens=ids,
    embeddings=embeddings.astype(np.float32),
  )
  print(f"wrote {out} and {NAME}.npz: tokens {ids.shape}")


if __name__ == "__main__":
  main()
