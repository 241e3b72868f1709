"""Tests for reading `datasets.Dataset.save_to_disk` directories."""

import json
import os
import subprocess
import sys

import pytest

from data_efficient.io.corpus import InputError, Record, open_corpus

datasets = pytest.importorskip("datasets")

_ROWS = 2100  # `save_to_disk` writes batches of 1000 rows: 1000, 1000, 100.


def _dataset(rows):
  return datasets.Dataset.from_dict(
    {
      "text": [f"doc {i}" for i in range(rows)],
      "id": [f"u{i}" for i in range(rows)],
    }
  )


@pytest.fixture
def saved(tmp_path):
  path = str(tmp_path / "ds")
  _dataset(_ROWS).save_to_disk(path)
  return path


def test_rows_in_dataset_order_with_file_row_ids(tmp_path):
  path = str(tmp_path / "ds")
  dataset = _dataset(300)
  dataset.save_to_disk(path, num_shards=2)
  corpus = open_corpus(path)
  records = list(corpus.records())
  assert [r.text for r in records] == dataset["text"]
  assert [r.id for r in records[149:151]] == [
    "data-00000-of-00002.arrow:149",
    "data-00001-of-00002.arrow:0",
  ]
  assert [r.id for r in open_corpus(path, id_field="id").records()] == (
    dataset["id"]
  )
  description = corpus.describe()
  assert json.loads(json.dumps(description)) == description
  assert description["kind"] == "hf_dataset"
  assert description["fingerprint"] == dataset._fingerprint


@pytest.mark.parametrize("share", ["files", "records"])
def test_shares_are_whole_blocks_and_sized(saved, check_block_shares, share):
  corpus = open_corpus(saved, share=share, id_field="id")
  whole = check_block_shares(
    lambda i, n, start: list(corpus.records(i, n, start, block_size=400)),
    block_size=400,
  )
  assert len(whole) == _ROWS
  # Batches of 1000 are cut into blocks of 400, 400, 200; 100 is one block.
  assert len({r.block for r in whole}) == 7
  for count in (2, 3):
    sizes = [corpus.share_size(i, count, 400) for i in range(count)]
    assert sizes == [
      len(list(corpus.records(i, count, block_size=400))) for i in range(count)
    ]


def test_truncated_arrow_file_raises_or_marks_the_rest(saved):
  path = os.path.join(saved, "data-00000-of-00001.arrow")
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[: len(data) * 97 // 100])  # Inside the third batch.
  with pytest.raises(InputError) as error:
    list(open_corpus(saved).records())
  message = str(error.value)
  assert message.startswith(
    f"{path} row 2000: cannot read the file from this row on: "
  )
  assert "(read_error)" in message
  corpus = open_corpus(saved, on_error="mark")
  records = list(corpus.records())
  assert [r.text for r in records[:2000]] == [f"doc {i}" for i in range(2000)]
  assert records[2000:] == [
    Record(
      "data-00000-of-00001.arrow:2000",
      "",
      "read_error",
      "data-00000-of-00001.arrow",
      (0, 2000),
    )
  ]
  assert corpus.share_size() == 2001


def test_dataset_dict_names_its_splits(tmp_path):
  path = str(tmp_path / "dd")
  datasets.DatasetDict(
    {"train": _dataset(3), "test": _dataset(2)}
  ).save_to_disk(path)
  with pytest.raises(
    InputError, match=r"DatasetDict \(splits \['train', 'test'\]"
  ):
    open_corpus(path)
  assert len(list(open_corpus(os.path.join(path, "test")).records())) == 2


def test_missing_data_file_is_an_incomplete_save(saved):
  os.remove(os.path.join(saved, "data-00000-of-00001.arrow"))
  with pytest.raises(InputError, match="the save is incomplete"):
    open_corpus(saved)


def test_reading_does_not_import_datasets(saved):
  code = (
    "import sys; from data_efficient.io.corpus import open_corpus; "
    f"n = len(list(open_corpus({saved!r}).records())); "
    "assert 'datasets' not in sys.modules; print(n)"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True
  )
  assert out.stdout.strip() == str(_ROWS)
