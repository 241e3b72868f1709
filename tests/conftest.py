"""Test set-up: eight emulated CPU devices, fixed before JAX initialises."""

import os

# Must happen before the first `import jax` anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (
    _flags + " --xla_force_host_platform_device_count=8"
  ).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

_WORDS = (
  "the of and to in a is that for it as was with be by on not he this are "
  "or his from at which but have an they you were her she there one all we "
  "their river mountain city music science history language computer market"
).split()


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
  """Deterministic pseudo-English documents of varied length."""
  import numpy as np

  rng = np.random.default_rng(seed)
  lengths = np.clip(rng.lognormal(4.0, 1.0, n), 1, 600).astype(int)
  return [" ".join(rng.choice(_WORDS, size=k)) for k in lengths]


@pytest.fixture(scope="session")
def vocab_path(tmp_path_factory) -> str:
  """A small SentencePiece model with T5's special ids, where the Ask-LLM
  answers "yes" and "no" are single pieces (trained on prompts, as the demo
  does)."""
  from data_efficient import askllm
  from data_efficient.models import tokenizer

  path = tmp_path_factory.mktemp("vocab") / "spm.model"
  texts = [askllm.build_prompt(t) for t in synthetic_texts(300)]
  return tokenizer.train_vocab(texts, str(path), vocab_size=300)
