"""Tests for the selected-subset SeqIO tasks, on a mocked c4/en:3.1.0.

`tfds.testing.mock_data` serves fixed examples per split (no network, no
data); the TFDS data_dir is a temp dir, so nothing is written into the
tfds package.
"""

import contextlib
import json
import os

import numpy as np
import pyarrow as pa
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")
seqio = pytest.importorskip("seqio")

from data_efficient.io import results  # noqa: E402
from data_efficient.pretraining import seqio_tasks, span_corruption  # noqa: E402

_WORDS = "the quick brown fox jumps over a lazy dog and then sleeps".split()
_LENGTHS = {"inputs": 64, "targets": 14}
_CORPUS = {
  "kind": "tfds",
  "name": "c4/en",
  "version": "3.1.0",
  "split": "train",
}


def c4_examples(split, count):
  """Deterministic C4-like examples {url, text, timestamp}."""
  rng = np.random.default_rng(0 if split == "train" else 1)
  return [
    {
      "url": f"https://{split}.example.com/{i}",
      "text": " ".join(rng.choice(_WORDS, size=int(rng.integers(3, 30)))),
      "timestamp": "2019-04-25T12:57:54Z",
    }
    for i in range(count)
  ]


def _write_metadata(data_dir, splits):
  """c4/en:3.1.0 metadata in `data_dir`: split sizes, one shard each."""
  # Under the mock, builders use the mock's data_dir: pass ours explicitly,
  # else the metadata would be written into the tfds package.
  with tfds.testing.mock_data(data_dir=data_dir):
    builder = tfds.builder("c4/en:3.1.0", data_dir=data_dir)
    infos = [
      tfds.core.SplitInfo(
        name=split,
        shard_lengths=[len(rows)],
        num_bytes=0,
        filename_template=tfds.core.ShardedFileTemplate(
          data_dir=builder.data_dir,
          dataset_name="c4",
          split=split,
          filetype_suffix="tfrecord",
        ),
      )
      for split, rows in splits.items()
    ]
    builder.info.set_splits(tfds.core.SplitDict(infos))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


@contextlib.contextmanager
def mocked_c4(data_dir, splits):
  """Serves `splits` ({split: examples}) as c4/en:3.1.0 from `data_dir`."""
  _write_metadata(data_dir, splits)

  def as_dataset(self, split, **kwargs):
    del self, kwargs
    rows = splits[str(split)]
    return tf.data.Dataset.from_tensor_slices(
      {k: tf.constant([r[k] for r in rows], tf.string) for k in rows[0]}
    )

  with tfds.testing.mock_data(
    policy=tfds.testing.MockPolicy.USE_FILES,
    as_dataset_fn=as_dataset,
    data_dir=data_dir,
  ):
    yield


def write_selection(directory, ids, corpus=_CORPUS):
  """A selection directory as `data-efficient select` writes it."""
  writer = results.ResultWriter(
    directory,
    pa.schema([("id", pa.string())]),
    rows_per_shard=3,
    run_config={"sampler": "random"},
  )
  writer.write({"id": sorted(ids)})
  writer.close()
  results.write_manifest(
    directory,
    {"sampler": "random", "rate": 0.5, "seed": 0, "corpus": corpus},
  )
  return str(directory)


@pytest.fixture(scope="module")
def vocabulary():
  path = os.path.join(
    os.path.dirname(seqio.__file__),
    "test_data/sentencepiece/sentencepiece.model",
  )
  return seqio.SentencePieceVocabulary(path, extra_ids=20)


@pytest.fixture
def registry():
  """Removes the tasks a test registers."""
  before = set(seqio.TaskRegistry.names())
  yield
  for name in set(seqio.TaskRegistry.names()) - before:
    seqio.TaskRegistry.remove(name)


def _reconstruct(inputs, targets, vocabulary):
  """The raw tokens of a span-corrupted pair (EOS dropped)."""
  inputs, targets = inputs[:-1], targets[:-1]
  first_sentinel = vocabulary.vocab_size - vocabulary.extra_ids
  spans, current = {}, None
  for token in targets:
    if token >= first_sentinel:
      current = spans.setdefault(int(token), [])
    else:
      current.append(int(token))
  raw = []
  for token in inputs:
    raw += spans[int(token)] if token >= first_sentinel else [int(token)]
  return raw


def test_task_reads_exactly_the_selection(tmp_path, vocabulary, registry):
  train = c4_examples("train", 40)
  validation = c4_examples("validation", 7)
  chosen = [e for i, e in enumerate(train) if i % 3 == 1]
  selection = write_selection(tmp_path / "sel", [e["url"] for e in chosen])
  data_dir = str(tmp_path / "tfds")
  with mocked_c4(data_dir, {"train": train, "validation": validation}):
    task = seqio_tasks.register_selection_task(
      "random_50", selection, tfds_data_dir=data_dir, vocabulary=vocabulary
    )
    assert task.name == "c4_random_50_span_corruption"
    assert seqio.get_mixture_or_task(task.name) is task
    assert task.num_input_examples("train") == len(chosen)

    source = list(task.source.get_dataset("train", shuffle=False))
    assert [ex["url"].numpy().decode() for ex in source] == [
      e["url"] for e in chosen
    ]
    valid = list(task.source.get_dataset("validation", shuffle=False))
    assert [ex["url"].numpy().decode() for ex in valid] == [
      e["url"] for e in validation
    ]

    for split, examples in (("train", chosen), ("validation", validation)):
      with seqio.map_seed_manager(0):
        dataset = task.get_dataset(
          _LENGTHS, split=split, shuffle=False, use_cached=False
        )
      raw = []
      for ex in dataset.as_numpy_iterator():
        assert len(ex["inputs"]) <= _LENGTHS["inputs"]
        assert len(ex["targets"]) <= _LENGTHS["targets"]
        assert ex["inputs"][-1] == ex["targets"][-1] == vocabulary.eos_id
        raw += _reconstruct(ex["inputs"], ex["targets"], vocabulary)
      # Tokenized text of exactly these examples, in order.
      expected = [t for e in examples for t in vocabulary.encode(e["text"])]
      assert raw == expected


