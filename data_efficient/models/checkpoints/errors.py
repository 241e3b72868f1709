"""The one CheckpointError, and the Orbax glue shared with runs/snapshots.

Model checkpoints (this package) and the run-state snapshots of long
reductions (`runs/snapshots.py`) fail the same way and say so with the same
error. Nothing heavy is imported here (no flax, no Orbax at import time), so
that `runs/` can use it without loading the model readers.
"""

from __future__ import annotations

_MAX_CAUSE = 400  # characters of an Orbax/TensorStore error kept in messages


class CheckpointError(ValueError):
  """A checkpoint is missing, unreadable, or does not match what it is for.

  Raised for model checkpoints (every format of this package) and for the
  run-state snapshots of `runs/snapshots.py`; the message names the file or
  directory and says how to fix it.
  """


def import_orbax():
  """The `orbax.checkpoint` module, imported on first use (~1 s)."""
  import orbax.checkpoint as ocp

  return ocp


def cause(e: BaseException) -> str:
  """`e` on one line, shortened, for a CheckpointError's message."""
  text = f"{type(e).__name__}: {e}".replace("\n", " ")
  return text if len(text) <= _MAX_CAUSE else text[:_MAX_CAUSE] + " ..."
