"""Checkpoint files, local or gs://: joining, existence, reading, writing.

Local paths go through the standard library; gs:// paths through
TensorStore's key-value stores (imported on use), which T5X's zarr arrays and
Orbax read through as well.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from data_efficient.models.checkpoints.errors import CheckpointError

_GCS = re.compile(r"^gs://([^/]+)/?(.*)$", re.DOTALL)


def is_gcs(path: str) -> bool:
  """Whether `path` is a gs:// URL."""
  return _GCS.match(path) is not None


def join(directory: str, name: str) -> str:
  """`directory/name` (`directory` itself for an empty name)."""
  return f"{directory.rstrip('/')}/{name}" if name else directory


def kvstore(path: str) -> dict[str, Any]:
  """TensorStore kvstore spec for `path`: 'gcs' for gs://, else 'file'."""
  match = _GCS.match(path)
  if match:
    return {"driver": "gcs", "bucket": match[1], "path": match[2]}
  return {"driver": "file", "path": os.path.abspath(path)}


def _gcs_store(path: str):
  """(TensorStore KvStore of the bucket, key of `path` in it)."""
  import tensorstore as ts

  spec = kvstore(path)
  key = spec.pop("path")
  return ts.KvStore.open(spec).result(), key


def exists(path: str) -> bool:
  """Whether the file `path` exists."""
  if not is_gcs(path):
    return os.path.isfile(path)
  store, key = _gcs_store(path)
  return store.read(key).result().state == "value"


def read_bytes(path: str | os.PathLike) -> bytes:
  """The contents of the file `path`.

  Raises:
    FileNotFoundError: if a local `path` does not exist.
    CheckpointError: if a gs:// `path` does not exist.
  """
  path = os.fspath(path)
  if not is_gcs(path):
    with open(path, "rb") as f:
      return f.read()
  store, key = _gcs_store(path)
  result = store.read(key).result()
  if result.state != "value":
    raise CheckpointError(f"{path}: no such file.")
  return bytes(result.value)


def read_json(path: str | os.PathLike) -> Any:
  """The JSON value in the file `path`.

  Raises:
    CheckpointError: if the file is missing or is not valid JSON.
  """
  try:
    return json.loads(read_bytes(path))
  except FileNotFoundError:
    raise CheckpointError(f"{os.fspath(path)}: no such file.") from None
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{os.fspath(path)}: not valid JSON ({e}).") from None


def write_bytes(file: str, data: bytes) -> None:
  """Writes `file` atomically (local: rename; gs://: one object PUT)."""
  if is_gcs(file):
    store, key = _gcs_store(file)
    store.write(key, data).result()
    return
  tmp = f"{file}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, file)
