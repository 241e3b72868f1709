"""Embedding shards: the `embed` stage's output format, read and written.

An embeddings directory is a results directory (`results`) whose rows carry
`(id, problem, n_tokens, truncated, embedding)`, the embedding a fixed-size
list column (float32, or float16 to halve the disk). Density and clustering
stream it back in batches; a plain `.npy` float matrix [N, d] made elsewhere
is read too (ids are then the row numbers).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from data_efficient.io import paths, results

EMBEDDING_COLUMN = "embedding"


def schema(dim: int, storage_dtype: str = "float32"):
  """Row schema of an embeddings directory."""
  import pyarrow as pa

  value = pa.float16() if storage_dtype == "float16" else pa.float32()
  return results.token_row_schema((EMBEDDING_COLUMN, pa.list_(value, dim)))


def iter_embeddings(
  path: str, batch_rows: int = 65_536, rows: range | None = None
) -> Iterator[tuple[list[str], list[str | None], np.ndarray]]:
  """Streams (ids, problems, float32 [rows, dim]) from an embed directory.

  A plain `.npy` float matrix [N, d] made elsewhere is accepted too; its ids
  are the row numbers and it has no problems.

  `rows` reads only those rows (a range of step 1, e.g. a process's
  `share(path, ...)`).

  Raises:
    ValueError: on a matrix that is not 2-D float, mixed widths, or a
      vector holding NaN or inf (naming its id and row).
  """
  if path.endswith(".npy"):
    matrix = _load_npy(path)
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
      raise ValueError(
        f"{path}: expected a 2-D float matrix [N, d], got "
        f"{matrix.dtype} {matrix.shape}."
      )
    rows = range(len(matrix)) if rows is None else rows
    for start in range(rows.start, rows.stop, batch_rows):
      stop = min(rows.stop, len(matrix), start + batch_rows)
      ids = [str(i) for i in range(start, stop)]
      vectors = np.asarray(matrix[start:stop], np.float32)
      _check_finite(path, ids, vectors, start)
      yield ids, [None] * len(ids), vectors
    return
  width = None
  row = 0 if rows is None else rows.start
  columns = ["id", "problem", EMBEDDING_COLUMN]
  for batch in results.iter_results(
    path, columns=columns, batch_rows=batch_rows, rows=rows
  ):
    column = batch.column(2)
    dim = column.type.list_size
    if width is not None and dim != width:
      raise ValueError(f"{path}: embedding widths differ ({width} vs {dim}).")
    width = dim
    flat = column.flatten().to_numpy(zero_copy_only=False)
    vectors = flat.reshape(-1, dim).astype(np.float32)
    ids = batch.column(0).to_pylist()
    _check_finite(path, ids, vectors, row)
    row += len(ids)
    yield ids, batch.column(1).to_pylist(), vectors


def _check_finite(
  path: str, ids: list[str], vectors: np.ndarray, first_row: int
) -> None:
  """Raises naming the first row of a batch that holds NaN or inf."""
  if not np.isfinite(vectors).all():
    bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
    raise ValueError(
      f"{path}: the embedding of id {ids[bad]!r} (row {first_row + bad}) "
      "contains NaN or inf; recompute or drop it."
    )


def _load_npy(path: str) -> np.ndarray:
  """A `.npy` matrix: memory-mapped if local, read whole if remote."""
  if not paths.is_remote(path):
    return np.load(path, mmap_mode="r")
  with paths.open_file(path) as f:
    return np.load(f, allow_pickle=False)


def read_embeddings(path: str) -> tuple[list[str], np.ndarray]:
  """All (ids, float32 [N, dim]) of an embed directory or `.npy` file."""
  ids, parts = [], []
  for batch_ids, _, vectors in iter_embeddings(path):
    ids += batch_ids
    parts.append(vectors)
  if not parts:
    raise ValueError(f"{path}: no embeddings.")
  return ids, np.concatenate(parts)


def stored_dtype(path: str) -> np.dtype:
  """float16 where `path` stores its embeddings as float16 (an embed
  directory's first shard, or a `.npy` matrix), else float32: the narrowest
  dtype that holds what `iter_embeddings` yields from it exactly."""
  if path.endswith(".npy"):
    dtype = _load_npy(path).dtype
  else:
    import pyarrow.parquet as pq

    manifest = results.read_manifest(path)
    if not manifest["shards"]:
      return np.dtype(np.float32)
    first = paths.join(path, manifest["shards"][0]["file"])
    with paths.open_file(first) as f:
      column = pq.read_schema(f).field(EMBEDDING_COLUMN)
    dtype = np.dtype(column.type.value_type.to_pandas_dtype())
  return np.dtype(np.float16 if dtype == np.float16 else np.float32)


def share(path: str, process_index: int, process_count: int) -> range:
  """This process's rows of `path` (`results.share` of its row count)."""
  return results.share(num_rows(path), process_index, process_count)


def num_rows(path: str) -> int:
  """Rows of an embed directory (its manifest) or `.npy` matrix."""
  if path.endswith(".npy"):
    return int(_load_npy(path).shape[0])
  return int(results.read_manifest(path)["num_rows"])
