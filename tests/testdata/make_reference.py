"""Builds the tiny reference checkpoints and outputs under tests/testdata/.

Run from the repository root (needs torch, transformers and
sentence-transformers; the tests that read the results do not):

  python3 tests/testdata/make_reference.py

Every model is random, built here with transformers and saved with its own
`save_pretrained` (or sentence-transformers' `save`), so the files are exactly
what those libraries write. Next to each model folder `<name>/` goes
`<name>.npz` with deterministic inputs and the reference outputs:

  encoder-decoder  encoder_input_tokens [b, l], decoder_input_tokens [b, t],
                   logits [b, t, vocab]
  encoder-only     encoder_input_tokens [b, l], encoded [b, l, embed]
  sentence-T5      tokens [b, l], embeddings [b, out]

Inputs are padded with 0, one row is longer than 128 tokens (so the far,
logarithmic relative-position buckets are used) and decoder inputs start with
the pad id 0, as in T5's teacher forcing.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import torch
import transformers
from safetensors import safe_open

HERE = pathlib.Path(__file__).resolve().parent

# name -> T5Config kwargs. The first three are T5 1.1 / Flan-T5 style
# (gated GELU, untied head); the last is T5 1.0 style (ReLU, tied embeddings,
# logits scaled by 1/sqrt(d_model)).
_T5_1_1 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
ENCODER_DECODER = {
  "t5_a": dict(
    vocab_size=256,
    d_model=32,
    num_heads=4,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=2,
    **_T5_1_1,
  ),
  # heads * d_kv != d_model, and fewer decoder than encoder layers.
  "t5_b": dict(
    vocab_size=200,
    d_model=24,
    num_heads=2,
    d_kv=16,
    d_ff=40,
    num_layers=3,
    num_decoder_layers=1,
    **_T5_1_1,
  ),
  # Non-default relative-position buckets and distance.
  "t5_c": dict(
    vocab_size=160,
    d_model=40,
    num_heads=5,
    d_kv=4,
    d_ff=72,
    num_layers=1,
    num_decoder_layers=2,
    relative_attention_num_buckets=16,
    relative_attention_max_distance=64,
    **_T5_1_1,
  ),
  "t5_tied_relu": dict(
    vocab_size=128,
    d_model=16,
    num_heads=2,
    d_kv=8,
    d_ff=32,
    num_layers=2,
    num_decoder_layers=2,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
  ),
}
# Saved in several files through model.safetensors.index.json.
SHARDED = {"t5_a": "64KB"}
# T5 1.0 style: ReLU, tied embeddings (no decoder here).
ENCODER_ONLY = {
  "t5_encoder_relu": dict(
    vocab_size=192,
    d_model=32,
    num_heads=4,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
  ),
}
SENTENCE_T5 = {
  "sentence_t5": dict(
    vocab_size=160,
    d_model=32,
    num_heads=4,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    feed_forward_proj="relu",
    tie_word_embeddings=True,
  ),
}
SENTENCE_T5_PROJECTION = 24

ENCODER_LENGTHS = (300, 170, 23)
DECODER_LENGTH = 6
SENTENCE_LENGTHS = (150, 40, 7)


def _tokens(rng, lengths, vocab_size) -> np.ndarray:
  """[len(lengths), max(lengths)] int32 ids in [2, vocab), 0-padded."""
  out = np.zeros((len(lengths), max(lengths)), np.int32)
  for row, length in enumerate(lengths):
    out[row, :length] = rng.randint(2, vocab_size, size=length)
  return out


def _perturb(model: torch.nn.Module, seed: int) -> None:
  """Makes layer norms and position biases matter to the outputs.

  transformers initialises layer-norm scales to exactly 1 and position biases
  with a tiny spread, so a loader that swapped two norms or misread the bias
  table would still pass; random values make such mistakes show.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
      elif name.endswith("relative_attention_bias.weight"):
        param.copy_(torch.randn(param.shape, generator=gen))


def _clean(folder: pathlib.Path) -> None:
  if folder.exists():
    shutil.rmtree(folder)
  folder.mkdir(parents=True)


def _untie_head(model, seed: int) -> None:
  """Gives lm_head its own weights (transformers 5 always ties T5's head)."""
  gen = torch.Generator().manual_seed(seed)
  weight = torch.randn(model.lm_head.weight.shape, generator=gen)
  model.lm_head.weight = torch.nn.Parameter(weight)


def _check_untied(folder: pathlib.Path) -> None:
  """Asserts the saved files hold an lm_head distinct from the embedding."""
  tensors = {}
  for file in folder.glob("*.safetensors"):
    with safe_open(str(file), "np") as f:
      for key in f.keys():
        if key in ("shared.weight", "lm_head.weight"):
          tensors[key] = f.get_tensor(key)
  assert set(tensors) == {"shared.weight", "lm_head.weight"}, folder
  assert not np.array_equal(tensors["shared.weight"], tensors["lm_head.weight"])


