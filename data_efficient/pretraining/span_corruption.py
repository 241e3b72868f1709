"""T5's span-corruption pre-training objective, as a SeqIO preprocessor.

SeqIO 0.0.20 ships no span corruption (it lives in the `t5` package, which
this library never imports), so this module implements it in TensorFlow ops.

The objective, for a run of raw tokens:

  raw      the quick brown fox jumps over the lazy dog
  mask     .   .     x     x   .     .    x   .    .     (15% noise)
  inputs   the quick <S1> jumps over <S2> lazy dog
  targets  <S1> brown fox <S2> the

Each span of consecutive noise tokens becomes one sentinel in the inputs; the
targets hold, for each span, its sentinel followed by the dropped tokens.
Sentinels are the vocabulary's extra ids counting down from its last id:
S1 = vocab_size - 1, S2 = vocab_size - 2, ... (T5's convention, so models
trained here read like T5's).

Documents are first cut to a random chunk of at most `max_chunk_length`
tokens, concatenated in groups (no separators, as in T5) and split into runs
of `raw_length` tokens, where `raw_length` is the longest run whose
corrupted inputs (plus EOS) fit `sequence_length['inputs']`; see
`span_corruption_lengths` (512 inputs -> 568 raw tokens, 114 targets).

Randomness comes only from SeqIO's per-element seeds
(`seqio.map_over_dataset(num_seeds=...)`) fed to stateless random ops, so
the output is a function of the data and `seqio.map_seed_manager`'s seed.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
# T5 cuts each document to a random chunk of at most this many tokens, so one
# huge document cannot dominate a batch of concatenated text.
MAX_CHUNK_LENGTH = 65536
# Documents concatenated before being split into raw runs.
CONCAT_BATCH_SIZE = 128


def _span_counts(
  raw_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
  """(noise tokens, noise spans) of a run of `raw_length` >= 2 tokens.

  The same arithmetic as `noise_span_mask`, in Python (round half to even,
  like `tf.round`).
  """
  num_noise = min(max(round(raw_length * noise_density), 1), raw_length - 1)
  num_spans = max(round(num_noise / mean_noise_span_length), 1)
  return num_noise, min(num_spans, num_noise, raw_length - num_noise)


def _corrupted_lengths(
  raw_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
  """(inputs, targets) lengths, EOS included, of a run of `raw_length`."""
  num_noise, num_spans = _span_counts(
    raw_length, noise_density, mean_noise_span_length
  )
  # Inputs: kept tokens + one sentinel per span + EOS.
  # Targets: dropped tokens + one sentinel per span + EOS.
  return (
    raw_length - num_noise + num_spans + 1,
    num_noise + num_spans + 1,
  )


def span_corruption_lengths(
  inputs_length: int,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
  """Raw run length and targets length for a given inputs length.

  The raw length is the longest run of tokens whose corrupted inputs, with
  one sentinel per span and EOS, fit `inputs_length`; the targets length is
  then that run's dropped tokens plus sentinels plus EOS. For T5's
  `inputs_length=512` this gives (568, 114): set
  TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 114}.

  Args:
    inputs_length: Length of the encoder inputs, EOS included.
    noise_density: Fraction of raw tokens dropped into the targets.
    mean_noise_span_length: Mean length of a dropped span.

  Returns:
    (raw_length, targets_length).

  Raises:
    ValueError: if no run of at least 2 tokens fits `inputs_length`.
  """
  if not 0 < noise_density < 1:
    raise ValueError(f"noise_density={noise_density} must be in (0, 1).")
  if mean_noise_span_length < 1:
    raise ValueError(
      f"mean_noise_span_length={mean_noise_span_length} must be >= 1."
    )

  def fits(raw: int) -> bool:
    inputs, _ = _corrupted_lengths(raw, noise_density, mean_noise_span_length)
    return inputs <= inputs_length

  if not fits(2):
    raise ValueError(
      f"inputs_length={inputs_length} is too short for span corruption; "
      "use at least 3."
    )
  raw = 2
  # Inputs grow with the raw length (by at most one token per raw token),
  # so the first raw length that does not fit ends the search.
  while fits(raw + 1):
    raw += 1
  return raw, _corrupted_lengths(raw, noise_density, mean_noise_span_length)[1]


def _random_composition(
  total: tf.Tensor, parts: tf.Tensor, seed: tf.Tensor
) -> tf.Tensor:
  """`parts` positive int32 lengths summing to `total`, uniformly at random.

  Cuts the interval [0, total) at `parts - 1` distinct positions drawn from
  1 .. total - 1.
  """
  # [total - 1] random ranks -> the first `parts - 1` candidate cut points.
  ranks = tf.argsort(tf.random.stateless_uniform([total - 1], seed))
  cuts = tf.sort(ranks[: parts - 1] + 1)
  bounds = tf.concat([[0], cuts, [total]], axis=0)  # [parts + 1]
  return bounds[1:] - bounds[:-1]  # [parts]


def noise_span_mask(
  length: tf.Tensor,
  seeds: tf.Tensor,
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.Tensor:
  """Which of `length` tokens are noise: alternating spans, noise second.

  round(length * noise_density) tokens (at least 1, at most length - 1) are
  noise, in round(noise / mean_noise_span_length) spans (at least 1); span
  lengths are random compositions of the two counts, and a non-noise span
  comes first, so the run never starts with a sentinel. Runs of one token
  are computed as two and cut, so they hold no noise.

  Args:
    length: Scalar int32, the number of tokens.
    seeds: [2, 2] int32 stateless seeds (noise lengths, non-noise lengths).
    noise_density: Fraction of noise tokens.
    mean_noise_span_length: Mean noise span length.

  Returns:
    [length] bool mask, True for noise.
  """
  full = tf.maximum(length, 2)
  full_f = tf.cast(full, tf.float64)
  num_noise = tf.cast(tf.round(full_f * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, full - 1)
  num_spans = tf.cast(
    tf.round(tf.cast(num_noise, tf.float64) / mean_noise_span_length),
    tf.int32,
  )
  num_spans = tf.maximum(num_spans, 1)
  num_spans = tf.minimum(num_spans, tf.minimum(num_noise, full - num_noise))
  noise_lengths = _random_composition(num_noise, num_spans, seeds[0])
  kept_lengths = _random_composition(full - num_noise, num_spans, seeds[1])
  # [num_spans, 2] -> [2 * num_spans]: kept, noise, kept, noise, ...
  span_lengths = tf.reshape(tf.stack([kept_lengths, noise_lengths], 1), [-1])
  is_noise = tf.tile([False, True], [num_spans])  # [2 * num_spans]
  return tf.repeat(is_noise, span_lengths)[:length]  # [length]


def corrupt_spans(
  tokens: tf.Tensor, noise_mask: tf.Tensor, vocab_size: int
) -> tuple[tf.Tensor, tf.Tensor]:
  """Replaces noise spans by sentinels; returns (inputs, targets).

  Args:
    tokens: [length] int token ids.
    noise_mask: [length] bool, True for noise.
    vocab_size: The vocabulary size; sentinels are vocab_size - 1, - 2, ...

  Returns:
    inputs: kept tokens, one sentinel in place of each noise span.
    targets: for each noise span, its sentinel then its tokens.
  """
  previous = tf.pad(noise_mask[:-1], [[1, 0]])  # [length]
  span_start = noise_mask & ~previous  # [length]
  # Sentinel of the span starting at each position (valid at span starts).
  sentinels = vocab_size - tf.cumsum(tf.cast(span_start, tokens.dtype))
  inputs = tf.boolean_mask(
    tf.where(span_start, sentinels, tokens), ~noise_mask | span_start
  )
  # [length, 2]: (sentinel, token) per position, read row by row.
  pairs = tf.stack([sentinels, tokens], axis=1)
  keep = tf.stack([span_start, noise_mask], axis=1)
  targets = tf.boolean_mask(pairs, keep)
  return inputs, targets


@seqio.map_over_dataset(num_seeds=1)
def _random_chunk(
  tokens: tf.Tensor, seed: tf.Tensor, max_length: int
) -> tf.Tensor:
  """One of the aligned `max_length` chunks of `tokens`, at random."""
  num_chunks = (tf.size(tokens) + max_length - 1) // max_length
  chunk = tf.random.stateless_uniform(
    [], seed, minval=0, maxval=tf.maximum(num_chunks, 1), dtype=tf.int32
  )
  return tokens[chunk * max_length : (chunk + 1) * max_length]


def _split_into_runs(tokens: tf.Tensor, raw_length: int) -> tf.data.Dataset:
  """[n] tokens -> runs of `raw_length` tokens (the last may be shorter)."""
  size = tf.size(tokens)
  num_runs = (size + raw_length - 1) // raw_length
  padded = tf.pad(tokens, [[0, num_runs * raw_length - size]])
  rows = tf.reshape(padded, [num_runs, raw_length])  # [runs, raw_length]
  lengths = tf.minimum(raw_length, size - tf.range(num_runs) * raw_length)
  return tf.data.Dataset.from_tensor_slices((rows, lengths)).map(
    lambda row, n: row[:n]
  )


def span_corruption(
  dataset: tf.data.Dataset,
  sequence_length: Mapping[str, int] | None,
  output_features: Mapping[str, seqio.Feature],
  noise_density: float = NOISE_DENSITY,
  mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
  max_chunk_length: int = MAX_CHUNK_LENGTH,
  concat_batch_size: int = CONCAT_BATCH_SIZE,
) -> tf.data.Dataset:
  """SeqIO preprocessor: tokenized 'targets' -> span-corrupted pairs.

  Place it after `seqio.preprocessors.tokenize` (and the cache placeholder)
  and before `seqio.preprocessors.append_eos_after_trim`, which adds EOS.

  Args:
    dataset: Examples with a 1-D int 'targets' (token ids, no EOS).
    sequence_length: Must give 'inputs' (e.g. 512); 'targets' must be at
      least the targets length `span_corruption_lengths` computes (114).
    output_features: Its 'targets' vocabulary supplies the sentinels.
    noise_density: Fraction of tokens dropped into the targets.
    mean_noise_span_length: Mean length of a dropped span.
    max_chunk_length: Documents are cut to one random chunk of this many
      tokens first.
    concat_batch_size: Documents concatenated before splitting into runs.

  Returns:
    Examples {'inputs', 'targets'} of int32 token ids, without EOS.

  Raises:
    ValueError: if the feature lengths do not fit or the vocabulary has too
      few extra ids for the sentinels.
  """
  if not sequence_length or "inputs" not in sequence_length:
    raise ValueError(
      "span_corruption needs sequence_length['inputs']: pass "
      "TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 114} (T5X) or "
      "sequence_length= to get_dataset."
    )
  raw_length, targets_length = span_corruption_lengths(
    sequence_length["inputs"], noise_density, mean_noise_span_length
  )
  if sequence_length.get("targets", targets_length) < targets_length:
    raise ValueError(
      f"sequence_length['targets']={sequence_length['targets']} would cut "
      f"the targets of inputs length {sequence_length['inputs']}; set it to "
      f"{targets_length} (e.g. TASK_FEATURE_LENGTHS)."
    )
  vocabulary = output_features["targets"].vocabulary
  _, max_spans = _span_counts(raw_length, noise_density, mean_noise_span_length)
  extra_ids = getattr(vocabulary, "extra_ids", None)
  if extra_ids is not None and extra_ids < max_spans:
    raise ValueError(
      f"the vocabulary has {extra_ids} extra ids but runs of {raw_length} "
      f"tokens need up to {max_spans} sentinels; load it with "
      f"extra_ids >= {max_spans} (T5's default vocabulary has 100)."
    )
  vocab_size = vocabulary.vocab_size

  @seqio.map_over_dataset(num_seeds=2)
  def corrupt(tokens: tf.Tensor, seeds: tf.Tensor) -> dict[str, tf.Tensor]:
    mask = noise_span_mask(
      tf.size(tokens), tf.stack(seeds), noise_density, mean_noise_span_length
    )
    inputs, targets = corrupt_spans(tokens, mask, vocab_size)
    return {"inputs": inputs, "targets": targets}

  tokens = dataset.map(
    lambda ex: tf.cast(ex["targets"], tf.int32),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  tokens = tokens.filter(lambda t: tf.size(t) > 0)
  tokens = _random_chunk(tokens, max_length=max_chunk_length)
  # Concatenate groups of documents: [docs, (tokens)] -> [sum of tokens].
  tokens = tokens.ragged_batch(concat_batch_size).map(lambda r: r.flat_values)
  runs = tokens.flat_map(lambda t: _split_into_runs(t, raw_length))
  return corrupt(runs)
