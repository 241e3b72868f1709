"""Checkpoint files, local or gs://: joining, existence, reading, writing.

Single files (configs, msgpack, safetensors) go through `io.paths` like every
other file; T5X's zarr arrays and Orbax read through TensorStore, whose
key-value store spec `kvstore` gives.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from data_efficient.io import paths as io_paths
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


def exists(path: str) -> bool:
  """Whether the file `path` exists."""
  return io_paths.isfile(path)


def read_bytes(path: str | os.PathLike) -> bytes:
  """The contents of the file `path`.

  Raises:
    FileNotFoundError: if `path` does not exist.
  """
  return io_paths.read_bytes(path)


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
  """Writes `file` atomically (local: rename; gs://: one upload)."""
  io_paths.write_bytes(file, data)
