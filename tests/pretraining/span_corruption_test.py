"""Tests for our span-corruption preprocessor (T5's objective)."""

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
seqio = pytest.importorskip("seqio")

from data_efficient.pretraining import span_corruption  # noqa: E402

_EXTRA_IDS = 20
_INPUTS_LENGTH = 64


@pytest.fixture(scope="module")
def vocabulary():
  """SeqIO's test SentencePiece model (26 pieces) with 20 extra ids."""
  path = os.path.join(
    os.path.dirname(seqio.__file__),
    "test_data/sentencepiece/sentencepiece.model",
  )
  return seqio.SentencePieceVocabulary(path, extra_ids=_EXTRA_IDS)


def _documents(count, seed=0):
  """Random token documents of 1..300 ids, drawn from the base pieces."""
  rng = np.random.default_rng(seed)
  return [
    rng.integers(3, 26, size=int(n)).astype(np.int32)
    for n in rng.integers(1, 300, size=count)
  ]


def _run(vocabulary, documents, seed=7, inputs_length=_INPUTS_LENGTH):
  _, targets_length = span_corruption.span_corruption_lengths(inputs_length)
  dataset = tf.data.Dataset.from_generator(
    lambda: ({"targets": d} for d in documents),
    output_signature={"targets": tf.TensorSpec([None], tf.int32)},
  )
  features = {
    "inputs": seqio.Feature(vocabulary),
    "targets": seqio.Feature(vocabulary),
  }
  with seqio.map_seed_manager(seed):
    out = span_corruption.span_corruption(
      dataset,
      {"inputs": inputs_length, "targets": targets_length},
      features,
    )
  return list(out.as_numpy_iterator())


def _reconstruct(inputs, targets, vocab_size):
  """The raw run: each sentinel in `inputs` replaced by its target span."""
  is_sentinel = targets >= vocab_size - _EXTRA_IDS
  spans = {}
  for position in np.flatnonzero(is_sentinel):
    end = position + 1
    while end < len(targets) and not is_sentinel[end]:
      end += 1
    spans[int(targets[position])] = targets[position + 1 : end]
  raw = []
  for token in inputs:
    raw.extend(spans.pop(int(token)) if token in spans else [token])
  assert not spans, "every target span has its sentinel in the inputs"
  return np.asarray(raw, np.int32)


@pytest.mark.parametrize(
  "inputs_length, expected",
  [(512, (568, 114)), (1024, (1137, 229)), (64, (70, 14))],
)
def test_feature_lengths(inputs_length, expected):
  assert span_corruption.span_corruption_lengths(inputs_length) == expected


def test_feature_lengths_are_the_longest_that_fit():
  for inputs_length in (16, 100, 512, 777):
    raw, targets = span_corruption.span_corruption_lengths(inputs_length)
    fit = span_corruption._corrupted_lengths(raw, 0.15, 3.0)
    too_long = span_corruption._corrupted_lengths(raw + 1, 0.15, 3.0)
    assert fit == (fit[0], targets)
    assert fit[0] <= inputs_length < too_long[0]


def test_corrupt_spans_structure():
  tokens = tf.constant([10, 11, 12, 13, 14, 15, 16, 17], tf.int32)
  mask = tf.constant([0, 1, 1, 0, 0, 1, 0, 1]) > 0
  inputs, targets = span_corruption.corrupt_spans(tokens, mask, 100)
  np.testing.assert_array_equal(inputs, [10, 99, 13, 14, 98, 16, 97])
  np.testing.assert_array_equal(targets, [99, 11, 12, 98, 15, 97, 17])


def test_noise_mask_counts_and_shape():
  for length in (1, 2, 7, 71, 568):
    mask = span_corruption.noise_span_mask(
      tf.constant(length), tf.constant([[1, 2], [3, 4]])
    ).numpy()
    assert mask.shape == (length,)
    assert not mask[0], "runs start with a kept span"
    if length >= 2:
      assert mask.sum() == min(max(round(length * 0.15), 1), length - 1)
      starts = np.sum(mask & ~np.pad(mask[:-1], (1, 0)))
      assert starts == max(round(mask.sum() / 3.0), 1)


