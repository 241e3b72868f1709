"""Stored tensors, checked against a model config, assembled into its tree.

Every reader of a non-Orbax format (T5X legacy, Hugging Face,
sentence-transformers) lists its tensors as `Stored` entries (shape known,
data not yet read) and says where each T5X leaf lives with a `Rule`;
`assemble` then checks the whole list against the config (missing, extra or
mis-shaped leaf: a `CheckpointError` naming the leaf and the file) before it
reads any tensor, and reads them one at a time, cast at once to the
requested dtype, so host memory holds one full copy of the model, not two.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util

from data_efficient.models import t5
from data_efficient.models.checkpoints.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Stored:
  """One tensor in a checkpoint, not yet read."""

  file: str
  shape: tuple[int, ...]
  read: Callable[[], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
  """Where a T5X leaf lives in a checkpoint.

  Attributes:
    names: Stored names, first present wins; the others, if present too, are
      aliases that must have the same shape (e.g. `encoder.embed_tokens`).
    transpose: Stored as [out, in] (torch Linear) or [buckets, heads].
  """

  names: tuple[str, ...]
  transpose: bool = False


@functools.lru_cache(maxsize=16)
def expected_shapes(config: t5.T5Config) -> dict[str, tuple[int, ...]]:
  """T5X leaf path ('encoder/layers_0/...') -> shape, for `config`.

  Cached (tracing the model takes a moment); callers must not mutate it.
  """
  abstract = nn.unbox(t5.abstract_params(config.replace(dtype="float32")))
  flat = traverse_util.flatten_dict(abstract, sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def assemble(
  stored: Mapping[str, Stored],
  rules: Mapping[str, Rule],
  config: t5.T5Config,
  dtype: Any,
  *,
  ignored: Callable[[str], bool] = lambda name: False,
  where: str,
  tied_head: str | None = None,
) -> dict[str, Any]:
  """Validates `stored` against `config`, then reads it leaf by leaf.

  Args:
    stored: Stored name -> tensor.
    rules: T5X leaf path -> where it is stored; must cover every leaf.
    config: The model config the checkpoint must match.
    dtype: Dtype of the returned arrays.
    ignored: Stored names that are known to be unused (not an error).
    where: The checkpoint, for messages about absent tensors.
    tied_head: Stored name of an output layer that must equal the embedding
      (a tied model that also stores it); checked if present.

  Returns:
    The nested T5X parameter tree of NumPy arrays.
  """
  expected = expected_shapes(config)
  if set(rules) != set(expected):  # a bug in a rule table, not in the file
    raise AssertionError(sorted(set(rules) ^ set(expected)))
  chosen: dict[str, tuple[str, Rule]] = {}
  used: set[str] = set()
  for leaf, shape in expected.items():
    rule = rules[leaf]
    present = [n for n in rule.names if n in stored]
    if not present:
      raise CheckpointError(
        f"{where}: parameter {leaf} {list(shape)} is missing (looked for "
        f"{' or '.join(repr(n) for n in rule.names)}). Does the config "
        "match this checkpoint (layers, vocab_size, tied embeddings)?"
      )
    for name in present:
      got = stored[name].shape[::-1] if rule.transpose else stored[name].shape
      if tuple(got) != shape:
        raise CheckpointError(
          f"{stored[name].file}: tensor {name!r} for parameter {leaf} has "
          f"shape {list(stored[name].shape)}, expected "
          f"{list(shape[::-1] if rule.transpose else shape)} from the "
          "config. Use the config that came with the checkpoint."
        )
    chosen[leaf] = (present[0], rule)
    used.update(present)
  if tied_head is not None and tied_head in stored:
    used.add(tied_head)
  extra = sorted(n for n in stored if n not in used and not ignored(n))
  if extra:
    raise CheckpointError(
      f"{stored[extra[0]].file}: tensor {extra[0]!r} is not a parameter of "
      f"this model ({len(extra)} unexpected tensor(s): "
      f"{', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}). The "
      "checkpoint and the config disagree (layers, decoder, projection?)."
    )

  params = {}
  for leaf, (name, rule) in chosen.items():
    value = stored[name].read()
    if rule.transpose:
      value = value.T
    if value.shape != expected[leaf]:  # the file lied in its header
      raise CheckpointError(
        f"{stored[name].file}: tensor {name!r} read with shape "
        f"{list(value.shape)}, its header said {list(stored[name].shape)}."
      )
    params[leaf] = np.ascontiguousarray(value, dtype=dtype)
    del value
  if tied_head is not None and tied_head in stored:
    head = stored[tied_head].read()
    if not np.array_equal(
      head.astype(dtype), params["token_embedder/embedding"]
    ):
      raise CheckpointError(
        f"{stored[tied_head].file}: {tied_head!r} differs from the token "
        "embedding, but the config ties them (logits_via_embedding=True). "
        "An untied head with scaled outputs is not supported; check "
        "tie_word_embeddings / scale_decoder_outputs in config.json."
      )
  return traverse_util.unflatten_dict(params, sep="/")
