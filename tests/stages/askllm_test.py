"""Tests of the Ask-LLM prompt, truncation and scoring step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from text_fixtures import synthetic_texts

from data_efficient.models import presets, t5, tokenizer
from data_efficient.stages import askllm, engine

EXPECTED_PROMPT = """###
An example.
###

Does the previous paragraph demarcated within ### and ### contain informative signal for pre-training a large-language model? An informative datapoint should be well-formatted, contain some usable knowledge of the world, and strictly NOT have any harmful, racist, sexist, etc. content.

OPTIONS:
- yes
- no"""

CONFIG = presets.TINY.replace(vocab_size=320)


@pytest.fixture(scope="module")
def tok(vocab_path):
  return tokenizer.Tokenizer(vocab_path, num_threads=2)


def test_prompt_is_the_papers():
  assert askllm.build_prompt("An example.") == EXPECTED_PROMPT


def test_answer_ids_are_the_vocabularys_single_pieces(tok):
  yes, no = askllm.answer_ids(tok)
  assert tok.pieces("yes") == ["▁yes"] and tok.pieces("no") == ["▁no"]
  assert (yes, no) == (tok.encode("yes")[0], tok.encode("no")[0])
  assert yes != no


def test_answer_ids_reject_a_vocabulary_that_splits_yes():
  import os

  import seqio

  path = os.path.join(
    os.path.dirname(seqio.__file__),
    "test_data/sentencepiece/sentencepiece.model",
  )
  with pytest.raises(ValueError, match="'yes'"):
    askllm.answer_ids(tokenizer.Tokenizer(path))


def test_fitting_example_is_the_encoding_of_the_whole_prompt(tok):
  texts = ["A short example about rivers.", "", "  "]
  enc = askllm.encode_prompts(tok, texts, max_length=512)
  for text, ids in zip(texts, enc.ids, strict=True):
    expected = tok.encode(askllm.build_prompt(text)) + [tok.eos_id]
    np.testing.assert_array_equal(ids, expected)
  assert not enc.truncated.any()


@pytest.mark.parametrize("max_length", [200, 256, 333])
def test_long_example_is_truncated_never_the_question(tok, max_length):
  long = " ".join(synthetic_texts(40, seed=1))
  huge = "river " * 1_000_000  # 6 MB
  enc = askllm.encode_prompts(tok, [long, huge], max_length=max_length)
  assert enc.truncated.all()
  suffix_ids = tok.encode(askllm.PROMPT_SUFFIX)
  for ids in enc.ids:
    assert len(ids) <= max_length
    assert ids[-1] == tok.eos_id
    # The ids are the encoding of one prompt string that ends with the question.
    text = tok.decode(ids[:-1])
    assert text.endswith(tok.decode(suffix_ids))
    np.testing.assert_array_equal(ids[:-1], tok.encode(tok.decode(ids[:-1])))
    # And nothing more of the example would have fitted by much.
    assert len(ids) >= max_length - 8


def test_max_length_below_the_prompt_is_an_error(tok):
  with pytest.raises(ValueError, match="max_length=20"):
    askllm.encode_prompts(tok, ["x " * 100], max_length=20)


@jax.jit
def _reference_log_probs(params, tokens):
  """log P(first answer token) per row: plain encoder-decoder call, no packing."""
  logits = t5.T5(CONFIG).apply(
    {"params": params}, tokens, jnp.zeros((tokens.shape[0], 1), jnp.int32)
  )
  return jax.nn.log_softmax(logits[:, 0])


def test_packed_scores_equal_one_example_per_row(tok):
  params = t5.init_params(CONFIG, seed=3)
  stage = askllm.AskLLMStage(CONFIG, tok, max_length=512)
  texts = synthetic_texts(12, seed=2)
  prepared = stage.prepare(texts)
  packing = engine.PackingConfig(
    max_length=512, max_segments=4, bucket_step=64, tokens_per_batch=1024
  )
  rows = list(engine.make_batches(prepared.ids, packing, batch_multiple=1))
  step = jax.jit(stage.step, static_argnums=3)
  assert any(len(m) > 1 for b in rows for m in b.members)  # packing happened
  got = {"log_p_yes": np.zeros(12), "log_p_no": np.zeros(12)}
  for batch in rows:
    out = step(params, batch.tokens, batch.segment_ids, 4)
    for r, members in enumerate(batch.members):
      for s, i in enumerate(members):
        got["log_p_yes"][i] = out["log_p_yes"][r, s]
        got["log_p_no"][i] = out["log_p_no"][r, s]
  # One example per row, padded to a common length (padding is masked).
  tokens = np.zeros((12, 512), np.int32)
  for i, ids in enumerate(prepared.ids):
    tokens[i, : len(ids)] = ids
  ref = np.asarray(_reference_log_probs(params, tokens))
  np.testing.assert_allclose(got["log_p_yes"], ref[:, stage.yes_id], atol=2e-5)
  np.testing.assert_allclose(got["log_p_no"], ref[:, stage.no_id], atol=2e-5)


def test_finalize_gives_probabilities():
  stage = object.__new__(askllm.AskLLMStage)
  out = stage.finalize(
    {"log_p_yes": np.log([0.2, 0.5]), "log_p_no": np.log([0.6, 0.5])}
  )
  np.testing.assert_allclose(out["p_yes"], [0.2, 0.5], rtol=1e-6)
  np.testing.assert_allclose(out["p_yes_renorm"], [0.25, 0.5], rtol=1e-6)
