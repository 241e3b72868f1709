"""A quiet terminal: TensorFlow's C++ start-up lines only with --verbose.

TensorFlow (2.21 here) logs its start-up lines through absl before
`absl::InitializeLog()` runs, and those ignore TF_CPP_MIN_LOG_LEVEL: "All log
messages before absl::InitializeLog() is called are written to STDERR",
"oneDNN custom operations are on", "Could not find cuda drivers". So
`quiet_native_logs` does two things before any stage imports TensorFlow: it
sets TF_CPP_MIN_LOG_LEVEL (later C++ lines, e.g. "failed call to cuInit"),
and it wraps TensorFlow's first import so that file descriptor 2 goes to a
temporary file meanwhile; every captured line except those start-up lines is
then written back to stderr, so real warnings and errors still show.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

# absl's C++ log lines (severity, MMDD, time, thread, file:line]) and its
# warning that they go to stderr.
_ABSL_LINE = re.compile(
  rb"^[IWE]\d{4} [\d:.]+ +\d+ [\w.\-]+:\d+\] |"
  rb"^WARNING: All log messages before absl::InitializeLog\(\)"
)
# TensorFlow's C++ log threshold without --verbose: 3 hides its INFO,
# WARNING and ERROR lines (errors that matter reach Python as exceptions).
_QUIET_LEVEL = "3"


def quiet_native_logs() -> None:
  """Hides TensorFlow's C++ start-up lines in this process (idempotent).

  Call before TensorFlow is imported; a TF_CPP_MIN_LOG_LEVEL already set is
  kept.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", _QUIET_LEVEL)
  if "tensorflow" in sys.modules:
    return
  if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
  """Finds `tensorflow` once, with a loader that filters its stderr."""

  def find_spec(self, fullname, path, target=None):
    del path, target
    if fullname != "tensorflow":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(fullname)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader)
    return spec


class _QuietLoader(importlib.abc.Loader):
  """Runs a module's loader with its start-up log lines filtered out."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    # The module keeps its real loader (importlib set ours).
    module.__loader__ = module.__spec__.loader = self._loader
    with _without_startup_lines():
      self._loader.exec_module(module)


@contextlib.contextmanager
def _without_startup_lines():
  """Captures file descriptor 2; writes back all but absl's log lines."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured if not _ABSL_LINE.match(line)]
      if kept:
        sys.stderr.buffer.write(b"".join(kept))
        sys.stderr.flush()
