"""Tests for the TFDS reader, on c4/en:3.1.0 mocked without network or data.

`tfds.testing.mock_data` alone yields the same random examples for every
split and sub-split, which cannot test process shares. So the dataset's
metadata is written with two shards (4 + 7 examples) and `as_dataset_fn`
serves fixed examples for exactly the file instructions TFDS computes for
the requested (sub-)split.
"""

import collections
import contextlib
import os

import pytest

from data_efficient.io import tfds_corpus
from data_efficient.io.corpus import InputError, Record, open_corpus

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

_SHARD_LENGTHS = (4, 7)
_SPEC = "tfds:c4/en:3.1.0"


def _examples(texts=None, urls=None):
  count = sum(_SHARD_LENGTHS)
  urls = urls or [f"https://example.com/{i}".encode() for i in range(count)]
  texts = texts or [f"document {i}".encode() for i in range(count)]
  return [{"url": u, "text": t} for u, t in zip(urls, texts, strict=True)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A TFDS data_dir holding c4/en:3.1.0 metadata (two train shards)."""
  root = str(tmp_path_factory.mktemp("tfds"))
  # Under the mock, builders use the mock's data_dir: pass ours explicitly,
  # else the metadata would be written into the tfds package.
  with tfds.testing.mock_data(data_dir=root):
    builder = tfds.builder("c4/en:3.1.0", data_dir=root)
    template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir,
      dataset_name="c4",
      split="train",
      filetype_suffix="tfrecord",
    )
    split = tfds.core.SplitInfo(
      name="train",
      shard_lengths=list(_SHARD_LENGTHS),
      num_bytes=0,
      filename_template=template,
    )
    builder.info.set_splits(tfds.core.SplitDict([split]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
  return root


@contextlib.contextmanager
def _mocked(data_dir, examples):
  """Serves `examples` as the train split, honouring sub-split slicing."""
  starts = [sum(_SHARD_LENGTHS[:i]) for i in range(len(_SHARD_LENGTHS))]

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del decoders, read_config, kwargs
    rows = []
    for instruction in self.info.splits[split].file_instructions:
      shard = int(str(instruction.filename).split("-")[-3])
      first = starts[shard] + instruction.skip
      rows += examples[first : first + instruction.take]
    features = {k: [row[k] for row in rows] for k in ("url", "text")}
    features["timestamp"] = [b"2019-04-25T12:57:54Z"] * len(rows)
    return tf.data.Dataset.from_tensor_slices(
      {
        k: tf.constant(v, tf.string, shape=[len(rows)])
        for k, v in features.items()
      }
    )

  with tfds.testing.mock_data(
    policy=tfds.testing.MockPolicy.USE_FILES,
    as_dataset_fn=as_dataset,
    data_dir=data_dir,
  ):
    yield


def test_ids_are_urls_and_version_is_recorded(data_dir):
  examples = _examples()
  with _mocked(data_dir, examples):
    corpus = open_corpus(_SPEC, data_dir=data_dir)
    records = list(corpus.records())
    description = corpus.describe()
  assert records == [
    Record(e["url"].decode(), e["text"].decode(), None, "train", i)
    for i, e in enumerate(examples)
  ]
  assert corpus.stats == collections.Counter(records=len(examples))
  assert description["kind"] == "tfds"
  assert description["name"] == "c4/en"
  assert description["version"] == "3.1.0"
  assert description["split"] == "train"
  assert description["id_field"] == "url"


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_shares_are_disjoint_cover_the_split_and_resume(
  data_dir, process_count
):
  examples = _examples()
  with _mocked(data_dir, examples):
    corpus = open_corpus(_SPEC, data_dir=data_dir)
    shares = [
      list(corpus.records(i, process_count)) for i in range(process_count)
    ]
    # Contiguous slices of the split, sizes differing by at most one.
    assert [r for share in shares for r in share] == list(
      open_corpus(_SPEC, data_dir=data_dir).records()
    )
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    for index, share in enumerate(shares):
      for start in (1, len(share) - 1, len(share) + 2):
        assert (
          list(corpus.records(index, process_count, start)) == share[start:]
        )
        assert corpus.stats["records"] == len(share[start:])
    fast = open_corpus(_SPEC, data_dir=data_dir, check_duplicates=False)
    assert list(fast.records(0, process_count, 2)) == shares[0][2:]
    assert fast.stats["skipped"] == 2
    assert not list(fast.records(0, process_count, 99))
    assert fast.stats["skipped"] == len(shares[0])


def test_shares_are_whole_blocks(data_dir, check_block_shares):
  examples = _examples()
  with _mocked(data_dir, examples):
    corpus = open_corpus(_SPEC, data_dir=data_dir)
    whole = check_block_shares(
      lambda i, n, start: list(corpus.records(i, n, start, block_size=3)),
      block_size=3,
    )
    assert [r.block for r in whole] == [i // 3 for i in range(len(examples))]
    # 4 blocks (3 + 3 + 3 + 2 examples) for 5 processes: one has none.
    sizes = [len(list(corpus.records(i, 5, block_size=3))) for i in range(5)]
    assert sizes == [0, 3, 3, 3, 2]
    # Known from the split's metadata, without reading (the progress ETA).
    assert [corpus.share_size(i, 5, block_size=3) for i in range(5)] == sizes
    # Sub-splits, concatenated: blocks count from their own first example.
    sub = open_corpus(_SPEC, data_dir=data_dir, split="train[1:4]+train[6:]")
    shares = [list(sub.records(i, 2, block_size=3)) for i in range(2)]
  assert [r.id for share in shares for r in share] == [
    e["url"].decode() for e in examples[1:4] + examples[6:]
  ]
  blocks = [r.block for share in shares for r in share]
  assert blocks == [0, 0, 0, 1, 1, 1, 2, 2]
  assert [len(share) for share in shares] == [3, 5]
  assert [sub.share_size(i, 2, block_size=3) for i in range(2)] == [3, 5]


@pytest.mark.parametrize("block_size", [1, 3, 8])
@pytest.mark.parametrize("num_examples", [0, 1, 11, 24])
def test_share_ranges_are_even_runs_of_whole_blocks(num_examples, block_size):
  for count in range(1, 7):
    ranges = [
      tfds_corpus.share_range(num_examples, i, count, block_size)
      for i in range(count)
    ]
    ends = [0] + [end for _, end in ranges]
    assert [first for first, _ in ranges] == ends[:-1]  # Contiguous.
    assert ends[-1] == num_examples
    assert all(e % block_size == 0 for e in ends[:-1] if e < num_examples)
    blocks = [-(-(end - first) // block_size) for first, end in ranges]
    assert max(blocks) - min(blocks) <= 1


def test_parse_spec():
  assert tfds_corpus.parse_tfds_spec("tfds:c4/en:3.1.0") == (
    "c4/en",
    "3.1.0",
    None,
  )
  assert tfds_corpus.parse_tfds_spec("tfds:c4/en:3.1.0:train[:10]") == (
    "c4/en",
    "3.1.0",
    "train[:10]",
  )
  assert tfds_corpus.parse_tfds_spec("tfds:c4/en:validation") == (
    "c4/en",
    None,
    "validation",
  )
  with pytest.raises(InputError, match="no dataset name"):
    tfds_corpus.parse_tfds_spec("tfds:")
  with pytest.raises(InputError, match="give the split once"):
    open_corpus("tfds:c4/en:3.1.0:train", split="validation")


def test_hostile_examples_raise_or_are_marked(data_dir):
  texts = [f"document {i}".encode() for i in range(sum(_SHARD_LENGTHS))]
  urls = [f"https://example.com/{i}".encode() for i in range(len(texts))]
  texts[2] = b"bad \xff byte"
  texts[3] = b"   "
  urls[6] = urls[1]  # A duplicate url, across the two TFDS shards.
  with _mocked(data_dir, _examples(texts, urls)):
    with pytest.raises(
      InputError,
      match=r"tfds c4/en:3.1.0 split 'train' example 2 .*invalid",
    ):
      list(open_corpus(_SPEC, data_dir=data_dir).records())
    corpus = open_corpus(_SPEC, data_dir=data_dir, on_error="mark")
    records = list(corpus.records())
    assert [r.problem for r in records] == (
      [
        None,
        None,
        "invalid_utf8",
        "whitespace",
        None,
        None,
        "duplicate_id",
      ]
      + [None] * 4
    )
    assert records[2].text == "bad \ufffd byte"
    assert corpus.stats == collections.Counter(
      records=11, invalid_utf8=1, whitespace=1, duplicate_id=1
    )
    # Resuming past the first copy of the url still marks the second.
    assert list(corpus.records(start=5)) == records[5:]


def test_unknown_feature_is_a_clear_error(data_dir):
  with _mocked(data_dir, _examples()):
    corpus = open_corpus(_SPEC, data_dir=data_dir, text_field="body")
    with pytest.raises(InputError, match="no text feature 'body'"):
      corpus.describe()
