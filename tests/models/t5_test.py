"""Parity of models/t5.py (+ the checkpoint loader) with transformers.

The committed references in tests/testdata/ were computed by
tests/testdata/make_reference.py with transformers / sentence-transformers;
these tests need neither. The `*_live` tests recompute the references from
the saved folders when torch is installed (CI), so a stale fixture shows.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_efficient.models import checkpoints, t5

TESTDATA = pathlib.Path(__file__).resolve().parents[1] / "testdata"
ENCODER_DECODER = ("t5_a", "t5_b", "t5_c", "t5_tied_relu")
ENCODER_ONLY = ("t5_encoder_relu",)
SENTENCE_T5 = ("sentence_t5",)

LOGITS_ATOL = 1e-4  # float32, logits of magnitude up to ~25
MIN_COSINE = 0.99999


def _reference(name: str) -> dict[str, np.ndarray]:
  with np.load(TESTDATA / f"{name}.npz") as data:
    return dict(data)


@functools.cache
def _ours(name: str, dtype: str = "float32") -> np.ndarray:
  """Our model's output on the fixture's inputs (one compile per call)."""
  folder = TESTDATA / name
  config = checkpoints.config_from_checkpoint(folder).replace(dtype=dtype)
  params = checkpoints.load_params(folder, config, dtype=jnp.dtype(dtype))
  model = t5.make_model(config)
  ref = _reference(name)
  if name in SENTENCE_T5:
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
    out = fn(params, ref["tokens"])
  elif name in ENCODER_ONLY:
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))
    out = fn(params, ref["encoder_input_tokens"])
  else:
    fn = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y))
    out = fn(params, ref["encoder_input_tokens"], ref["decoder_input_tokens"])
  return np.asarray(out, np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = a / np.linalg.norm(a, axis=-1, keepdims=True)
  b = b / np.linalg.norm(b, axis=-1, keepdims=True)
  return np.sum(a * b, axis=-1)


@pytest.mark.parametrize("name", ENCODER_DECODER)
def test_logits_match_committed_reference(name):
  want = _reference(name)["logits"]
  got = _ours(name)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("name", ENCODER_ONLY)
def test_encoder_matches_committed_reference(name):
  want = _reference(name)["encoded"]
  np.testing.assert_allclose(_ours(name), want, rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("name", SENTENCE_T5)
def test_sentence_t5_matches_committed_reference(name):
  got = _ours(name)
  want = _reference(name)["embeddings"]
  assert got.shape == want.shape
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
  assert _cosines(got, want).min() >= MIN_COSINE


@pytest.mark.parametrize("name", ENCODER_DECODER)
def test_logits_match_transformers_live(name):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  ref = _reference(name)
  model = transformers.T5ForConditionalGeneration.from_pretrained(
    TESTDATA / name
  ).eval()
  with torch.no_grad():
    tokens = torch.from_numpy(ref["encoder_input_tokens"]).long()
    logits = model(
      input_ids=tokens,
      attention_mask=(tokens > 0).long(),
      decoder_input_ids=torch.from_numpy(ref["decoder_input_tokens"]).long(),
    ).logits.numpy()
  # The committed fixture is what transformers computes from the saved files.
  np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(_ours(name), logits, rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("name", ENCODER_ONLY)
def test_encoder_matches_transformers_live(name):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  ref = _reference(name)
  model = transformers.T5EncoderModel.from_pretrained(TESTDATA / name).eval()
  with torch.no_grad():
    tokens = torch.from_numpy(ref["encoder_input_tokens"]).long()
    encoded = model(input_ids=tokens, attention_mask=(tokens > 0).long())
  encoded = encoded.last_hidden_state.numpy()
  np.testing.assert_allclose(encoded, ref["encoded"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(_ours(name), encoded, rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("name", SENTENCE_T5)
def test_sentence_t5_matches_sentence_transformers_live(name):
  torch = pytest.importorskip("torch")
  st = pytest.importorskip("sentence_transformers")
  ref = _reference(name)
  model = st.SentenceTransformer(str(TESTDATA / name), device="cpu").eval()
  with torch.no_grad():
    tokens = torch.from_numpy(ref["tokens"]).long()
    out = model({"input_ids": tokens, "attention_mask": (tokens > 0).long()})
  embeddings = out["sentence_embedding"].numpy()
  np.testing.assert_allclose(embeddings, ref["embeddings"], rtol=0, atol=1e-6)
  assert _cosines(_ours(name), embeddings).min() >= MIN_COSINE


@pytest.mark.parametrize("name", ["t5_a", "sentence_t5"])
def test_bfloat16_runs_close_to_float32(name):
  got = _ours(name, "bfloat16")
  assert np.isfinite(got).all()
  if name in SENTENCE_T5:
    assert _cosines(got, _reference(name)["embeddings"]).min() >= 0.99
  else:
    want = _reference(name)["logits"]
    # bf16 keeps ~3 significant digits; errors compound over the layers.
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 0.05 * scale
    # The prediction the scorers read survives the lower precision.
    agree = np.mean(got.argmax(-1) == want.argmax(-1))
    assert agree >= 0.9


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64)])
def test_relative_position_buckets_match_transformers_live(
  bidirectional, num_buckets, max_distance
):
  torch = pytest.importorskip("torch")
  modeling_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
  qlen, klen = 600, 610
  relative = torch.arange(klen)[None, :] - torch.arange(qlen)[:, None]
  want = modeling_t5.T5Attention._relative_position_bucket(
    relative,
    bidirectional=bidirectional,
    num_buckets=num_buckets,
    max_distance=max_distance,
  ).numpy()
  got = t5.relative_position_buckets(
    qlen,
    klen,
    bidirectional=bidirectional,
    num_buckets=num_buckets,
    max_distance=max_distance,
  )
  np.testing.assert_array_equal(got, want)
  # The far, logarithmic buckets are exercised, up to saturation.
  assert got.max() == num_buckets - 1


@pytest.mark.parametrize("mask_batch", [1, 2])
def test_attention_one_head_at_a_time_equals_all_heads(mask_batch):
  # The per-head loop (XLA:CPU, long rows) and the batched form are one
  # function; the parity tests above cover each on the rows they pick.
  rng = np.random.default_rng(0)
  b, q, k, heads, kv = 2, 7, 9, 3, 4
  query, key, value = (
    jnp.asarray(rng.normal(size=(b, n, heads, kv)), jnp.float32)
    for n in (q, k, k)
  )
  mask = jnp.asarray(rng.random((mask_batch, 1, q, k)) < 0.7)
  bias = jnp.asarray(rng.normal(size=(1, heads, q, k)), jnp.float32)
  for bias_or_none in (bias, None):
    want = t5._attend(query, key, value, mask, bias_or_none, jnp.float32)
    got = t5._attend_per_head(
      query, key, value, mask, bias_or_none, jnp.float32
    )
    assert got.shape == (b, q, heads, kv)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
