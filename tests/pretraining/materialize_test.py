"""Tests for Beam materialisation (DirectRunner) and reading it back."""

import json
import os

import pyarrow as pa
import pytest

tf = pytest.importorskip("tensorflow")
seqio = pytest.importorskip("seqio")
beam = pytest.importorskip("apache_beam")

from data_efficient.io import paths, results  # noqa: E402
from data_efficient.pretraining import materialize, seqio_tasks  # noqa: E402

_BEAM = ["--runner=DirectRunner", "--direct_num_workers=1"]


def _write_jsonl(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _rows(split, count):
  return [
    {"url": f"https://{split}.example/{i}", "text": f"{split} doc {i} é"}
    for i in range(count)
  ]


def _selection(directory, ids):
  writer = results.ResultWriter(
    directory,
    pa.schema([("id", pa.string())]),
    rows_per_shard=4,
    run_config={"sampler": "random"},
  )
  writer.write({"id": sorted(ids)})
  writer.close()
  results.write_manifest(
    directory, {"sampler": "random", "corpus": {"kind": "files"}}
  )
  return str(directory)


def _read_examples(pattern):
  files = sorted(tf.io.gfile.glob(pattern))
  out = []
  for raw in tf.data.TFRecordDataset(files).as_numpy_iterator():
    example = tf.train.Example.FromString(raw)
    features = example.features.feature
    out.append(
      (
        features["url"].bytes_list.value[0].decode(),
        features["text"].bytes_list.value[0].decode(),
      )
    )
  return out


@pytest.fixture
def corpus(tmp_path):
  train, validation = _rows("train", 23), _rows("valid", 5)
  _write_jsonl(tmp_path / "train.jsonl", train)
  _write_jsonl(tmp_path / "valid.jsonl", validation)
  return tmp_path, train, validation


def test_round_trip_and_task(corpus, tmp_path):
  root, train, validation = corpus
  chosen = [r for i, r in enumerate(train) if i % 4 != 2]
  selection = _selection(tmp_path / "sel", [r["url"] for r in chosen])
  output = str(tmp_path / "out")
  manifest = materialize.materialize(
    selection,
    output,
    corpus=str(root / "train.jsonl"),
    validation_corpus=str(root / "valid.jsonl"),
    id_field="url",
    num_reads=3,
    num_shards=2,
    pipeline_args=_BEAM,
  )
  assert manifest["kind"] == seqio_tasks.MATERIALIZED_KIND
  assert manifest["splits"] == {
    "train": {"file_pattern": "train.tfrecord-*", "num_examples": len(chosen)},
    "validation": {
      "file_pattern": "validation.tfrecord-*",
      "num_examples": len(validation),
    },
  }
  assert manifest["missing_ids"] == 0
  assert manifest["selection"] == results.read_manifest(selection)
  assert len(tf.io.gfile.glob(os.path.join(output, "train.tfrecord-*"))) == 2

  expected = sorted((r["url"], r["text"]) for r in chosen)
  assert sorted(_read_examples(f"{output}/train.tfrecord-*")) == expected
  assert sorted(_read_examples(f"{output}/validation.tfrecord-*")) == sorted(
    (r["url"], r["text"]) for r in validation
  )
  # A second run finds the finished output and does nothing.
  again = materialize.materialize(
    selection,
    output,
    corpus=str(root / "train.jsonl"),
    pipeline_args=_BEAM,
  )
  assert again == manifest

  task = seqio_tasks.register_selection_task(
    "materialized_test",
    None,
    materialized_dir=output,
    vocabulary=seqio.ByteVocabulary(extra_ids=50),
  )
  try:
    source = task.source
    assert source.num_input_examples("train") == len(chosen)
    read = sorted(
      (ex["url"].decode(), ex["text"].decode())
      for ex in source.get_dataset("train", shuffle=False).as_numpy_iterator()
    )
    assert read == expected
    with seqio.map_seed_manager(0):
      pairs = list(
        task.get_dataset(
          {"inputs": 64, "targets": 14}, split="validation", shuffle=False
        ).as_numpy_iterator()
      )
    assert pairs and all(len(p["inputs"]) <= 64 for p in pairs)
    # The environment form tells a materialised directory by its manifest.
    tasks = seqio_tasks.register_from_environment(
      {seqio_tasks.SELECTIONS_ENV: f"materialized_test={output}"}
    )
    assert tasks == [task]
  finally:
    seqio.TaskRegistry.remove(task.name)


def _materialize_train(selection, output, root, **settings):
  """`materialize` of the train split of `root`'s corpus by url, 2 reads."""
  return materialize.materialize(
    selection,
    output,
    corpus=str(root / "train.jsonl"),
    validation_corpus=None,
    id_field="url",
    num_reads=2,
    pipeline_args=_BEAM,
    **settings,
  )


def test_missing_ids_are_an_error(corpus, tmp_path):
  root, train, _ = corpus
  ids = [train[0]["url"], "https://not.in/corpus"]
  selection = _selection(tmp_path / "sel", ids)
  output = str(tmp_path / "out")
  with pytest.raises(ValueError, match="1 of 2 selected ids are not in"):
    _materialize_train(selection, output, root)
  assert not os.path.exists(os.path.join(output, "manifest.json"))
  missing = tf.io.gfile.glob(os.path.join(output, "missing_ids*"))
  assert "".join(open(p).read() for p in missing).split() == [ids[1]]
  manifest = _materialize_train(
    selection, str(tmp_path / "out2"), root, allow_missing=True
  )
  assert manifest["splits"] == {
    "train": {"file_pattern": "train.tfrecord-*", "num_examples": 1}
  }


def test_validation_spec():
  spec = materialize._validation_spec
  assert spec("tfds:c4/en:3.1.0", "auto") == "tfds:c4/en:3.1.0:validation"
  assert spec("tfds:c4/en", "auto") == "tfds:c4/en:validation"
  assert spec("/data/*.jsonl", "auto") is None
  assert spec("tfds:c4/en:3.1.0", "") is None
  assert spec("a.jsonl", "b.jsonl") == "b.jsonl"


def test_materialize_reads_and_writes_gcs(corpus, tmp_path, gcs_dir):
  """Selection in, TFRecords and manifest out, on the Cloud Storage
  emulator: Beam's own gcsio for the records, `io.paths` for the rest."""
  root, train, _ = corpus
  chosen = train[::3]
  local = _selection(tmp_path / "sel", [r["url"] for r in chosen])
  selection = paths.join(gcs_dir, "sel")
  for name in os.listdir(local):
    with open(os.path.join(local, name), "rb") as f:
      paths.write_bytes(paths.join(selection, name), f.read())
  output = paths.join(gcs_dir, "out")
  manifest = _materialize_train(selection, output, root, num_shards=2)
  assert manifest == json.loads(paths.read_bytes(f"{output}/manifest.json"))
  assert manifest["splits"]["train"]["num_examples"] == len(chosen)
  records = sorted(paths.glob(f"{output}/train.tfrecord-*"))
  assert len(records) == 2
  for i, url in enumerate(records):
    (tmp_path / f"r{i}").write_bytes(paths.read_bytes(url))
  got = _read_examples(str(tmp_path / "r*"))
  assert sorted(got) == sorted((r["url"], r["text"]) for r in chosen)