def test_full_length_runs_fill_the_feature_lengths(
  tmp_path, vocabulary, registry
):
  train = c4_examples("train", 30)
  selection = write_selection(tmp_path / "sel", [e["url"] for e in train])
  data_dir = str(tmp_path / "tfds")
  with mocked_c4(data_dir, {"train": train, "validation": train[:2]}):
    task = seqio_tasks.register_selection_task(
      "all", selection, tfds_data_dir=data_dir, vocabulary=vocabulary
    )
    with seqio.map_seed_manager(0):
      examples = list(
        task.get_dataset(_LENGTHS, shuffle=False).as_numpy_iterator()
      )
  assert len(examples) > 3
  for ex in examples[:-1]:
    assert (len(ex["inputs"]), len(ex["targets"])) == (64, 14)


def test_registration_is_idempotent_and_checked(tmp_path, registry):
  selection = write_selection(tmp_path / "sel", ["https://a/1"])
  other = write_selection(tmp_path / "other", ["https://a/2"])
  vocab = seqio.PassThroughVocabulary(100)
  task = seqio_tasks.register_selection_task("x", selection, vocabulary=vocab)
  assert (
    seqio_tasks.register_selection_task("x", selection, vocabulary=vocab)
    is task
  )
  with pytest.raises(ValueError, match="replace=True"):
    seqio_tasks.register_selection_task("x", other, vocabulary=vocab)
  replaced = seqio_tasks.register_selection_task(
    "x", other, vocabulary=vocab, replace=True
  )
  assert seqio.get_mixture_or_task("c4_x_span_corruption") is replaced
  with pytest.raises(ValueError, match="letters, digits"):
    seqio_tasks.register_selection_task("bad-name", selection)
  wrong = write_selection(
    tmp_path / "v301", ["u"], corpus={**_CORPUS, "version": "3.0.1"}
  )
  with pytest.raises(ValueError, match="tfds_name='c4/en:3.0.1'"):
    seqio_tasks.register_selection_task("v301", wrong, vocabulary=vocab)
  jsonl = write_selection(tmp_path / "jsonl", ["f:1"], corpus={"kind": "files"})
  with pytest.raises(ValueError, match="materialized_dir"):
    seqio_tasks.register_selection_task("j", jsonl, vocabulary=vocab)
  incomplete = tmp_path / "incomplete"
  incomplete.mkdir()
  with pytest.raises(results.OutputError, match="incomplete"):
    seqio_tasks.register_selection_task("inc", str(incomplete))


def test_register_from_environment(tmp_path, registry, monkeypatch):
  a = write_selection(tmp_path / "a", ["https://a/1"])
  b = write_selection(tmp_path / "b", ["https://b/1"])
  c = write_selection(tmp_path / "c", ["https://c/1"])
  registry_file = tmp_path / "registry.json"
  registry_file.write_text(
    json.dumps(
      {
        "from_file": c,
        "with_args": {"selection_dir": b, "tfds_data_dir": str(tmp_path)},
      }
    )
  )
  # The default vocabulary lives on GCS: stand in a local one.
  monkeypatch.setattr(
    seqio_tasks,
    "default_vocabulary",
    lambda: seqio.PassThroughVocabulary(100),
  )
  tasks = seqio_tasks.register_from_environment(
    {
      seqio_tasks.SELECTIONS_ENV: f" sel_a={a}, sel_b = {b} ,",
      seqio_tasks.REGISTRY_ENV: str(registry_file),
    }
  )
  assert sorted(t.name for t in tasks) == [
    "c4_from_file_span_corruption",
    "c4_sel_a_span_corruption",
    "c4_sel_b_span_corruption",
    "c4_with_args_span_corruption",
  ]
  assert (
    seqio.get_mixture_or_task("c4_sel_b_span_corruption").source.selection_dir
    == b
  )
  with pytest.raises(ValueError, match="NAME=DIR"):
    seqio_tasks.parse_selections("only_a_name")
  registry_file.write_text("[1, 2]")
  with pytest.raises(ValueError, match="JSON object"):
    seqio_tasks.register_from_registry(str(registry_file))


def test_import_registers_from_environment(tmp_path):
  """A fresh interpreter importing the module (what a gin file does)."""
  import subprocess
  import sys

  selection = write_selection(tmp_path / "sel", ["https://a/1"])
  code = (
    "import seqio, data_efficient.pretraining.seqio_tasks\n"
    "print(seqio.get_mixture_or_task('c4_envsel_span_corruption').name)\n"
  )
  env = dict(os.environ, DATA_EFFICIENT_SELECTIONS=f"envsel={selection}")
  out = subprocess.run(
    [sys.executable, "-c", code],
    env=env,
    capture_output=True,
    text=True,
    check=True,
    timeout=300,
  )
  assert out.stdout.strip() == "c4_envsel_span_corruption"


def test_lengths_match_the_preprocessor():
  assert (
    span_corruption.span_corruption_lengths(_LENGTHS["inputs"])[1]
    == (_LENGTHS["targets"])
  )
