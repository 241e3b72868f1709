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
from text_fixtures import synthetic_texts  # noqa: E402


@pytest.fixture(scope="session")
def mesh():
  """A ('data', 'model') mesh over all eight devices."""
  from data_efficient import sharding

  return sharding.make_mesh()


@pytest.fixture(scope="session")
def vocab_path(tmp_path_factory) -> str:
  """A small SentencePiece model with T5's special ids, where the Ask-LLM
  answers "yes" and "no" are single pieces (trained on prompts, as the demo
  does)."""
  from data_efficient.models import tokenizer
  from data_efficient.stages import askllm

  path = tmp_path_factory.mktemp("vocab") / "spm.model"
  texts = [askllm.build_prompt(t) for t in synthetic_texts(300)]
  return tokenizer.train_vocab(texts, str(path), vocab_size=300)


@pytest.fixture(scope="session")
def gcs_emulator():
  """A Cloud Storage emulator on 127.0.0.1 for the session (`gcs_emulator`),
  with this process's environment pointing gs:// at it."""
  import gcs_emulator

  emulator = gcs_emulator.Emulator()
  saved = dict(os.environ)
  gcs_emulator.apply_environment(emulator.environment())
  yield emulator
  os.environ.clear()
  os.environ.update(saved)
  emulator.stop()


@pytest.fixture
def gcs_dir(gcs_emulator, request):
  """A fresh gs:// directory on the emulator, named after the test."""
  import gcs_emulator as module

  name = "".join(c if c.isalnum() else "_" for c in request.node.name)
  return f"gs://{module.BUCKET}/{name}"
