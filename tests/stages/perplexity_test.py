"""Tests of the perplexity filter: the prefix/target split, seq2seq packing,
the teacher-forced NLL step, and parity with transformers' T5 loss."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from text_fixtures import synthetic_texts

from data_efficient.io import results
from data_efficient.models import checkpoints, presets, t5, tokenizer
from data_efficient.stages import configs, engine, perplexity, select

CONFIG = presets.TINY.replace(vocab_size=320)
MAX_TOKENS = 64
PACKING = engine.PackingConfig(
  max_length=64, max_segments=4, bucket_step=32, tokens_per_batch=512
)
TESTDATA = pathlib.Path(__file__).resolve().parents[1] / "testdata"


@pytest.fixture(scope="module")
def tok(vocab_path):
  return tokenizer.Tokenizer(vocab_path, num_threads=2)


@pytest.fixture(scope="module")
def params():
  return t5.init_params(CONFIG, seed=5)


@pytest.fixture(scope="module")
def step():
  return jax.jit(perplexity.make_step_fn(CONFIG), static_argnums=3)


def _packed_sums(step, params, inputs, targets, packing=PACKING):
  """Per-record step outputs through packed batches, in record order."""
  n = len(inputs)
  out = {k: np.zeros(n) for k in ("nll_sum", "n_scored", "n_inputs")}
  batches = list(
    engine.make_batches(inputs, packing, 1, decoder_target_ids=targets)
  )
  for b in batches:
    got = step(
      params,
      b.tokens,
      b.segment_ids,
      packing.max_segments,
      b.decoder_target_tokens,
      b.decoder_segment_ids,
    )
    for r, members in enumerate(b.members):
      for s, i in enumerate(members):
        for k in out:
          out[k][i] = got[k][r, s]
  return out, batches


def _reference_token_nll(model_params, config, inputs, targets):
  """-log P(target) of one example, alone and unpacked: plain T5 call."""
  decoder_in = np.concatenate([[0], targets[:-1]]).astype(np.int32)
  logits = t5.T5(config).apply(
    {"params": model_params}, inputs[None], decoder_in[None]
  )
  log_probs = np.asarray(jax.nn.log_softmax(logits[0]), np.float64)
  return -np.take_along_axis(log_probs, targets[:, None], -1)[:, 0]


# --- the split ---------------------------------------------------------------


@pytest.mark.parametrize(
  "n,max_tokens,prefix,target",
  [
    (0, 8, 0, 0),  # empty: inputs [EOS], targets [EOS]
    (1, 8, 0, 1),  # one token: nothing to condition on
    (2, 8, 1, 1),
    (7, 8, 3, 4),  # odd: the continuation takes the extra token
    (8, 8, 4, 4),
    (20, 8, 4, 4),  # long: only the first max_tokens are read
  ],
)
def test_split_is_first_half_then_rest_each_with_eos(
  n, max_tokens, prefix, target
):
  tokens = list(range(10, 10 + n))
  inputs, targets = perplexity.split_prefix_target(tokens, max_tokens, eos_id=1)
  assert inputs.dtype == targets.dtype == np.int32
  np.testing.assert_array_equal(inputs, tokens[:prefix] + [1])
  np.testing.assert_array_equal(targets, tokens[prefix : prefix + target] + [1])


def test_encode_examples_marks_truncation_and_counts(tok):
  long = " ".join(synthetic_texts(30, seed=4))
  huge = "river " * 200_000  # cut before tokenizing
  texts = ["", "the", "the river", "the river city music", long, huge]
  ex = perplexity.encode_examples(tok, texts, MAX_TOKENS)
  pieces = [tok.encode(t) for t in texts[:5]]
  assert [len(p) for p in pieces[:3]] == [0, 1, 2]
  np.testing.assert_array_equal(
    ex.truncated, [False, False, False, False, True, True]
  )
  for i, p in enumerate(pieces):
    x, y = perplexity.split_prefix_target(p, MAX_TOKENS, tok.eos_id)
    np.testing.assert_array_equal(ex.inputs[i], x)
    np.testing.assert_array_equal(ex.targets[i], y)
  np.testing.assert_array_equal(ex.n_prefix_tokens, [0, 0, 1, 2, 32, 32])
  np.testing.assert_array_equal(ex.n_target_tokens, [1, 2, 2, 3, 33, 33])
  np.testing.assert_array_equal(ex.n_tokens, [0, 1, 2, 4, 64, 64])
  # Both sides of the longest split fit the stage's packing rows.
  stage = perplexity.PerplexityStage(CONFIG, tok, MAX_TOKENS)
  assert stage.max_length == 64 and stage.max_length % 64 == 0
  assert max(max(map(len, ex.inputs)), max(map(len, ex.targets))) <= 64


def test_max_tokens_below_two_is_an_error(tok):
  with pytest.raises(ValueError, match="max_tokens=1"):
    perplexity.PerplexityStage(CONFIG, tok, max_tokens=1)


# --- packing -----------------------------------------------------------------


def test_seq2seq_rows_hold_each_record_once_in_the_same_segment():
  rng = np.random.default_rng(0)
  inputs = [rng.integers(2, 99, rng.integers(1, 33)) for _ in range(50)]
  targets = [rng.integers(2, 99, rng.integers(1, 34)) for _ in range(50)]
  batches = list(
    engine.make_batches(inputs, PACKING, 2, decoder_target_ids=targets)
  )
  seen = []
  for b in batches:
    assert b.tokens.shape == b.decoder_target_tokens.shape
    assert b.tokens.shape[0] % 2 == 0
    for r, members in enumerate(b.members):
      assert len(members) <= PACKING.max_segments
      for s, i in enumerate(members):
        np.testing.assert_array_equal(
          b.tokens[r][b.segment_ids[r] == s + 1], inputs[i]
        )
        np.testing.assert_array_equal(
          b.decoder_target_tokens[r][b.decoder_segment_ids[r] == s + 1],
          targets[i],
        )
      seen += members
  assert sorted(seen) == list(range(50))


def test_decoder_inputs_shift_right_within_each_segment():
  targets = jnp.asarray([[5, 6, 1, 7, 8, 9, 1, 0]])
  segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]])
  got = perplexity.decoder_inputs(targets, segments)
  np.testing.assert_array_equal(got, [[0, 5, 6, 0, 7, 8, 9, 0]])


# --- the NLL -----------------------------------------------------------------


def test_packed_scores_equal_one_example_per_row(tok, params, step):
  ex = perplexity.encode_examples(tok, synthetic_texts(14, seed=2), MAX_TOKENS)
  got, batches = _packed_sums(step, params, ex.inputs, ex.targets)
  # Packing happened: segments 2.. start past the row's start, so their
  # absolute positions differ from an unpacked row's.
  assert any(len(m) > 1 for b in batches for m in b.members)
  # Reference: one example per row, no segment ids, padded to 64 both sides.
  n = len(ex.inputs)
  enc = np.zeros((n, 64), np.int32)
  dec_in = np.zeros((n, 64), np.int32)
  labels = np.zeros((n, 64), np.int32)
  for i, (x, y) in enumerate(zip(ex.inputs, ex.targets, strict=True)):
    enc[i, : len(x)] = x
    labels[i, : len(y)] = y
    dec_in[i, 1 : len(y)] = y[:-1]

  @jax.jit
  def reference(p, enc, dec_in, labels):
    logits = t5.T5(CONFIG).apply({"params": p}, enc, dec_in)
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, labels[..., None], -1)[..., 0]

  token_nll = np.asarray(reference(params, enc, dec_in, labels), np.float64)
  mask = np.arange(64)[None] < ex.n_target_tokens[:, None]
  want = np.where(mask, token_nll, 0).sum(-1)
  np.testing.assert_array_equal(got["n_scored"], ex.n_target_tokens)
  np.testing.assert_array_equal(got["n_inputs"], ex.n_prefix_tokens + 1)
  np.testing.assert_allclose(
    got["nll_sum"] / got["n_scored"], want / ex.n_target_tokens, atol=2e-5
  )
  np.testing.assert_allclose(got["nll_sum"], want, rtol=2e-5)


def test_token_nll_equals_a_direct_t5_call(tok, params):
  """Per-token NLL of examples packed at offsets > 0 equals log_softmax of
  `t5.T5(...)(encoder_tokens, decoder_inputs)` on each example alone."""
  texts = ["the river city music science history", "a market of the mountain"]
  ex = perplexity.encode_examples(tok, texts, MAX_TOKENS)
  (batch,) = engine.make_batches(
    ex.inputs, PACKING, 1, decoder_target_ids=ex.targets
  )
  assert batch.members == [[0, 1]]
  token_nll = perplexity.make_token_nll_fn(CONFIG)(
    params,
    batch.tokens,
    batch.segment_ids,
    batch.decoder_target_tokens,
    batch.decoder_segment_ids,
  )
  token_nll = np.asarray(token_nll)[0]
  for s, i in enumerate(batch.members[0]):
    want = _reference_token_nll(params, CONFIG, ex.inputs[i], ex.targets[i])
    got = token_nll[batch.decoder_segment_ids[0] == s + 1]
    np.testing.assert_allclose(got, want, atol=2e-5)
  assert (token_nll[batch.decoder_segment_ids[0] == 0] == 0).all()


def test_stage_rows_for_short_empty_and_long_examples(tok, params, step):
  long = " ".join(synthetic_texts(30, seed=4))
  texts = ["", "the", "the river", "the river city music", long]
  stage = perplexity.PerplexityStage(CONFIG, tok, MAX_TOKENS)
  prepared = stage.prepare(texts)
  assert isinstance(prepared, engine.Prepared)
  sums, _ = _packed_sums(
    step, params, prepared.ids, prepared.decoder_target_ids
  )
  out = stage.finalize(sums)
  assert set(out) == {"nll_sum", "mean_nll", "perplexity"}
  for name in out:
    assert out[name].dtype == np.float32
    # Fewer than 2 tokens: an empty prefix, no score.
    assert np.isnan(out[name][:2]).all()
    assert np.isfinite(out[name][2:]).all()
  np.testing.assert_array_equal(
    prepared.columns["truncated"], [False, False, False, False, True]
  )
  np.testing.assert_array_equal(prepared.columns["n_tokens"][4], MAX_TOKENS)
  np.testing.assert_allclose(
    out["mean_nll"][2:],
    sums["nll_sum"][2:] / prepared.columns["n_target_tokens"][2:],
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    out["perplexity"][2:], np.exp(out["mean_nll"][2:]), rtol=1e-6
  )
  # A random model spreads probability: perplexity near the vocabulary size.
  assert (out["mean_nll"][2:] > 1.0).all()


def test_schema_holds_the_stage_columns(tok):
  stage = perplexity.PerplexityStage(CONFIG, tok, MAX_TOKENS)
  prepared = stage.prepare(["the river"])
  outputs = stage.finalize(
    {"nll_sum": np.ones(1), "n_scored": np.ones(1), "n_inputs": np.full(1, 2)}
  )
  names = set(perplexity.schema().names)
  assert names == {"id", "problem"} | set(prepared.columns) | set(outputs)


def test_encoder_only_model_is_refused(tok):
  with pytest.raises(ValueError, match="encoder-decoder"):
    perplexity.PerplexityStage(presets.TINY_SENTENCE_T5, tok)


# --- parity with transformers ------------------------------------------------


def test_mean_nll_matches_transformers_loss_live():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  folder = TESTDATA / "t5_a"
  config = checkpoints.config_from_checkpoint(folder)
  model_params = checkpoints.load_params(folder, config)
  rng = np.random.default_rng(7)
  docs = [rng.integers(2, config.vocab_size, n) for n in (2, 9, 30, 80)]
  pairs = [perplexity.split_prefix_target(d, MAX_TOKENS, 1) for d in docs]
  inputs, targets = [p[0] for p in pairs], [p[1] for p in pairs]
  step = jax.jit(perplexity.make_step_fn(config), static_argnums=3)
  sums, batches = _packed_sums(step, model_params, inputs, targets)
  assert any(len(m) > 1 for b in batches for m in b.members)
  ours = sums["nll_sum"] / sums["n_scored"]
  hf = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
  # The fixture's config.json omits it; every released T5 config has 0 (pad).
  hf.config.decoder_start_token_id = 0
  with torch.no_grad():
    for i, (x, y) in enumerate(zip(inputs, targets, strict=True)):
      # transformers shifts `labels` right, starting from pad 0, and averages
      # the cross-entropy over them: the mean NLL of our split.
      loss = hf(
        input_ids=torch.from_numpy(x[None]).long(),
        labels=torch.from_numpy(y[None]).long(),
      ).loss.item()
      np.testing.assert_allclose(ours[i], loss, atol=1e-4, rtol=0)


def test_perplexity_stage_and_selection_keep_the_lowest(tmp_path, vocab_path):
  texts = synthetic_texts(30, seed=21)
  texts[4] = ""  # too short to split: NaN, never selected
  corpus = tmp_path / "c.jsonl"
  corpus.write_text(
    "".join(
      json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)
    )
  )
  out = tmp_path / "ppl"
  manifest = perplexity.perplexity(
    configs.PerplexityConfig(
      corpus=configs.CorpusConfig(input=str(corpus), id_field="id"),
      model=configs.ModelConfig(model="tiny", vocab=vocab_path),
      max_tokens=64,
      run=configs.StreamConfig(output=str(out), chunk_size=16, progress=False),
    )
  )
  assert manifest == results.read_manifest(out)
  table = results.read_results(out)
  nll = dict(zip(table.column("id").to_pylist(),
                 table.column("mean_nll").to_numpy(), strict=True))  # fmt: skip
  assert np.isnan(nll["d4"]) and table.num_rows == 30
  assert results.read_manifest(out)["run_config"]["split"] == "first_half_v1"
  sel = tmp_path / "sel"
  selection = select.select(
    configs.SelectConfig(
      scores=(str(out),), sampler="perplexity", k=5, output=str(sel)
    )
  )
  assert selection == results.read_manifest(sel)
  chosen = results.read_results(sel).column("id").to_pylist()
  finite = sorted((v, k) for k, v in nll.items() if np.isfinite(v))
  assert sorted(chosen) == sorted(k for _, k in finite[:5])
  assert results.read_manifest(sel)["counts"]["num_unscored"] == 1