def make_encoder_decoder(name: str, kwargs: dict, seed: int) -> None:
  folder = HERE / name
  _clean(folder)
  config = transformers.T5Config(**kwargs)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(config).eval()
  if not kwargs["tie_word_embeddings"]:
    _untie_head(model, seed + 1)
  _perturb(model, seed + 2)
  model.save_pretrained(folder, max_shard_size=SHARDED.get(name, "100MB"))
  if not kwargs["tie_word_embeddings"]:
    _check_untied(folder)
  if name in SHARDED:
    assert (folder / "model.safetensors.index.json").exists(), folder

  rng = np.random.RandomState(seed)
  encoder_tokens = _tokens(rng, ENCODER_LENGTHS, config.vocab_size)
  decoder_tokens = _tokens(
    rng, (DECODER_LENGTH,) * len(ENCODER_LENGTHS), config.vocab_size
  )
  decoder_tokens[:, 0] = 0
  with torch.no_grad():
    enc = torch.from_numpy(encoder_tokens).long()
    logits = model(
      input_ids=enc,
      attention_mask=(enc > 0).long(),
      decoder_input_ids=torch.from_numpy(decoder_tokens).long(),
    ).logits
  np.savez_compressed(
    HERE / f"{name}.npz",
    encoder_input_tokens=encoder_tokens,
    decoder_input_tokens=decoder_tokens,
    logits=logits.numpy().astype(np.float32),
  )


def make_encoder_only(name: str, kwargs: dict, seed: int) -> None:
  folder = HERE / name
  _clean(folder)
  config = transformers.T5Config(**kwargs)
  torch.manual_seed(seed)
  model = transformers.T5EncoderModel(config).eval()
  _perturb(model, seed + 2)
  model.save_pretrained(folder)

  rng = np.random.RandomState(seed)
  tokens = _tokens(rng, ENCODER_LENGTHS, config.vocab_size)
  with torch.no_grad():
    ids = torch.from_numpy(tokens).long()
    encoded = model(input_ids=ids, attention_mask=(ids > 0).long())
  np.savez_compressed(
    HERE / f"{name}.npz",
    encoder_input_tokens=tokens,
    encoded=encoded.last_hidden_state.numpy().astype(np.float32),
  )


def _word_level_tokenizer(vocab_size: int):
  """A throwaway tokenizer so the folder is a complete ST model.

  The references are computed from token ids, so its vocabulary is arbitrary.
  """
  from tokenizers import Tokenizer, models, pre_tokenizers

  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
  vocab.update({f"w{i}": i for i in range(3, vocab_size)})
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(
    tokenizer_object=tokenizer,
    pad_token="<pad>",
    eos_token="</s>",
    unk_token="<unk>",
  )


def make_sentence_t5(name: str, kwargs: dict, seed: int) -> None:
  from sentence_transformers import SentenceTransformer
  from sentence_transformers.base.modules import Dense, Normalize, Transformer
  from sentence_transformers.sentence_transformer.modules import Pooling

  folder = HERE / name
  _clean(folder)
  staging = HERE / f"{name}_encoder_tmp"
  _clean(staging)
  config = transformers.T5Config(**kwargs)
  torch.manual_seed(seed)
  encoder = transformers.T5EncoderModel(config).eval()
  _perturb(encoder, seed + 2)
  encoder.save_pretrained(staging)
  _word_level_tokenizer(config.vocab_size).save_pretrained(staging)

  gen = torch.Generator().manual_seed(seed + 3)
  weight = (
    torch.randn((SENTENCE_T5_PROJECTION, config.d_model), generator=gen)
    * config.d_model**-0.5
  )
  model = SentenceTransformer(
    modules=[
      Transformer(str(staging)),
      Pooling(config.d_model, pooling_mode="mean"),
      Dense(
        config.d_model,
        SENTENCE_T5_PROJECTION,
        bias=False,
        activation_function=torch.nn.Identity(),
        init_weight=weight,
      ),
      Normalize(),
    ],
    device="cpu",
  ).eval()
  model.save(str(folder))
  shutil.rmtree(staging)
  # The model card is prose with versions and dates; the tests do not need it.
  (folder / "README.md").unlink(missing_ok=True)

  rng = np.random.RandomState(seed)
  tokens = _tokens(rng, SENTENCE_LENGTHS, config.vocab_size)
  with torch.no_grad():
    ids = torch.from_numpy(tokens).long()
    out = model({"input_ids": ids, "attention_mask": (ids > 0).long()})
  np.savez_compressed(
    HERE / f"{name}.npz",
    tokens=tokens,
    embeddings=out["sentence_embedding"].numpy().astype(np.float32),
  )


def main() -> None:
  torch.use_deterministic_algorithms(True)
  seed = 100
  for name, kwargs in ENCODER_DECODER.items():
    make_encoder_decoder(name, kwargs, seed)
    seed += 100
  for name, kwargs in ENCODER_ONLY.items():
    make_encoder_only(name, kwargs, seed)
    seed += 100
  for name, kwargs in SENTENCE_T5.items():
    make_sentence_t5(name, kwargs, seed)
    seed += 100
  sizes = {
    str(p.relative_to(HERE)): p.stat().st_size
    for p in sorted(HERE.rglob("*"))
    if p.is_file()
  }
  print(json.dumps(sizes, indent=1))
  print("total bytes:", sum(sizes.values()))


if __name__ == "__main__":
  main()