def test_lengths_sentinels_and_reconstruction(vocabulary):
  documents = _documents(60)
  examples = _run(vocabulary, documents)
  raw_length, targets_length = span_corruption.span_corruption_lengths(
    _INPUTS_LENGTH
  )
  vocab_size = vocabulary.vocab_size
  raws = []
  for ex in examples:
    inputs, targets = ex["inputs"], ex["targets"]
    # EOS is added later by append_eos_after_trim: one slot is left for it.
    assert len(inputs) <= _INPUTS_LENGTH - 1
    assert len(targets) <= targets_length - 1
    input_sentinels = inputs[inputs >= vocab_size - _EXTRA_IDS]
    target_sentinels = targets[targets >= vocab_size - _EXTRA_IDS]
    # Sentinels count down from the last id, in the same order on both
    # sides; targets start with one; no two sentinels are adjacent in the
    # inputs (a span is replaced by exactly one).
    count = len(input_sentinels)
    np.testing.assert_array_equal(
      input_sentinels, vocab_size - 1 - np.arange(count)
    )
    np.testing.assert_array_equal(target_sentinels, input_sentinels)
    assert count == 0 or targets[0] == vocab_size - 1
    is_sentinel = inputs >= vocab_size - _EXTRA_IDS
    assert not np.any(is_sentinel[1:] & is_sentinel[:-1])
    raws.append(_reconstruct(inputs, targets, vocab_size))
  # Every run but the last of each concatenated group is full length.
  full = [r for r in raws if len(r) == raw_length]
  assert len(full) >= len(raws) - 1
  for ex in (
    e for e, r in zip(examples, raws, strict=True) if len(r) == raw_length
  ):
    assert len(ex["inputs"]) == _INPUTS_LENGTH - 1
    assert len(ex["targets"]) == targets_length - 1
  # The runs, joined, are the documents, joined (all fit one chunk).
  np.testing.assert_array_equal(np.concatenate(raws), np.concatenate(documents))


def test_noise_statistics(vocabulary):
  examples = _run(vocabulary, _documents(400, seed=1), inputs_length=128)
  vocab_size = vocabulary.vocab_size
  noise = spans = total = 0
  for ex in examples:
    targets = ex["targets"]
    num_spans = int(np.sum(targets >= vocab_size - _EXTRA_IDS))
    noise += len(targets) - num_spans
    spans += num_spans
    total += len(ex["inputs"]) - num_spans + len(targets) - num_spans
  assert total > 50_000
  assert noise / total == pytest.approx(0.15, abs=0.005)
  assert noise / spans == pytest.approx(3.0, abs=0.1)


def test_reproducible_under_seed(vocabulary):
  documents = _documents(30, seed=2)
  first = _run(vocabulary, documents, seed=3)
  again = _run(vocabulary, documents, seed=3)
  other = _run(vocabulary, documents, seed=4)
  assert len(first) == len(again)
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])
  assert any(
    not np.array_equal(a["inputs"], b["inputs"])
    for a, b in zip(first, other, strict=True)
  )


def test_long_documents_are_cut_to_a_random_chunk(vocabulary):
  document = np.arange(3, 3 + 500, dtype=np.int32) % 23 + 3
  dataset = tf.data.Dataset.from_tensors({"targets": document})
  with seqio.map_seed_manager(5):
    out = span_corruption.span_corruption(
      dataset,
      {"inputs": 64, "targets": 16},
      {"targets": seqio.Feature(vocabulary)},
      max_chunk_length=100,
    )
  examples = list(out.as_numpy_iterator())
  raw = np.concatenate(
    [
      _reconstruct(e["inputs"], e["targets"], vocabulary.vocab_size)
      for e in examples
    ]
  )
  assert len(raw) == 100
  start = [
    i for i in range(0, 500, 100) if np.array_equal(document[i : i + 100], raw)
  ]
  assert len(start) == 1


def test_errors_name_the_fix(vocabulary):
  dataset = tf.data.Dataset.from_tensors({"targets": np.ones(5, np.int32)})
  features = {"targets": seqio.Feature(vocabulary)}
  with pytest.raises(ValueError, match="sequence_length\\['inputs'\\]"):
    span_corruption.span_corruption(dataset, None, features)
  with pytest.raises(ValueError, match="set it to 114"):
    span_corruption.span_corruption(
      dataset, {"inputs": 512, "targets": 100}, features
    )
  with pytest.raises(ValueError, match="extra_ids >= 28"):
    span_corruption.span_corruption(
      dataset, {"inputs": 512, "targets": 114}, features
    )
