"""Tests for data_efficient.io.embeddings: shares and bad vectors."""

import numpy as np
import pytest

from data_efficient.io import embeddings, results


def _embed_dir(path, x):
  writer = results.ResultWriter(
    str(path), embeddings.schema(x.shape[1]), rows_per_shard=4,
    run_config={"stage": "embed"},
  )  # fmt: skip
  for start in range(0, len(x), 3):
    rows = range(start, min(len(x), start + 3))
    writer.write(
      {
        "id": [f"doc-{i}" for i in rows],
        "problem": [None] * len(rows),
        "n_tokens": np.ones(len(rows), np.int32),
        "truncated": np.zeros(len(rows), bool),
        "embedding": x[rows.start : rows.stop],
      }
    )
  writer.close()
  results.write_manifest(str(path), {"stage": "embed"})
  return str(path)


@pytest.mark.parametrize("kind", ["dir", "npy"])
def test_shares_read_their_rows_and_a_nan_names_its_id_and_row(tmp_path, kind):
  x = np.arange(13 * 2, dtype=np.float32).reshape(13, 2)
  if kind == "dir":
    path, name = _embed_dir(tmp_path / "e", x), "doc-{}"
  else:
    path, name = str(tmp_path / "x.npy"), "{}"
    np.save(path, x)
  got = []
  for i in range(3):
    share = embeddings.share(path, i, 3)
    for ids, _, vectors in embeddings.iter_embeddings(path, 2, share):
      got.append((ids, vectors))
  assert [i for ids, _ in got for i in ids] == [
    name.format(i) for i in range(13)
  ]
  np.testing.assert_array_equal(np.concatenate([v for _, v in got]), x)
  x[9, 1] = np.inf
  path = _embed_dir(tmp_path / "bad", x) if kind == "dir" else path
  if kind == "npy":
    np.save(path, x)
  rows = embeddings.share(path, 2, 3)  # rows 8 .. 12
  with pytest.raises(ValueError, match=rf"id '{name.format(9)}' \(row 9\)"):
    list(embeddings.iter_embeddings(path, 2, rows))
