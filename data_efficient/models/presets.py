"""Named model shapes: the paper's scorers and embedders, plus tiny test shapes.

Flan-T5 is T5 1.1 (gated GELU, untied logits, vocab 32128, head_dim 64).
Sentence-T5 is the encoder of T5 1.0 (ReLU) with a 768-d projection; its sizes
follow the `config.json` of sentence-transformers/sentence-t5-{base, large, xl,
xxl}, which are the encoders of t5-base, t5-large, t5-3b and t5-11b.
"""

from __future__ import annotations

from data_efficient.models.t5 import T5Config

_T5_VOCAB = 32128
_T5_1_1 = dict(mlp_activations=("gelu", "linear"), logits_via_embedding=False)
_T5_1_0_ENCODER = dict(
  mlp_activations=("relu",), logits_via_embedding=True, num_decoder_layers=0
)


def _flan(emb, heads, layers, mlp) -> T5Config:
  return T5Config(
    vocab_size=_T5_VOCAB,
    emb_dim=emb,
    num_heads=heads,
    num_encoder_layers=layers,
    num_decoder_layers=layers,
    head_dim=64,
    mlp_dim=mlp,
    **_T5_1_1,
  )


def _sentence_t5(emb, heads, layers, mlp, head_dim) -> T5Config:
  return T5Config(
    vocab_size=_T5_VOCAB,
    emb_dim=emb,
    num_heads=heads,
    num_encoder_layers=layers,
    head_dim=head_dim,
    mlp_dim=mlp,
    projection_dim=768,
    **_T5_1_0_ENCODER,
  )


FLAN_T5_SMALL = _flan(512, 6, 8, 1024)
FLAN_T5_BASE = _flan(768, 12, 12, 2048)
FLAN_T5_LARGE = _flan(1024, 16, 24, 2816)
FLAN_T5_XL = _flan(2048, 32, 24, 5120)
FLAN_T5_XXL = _flan(4096, 64, 24, 10240)

SENTENCE_T5_BASE = _sentence_t5(768, 12, 12, 3072, 64)
SENTENCE_T5_LARGE = _sentence_t5(1024, 16, 24, 4096, 64)
SENTENCE_T5_XL = _sentence_t5(1024, 32, 24, 16384, 128)
SENTENCE_T5_XXL = _sentence_t5(1024, 128, 24, 65536, 128)

# Random-weight shapes for tests and demos; their scores mean nothing.
TINY = T5Config(
  vocab_size=_T5_VOCAB,
  emb_dim=32,
  num_heads=4,
  num_encoder_layers=2,
  num_decoder_layers=2,
  head_dim=8,
  mlp_dim=64,
  **_T5_1_1,
)
TINY_SENTENCE_T5 = T5Config(
  vocab_size=_T5_VOCAB,
  emb_dim=32,
  num_heads=4,
  num_encoder_layers=2,
  head_dim=8,
  mlp_dim=64,
  projection_dim=768,
  **_T5_1_0_ENCODER,
)

PRESETS: dict[str, T5Config] = {
  "flan_t5_small": FLAN_T5_SMALL,
  "flan_t5_base": FLAN_T5_BASE,
  "flan_t5_large": FLAN_T5_LARGE,
  "flan_t5_xl": FLAN_T5_XL,
  "flan_t5_xxl": FLAN_T5_XXL,
  "sentence_t5_base": SENTENCE_T5_BASE,
  "sentence_t5_large": SENTENCE_T5_LARGE,
  "sentence_t5_xl": SENTENCE_T5_XL,
  "sentence_t5_xxl": SENTENCE_T5_XXL,
  "tiny": TINY,
  "tiny_sentence_t5": TINY_SENTENCE_T5,
}


def get_preset(name: str) -> T5Config:
  """The config named `name`; raises ValueError listing the known names."""
  try:
    return PRESETS[name]
  except KeyError:
    raise ValueError(
      f"Unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}."
    ) from None
