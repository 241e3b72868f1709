"""Orbax checkpoints of long reductions (RACE pass 1, k-means), resumable.

A reduction that streams a whole corpus (the sketch's counts, k-means
centroids) saves its state every so often, so that a killed run resumes from
the last save instead of from the start:

  <directory>/<step>/state/      the arrays (Orbax PyTree, OCDBT)
  <directory>/<step>/progress/   a JSON progress record (rows added,
                                 iteration, the run's settings)

`step` is the amount of work done (rows added, iterations), so the latest
checkpoint is the one with the largest step. Orbax's CheckpointManager writes
each step into a temporary directory and renames it when both items are
complete, so a run killed while saving leaves only a temporary directory,
which is never listed: restoring takes the last *complete* step. A complete
step whose files were later damaged is not skipped silently: restoring it
raises `CheckpointError` (the one of `models/checkpoints`) naming the step
directory, so the user deletes it and the run resumes from the one before
(the last `max_to_keep` are kept).

The progress record carries the run's settings (`config`); restoring under
other settings is an error, so a checkpoint never seeds the wrong reduction.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

from data_efficient.io import paths, results
from data_efficient.models.checkpoints import errors
from data_efficient.models.checkpoints.errors import CheckpointError

STATE, PROGRESS = "state", "progress"


class StateCheckpointer:
  """Saves and restores (array pytree, progress record) pairs by step.

  Usage:

    ckpt = StateCheckpointer(out / "sketch_checkpoints", config=settings)
    if (latest := ckpt.restore_latest(abstract_state)) is not None:
      state, progress = latest
    ...
    ckpt.save(rows_added, state, {"rows_added": rows_added})
    ckpt.close()

  Saves are synchronous: `save` returns once the step directory is final,
  so a process killed right after it resumes from that step.
  """

  def __init__(
    self,
    directory: str | os.PathLike[str],
    *,
    config: Mapping[str, Any] | None,
    max_to_keep: int = 2,
  ):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: Directory (local or gs://) holding one subdirectory per
        step.
      config: JSON-able settings of the run; stored with every step and
        checked on restore. None checks nothing (to inspect a checkpoint
        written by another run).
      max_to_keep: Complete steps kept; older ones are deleted after a save.
    """
    ocp = errors.import_orbax()
    directory = os.fspath(directory)
    self.directory = (
      directory if paths.is_remote(directory) else os.path.abspath(directory)
    )
    self.config = None
    if config is not None:
      self.config = results._jsonable(dict(config), "checkpoint config")
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      enable_async_checkpointing=False,
      create=True,
      # Temporary directories of killed saves are removed on open.
      cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=(STATE, PROGRESS)
    )

  def steps(self) -> list[int]:
    """Steps with a complete checkpoint, ascending."""
    self._manager.reload()  # another process may have saved since
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(
    self, step: int, state: Any, progress: Mapping[str, Any] | None = None
  ) -> None:
    """Writes checkpoint `step` (returns once it is complete on disk).

    Args:
      step: Work done so far (rows, iterations); larger than earlier steps.
      state: Pytree of arrays (jax or NumPy).
      progress: JSON-able record; the run's `config` is added under
        'config'.
    """
    ocp = errors.import_orbax()
    record = dict(results._jsonable(dict(progress or {}), "progress"))
    record["config"] = self.config
    record["step"] = int(step)
    self._manager.save(
      int(step),
      args=ocp.args.Composite(
        **{
          STATE: ocp.args.StandardSave(state),
          PROGRESS: ocp.args.JsonSave(record),
        }
      ),
      force=True,
    )
    self._manager.wait_until_finished()

  def restore(self, step: int, abstract_state: Any = None) -> tuple[Any, dict]:
    """(state, progress) of checkpoint `step`.

    Args:
      step: A step from `steps()`.
      abstract_state: Pytree of `jax.ShapeDtypeStruct` (with shardings) or
        arrays giving the structure, shapes and placement of the state;
        None restores it as stored (arrays on the default device).

    Raises:
      CheckpointError: if the step is damaged, or was written by a run
        with other settings.
    """
    ocp = errors.import_orbax()
    where = paths.join(self.directory, str(step))
    abstract = None
    if abstract_state is not None:
      abstract = jax.tree.map(_abstract, abstract_state)
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          **{
            STATE: ocp.args.StandardRestore(abstract),
            PROGRESS: ocp.args.JsonRestore(),
          }
        ),
      )
    except Exception as e:  # Orbax/TensorStore raise many unrelated types
      earlier = [s for s in self.steps() if s < step]
      fallback = (
        f"resume from step {earlier[-1]}"
        if earlier
        else "start from the beginning"
      )
      raise CheckpointError(
        f"{where}: checkpoint is damaged ({errors.cause(e)}). Delete this "
        f"directory to {fallback}."
      ) from None
    progress = restored[PROGRESS]
    if not isinstance(progress, dict):
      raise CheckpointError(f"{where}: the progress record is not an object.")
    if self.config is not None and progress.get("config") != self.config:
      diffs = results._differences(progress.get("config"), self.config)
      raise CheckpointError(
        f"{where}: written by a run with other settings "
        f"({'; '.join(diffs)}); delete {self.directory} or use the old "
        "settings."
      )
    return restored[STATE], progress

  def restore_latest(
    self, abstract_state: Any = None
  ) -> tuple[Any, dict] | None:
    """`restore` of the latest complete step, or None if there is none."""
    step = self.latest_step()
    return None if step is None else self.restore(step, abstract_state)

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> StateCheckpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _abstract(leaf: Any) -> Any:
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  sharding = getattr(leaf, "sharding", None)
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
