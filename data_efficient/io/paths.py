"""Local paths and gs:// URLs, through one filesystem library.

Every file the package reads or writes goes through here: local paths through
the standard library, URLs (gs://, and file:// in tests) through fsspec,
whose gcsfs backend talks to Cloud Storage (retrying 5xx and 429 answers
with backoff) and honours `STORAGE_EMULATOR_HOST`. fsspec is imported on
first use of a URL.

Writes are atomic for both: a local file is written beside its destination,
fsynced and renamed; a remote one is spooled to a local temporary file and
uploaded in one piece on success, as Cloud Storage creates an object only
when its upload completes, so a reader never sees part of a file.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any


def is_remote(path: str | os.PathLike[str]) -> bool:
  """Whether `path` is a URL (gs://, file://) rather than a local path."""
  return "://" in os.fspath(path)


def join(directory: str | os.PathLike[str], *names: str) -> str:
  """`directory/name/...`, for local paths and URLs alike."""
  return posixpath.join(os.fspath(directory), *names)


def _filesystem(path: str) -> Any:
  """The fsspec filesystem of URL `path`."""
  import fsspec  # Lazy: only URLs need it.

  # No listing cache: other processes write the same directories.
  fs, _ = fsspec.core.url_to_fs(path, use_listings_cache=False)
  return fs


def filesystem(path: str | os.PathLike[str]) -> Any:
  """The `filesystem=` argument pyarrow needs to read `path` (None: local)."""
  path = os.fspath(path)
  return _filesystem(path) if is_remote(path) else None


def _either(path: str | os.PathLike[str], method: str, local: Any) -> Any:
  """fsspec's `method` of a URL `path`, else `local(path)`."""
  path = os.fspath(path)
  if is_remote(path):
    return getattr(_filesystem(path), method)(path)
  return local(path)


def exists(path: str | os.PathLike[str]) -> bool:
  """Whether a file or directory `path` exists."""
  return _either(path, "exists", os.path.exists)


def isdir(path: str | os.PathLike[str]) -> bool:
  """Whether `path` is a directory (remote: a prefix of some objects)."""
  return _either(path, "isdir", os.path.isdir)


def isfile(path: str | os.PathLike[str]) -> bool:
  """Whether `path` is a file (an object)."""
  return _either(path, "isfile", os.path.isfile)


def size(path: str | os.PathLike[str]) -> int:
  """The size of file `path` in bytes."""
  return _either(path, "size", os.path.getsize)


def listdir(directory: str | os.PathLike[str]) -> list[str]:
  """Names of the entries of `directory` (files and subdirectories)."""
  directory = os.fspath(directory)
  if not is_remote(directory):
    return os.listdir(directory)
  fs = _filesystem(directory)
  return [posixpath.basename(p.rstrip("/")) for p in fs.ls(directory, False)]


def walk_files(root: str) -> list[str]:
  """Every file under directory `root`, relative to it ('/'-separated)."""
  if is_remote(root):
    fs = _filesystem(root)
    base = fs._strip_protocol(root).rstrip("/")
    return [p[len(base) :].lstrip("/") for p in fs.find(root)]
  found = []
  for dirpath, _, filenames in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root)
    for f in filenames:
      rel = f if rel_dir == "." else os.path.join(rel_dir, f)
      found.append(rel.replace(os.sep, "/"))
  return found


def glob(pattern: str) -> list[str]:
  """Paths matching `pattern` (`**` matches across directories)."""
  if not is_remote(pattern):
    import glob as glob_lib

    return glob_lib.glob(pattern, recursive=True)
  fs = _filesystem(pattern)
  return [fs.unstrip_protocol(p) for p in fs.glob(pattern)]


def makedirs(directory: str | os.PathLike[str]) -> None:
  """Creates `directory` and its parents (remote: nothing to create)."""
  directory = os.fspath(directory)
  if not is_remote(directory):
    os.makedirs(directory, exist_ok=True)


