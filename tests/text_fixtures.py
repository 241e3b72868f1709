"""Shared test data: deterministic pseudo-English documents."""

import numpy as np

_WORDS = (
  "the of and to in a is that for it as was with be by on not he this are "
  "or his from at which but have an they you were her she there one all we "
  "their river mountain city music science history language computer market"
).split()


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
  """Deterministic pseudo-English documents of varied length."""
  rng = np.random.default_rng(seed)
  lengths = np.clip(rng.lognormal(4.0, 1.0, n), 1, 600).astype(int)
  return [" ".join(rng.choice(_WORDS, size=k)) for k in lengths]