def remove(path: str | os.PathLike[str]) -> None:
  """Deletes file `path`."""
  path = os.fspath(path)
  if is_remote(path):
    _filesystem(path).rm_file(path)
  else:
    os.remove(path)


def rmtree(directory: str | os.PathLike[str]) -> None:
  """Deletes `directory` and everything under it, if it exists."""
  directory = os.fspath(directory)
  if not is_remote(directory):
    shutil.rmtree(directory, ignore_errors=True)
    return
  fs = _filesystem(directory)
  if fs.exists(directory):
    fs.rm(directory, recursive=True)


def open_file(path: str | os.PathLike[str], mode: str = "rb") -> IO[Any]:
  """Opens `path` for reading (`mode` 'rb' or 'r'); use `atomic_write` to
  write.

  Raises:
    FileNotFoundError: if there is no such file.
  """
  path = os.fspath(path)
  if mode not in ("rb", "r"):
    raise ValueError(f"mode={mode!r}: read with 'rb' or 'r'.")
  if is_remote(path):
    text = {"encoding": "utf-8"} if mode == "r" else {}
    return _filesystem(path).open(path, mode, **text)
  if mode == "r":
    return open(path, encoding="utf-8")
  return open(path, "rb", buffering=1 << 20)


def read_bytes(path: str | os.PathLike[str]) -> bytes:
  """The contents of file `path` (FileNotFoundError if there is none)."""
  with open_file(path) as f:
    return f.read()


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_write(
  path: str | os.PathLike[str], tmp_suffix: str = ".tmp"
) -> Iterator[IO[bytes]]:
  """Yields a binary file whose contents appear at `path` whole, or not at all.

  Local: written to `path + tmp_suffix`, fsynced, renamed over `path`, the
  directory fsynced. Remote: spooled to a local temporary file, uploaded once
  the block exits without an exception.

  Args:
    path: Destination file; its directory must exist (local).
    tmp_suffix: Suffix of the local temporary file; give concurrent writers
      of one path their own.
  """
  path = os.fspath(path)
  if is_remote(path):
    with tempfile.NamedTemporaryFile(suffix=tmp_suffix) as spool:
      yield spool
      spool.flush()
      _filesystem(path).put_file(spool.name, path)
    return
  tmp = path + tmp_suffix
  with open(tmp, "wb") as f:
    yield f
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _fsync_dir(os.path.dirname(path) or ".")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
  """Writes `data` to `path` atomically (`atomic_write`)."""
  with atomic_write(path) as f:
    f.write(data)


def local_copy(path: str | os.PathLike[str]) -> str:
  """`path` if local, else a local copy of the file or folder it names.

  For readers that only open local files (SentencePiece's loader, the
  `tokenizers` library, the BERT embedder's folder): a remote file or
  folder is downloaded once per process into a temporary directory that is
  removed when the process exits. Meant for small things (vocabularies,
  model folders of up to a few hundred MB).

  Raises:
    FileNotFoundError: if there is no such file or folder.
  """
  path = os.fspath(path)
  if not is_remote(path):
    return path
  if path in _LOCAL_COPIES:
    return _LOCAL_COPIES[path]
  fs = _filesystem(path)
  if not fs.exists(path):
    raise FileNotFoundError(f"{path}: no such file or folder.")
  root = tempfile.mkdtemp(prefix="data_efficient-")
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  local = os.path.join(root, posixpath.basename(path.rstrip("/")) or "copy")
  if fs.isdir(path):
    for rel in walk_files(path):
      target = os.path.join(local, *rel.split("/"))
      os.makedirs(os.path.dirname(target), exist_ok=True)
      fs.get_file(join(path, rel), target)
  else:
    fs.get_file(path, local)
  _LOCAL_COPIES[path] = local
  return local


_LOCAL_COPIES: dict[str, str] = {}  # URL -> its local copy, this process
