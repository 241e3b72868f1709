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

In a multi-process job Orbax's CheckpointManager saves one global state by
default: every process takes part in every save (barriers), and process 0
alone writes what is not sharded. A reduction whose processes each hold a
partial state of their own (the sketch's partial counts) opens its own
directory per process with `process_local=True`: each process then saves
and restores by itself, at its own steps, as Orbax's per-host local
checkpoints do (`primary_host=None`, `active_processes` this process only,
an array handler with no primary host), its arrays held as its row of a
[process_count, ...] global array (`sharding.process_row`), since Orbax
refuses host-local arrays in a multi-process job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

from data_efficient import sharding
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
    process_local: bool = False,
  ):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: Directory (local or gs://) holding one subdirectory per
        step.
      config: JSON-able settings of the run; stored with every step and
        checked on restore. None checks nothing (to inspect a checkpoint
        written by another run).
      max_to_keep: Complete steps kept; older ones are deleted after a save.
      process_local: In a multi-process job, the state is this process's
        own: it saves and restores independently of the other processes,
        into `directory`, which must be this process's alone; it is
        restored by the same process of a job of the same size, and only
        with an `abstract_state`. No effect in a single process.
    """
    ocp = errors.import_orbax()
    directory = os.fspath(directory)
    self.directory = (
      directory if paths.is_remote(directory) else os.path.abspath(directory)
    )
    self.config = None
    if config is not None:
      self.config = results._jsonable(dict(config), "checkpoint config")
    self._local = process_local and jax.process_count() > 1
    items, processes = {"item_names": (STATE, PROGRESS)}, {}
    if self._local:
      # Orbax does not create the directory when `active_processes` is set.
      paths.makedirs(self.directory)
      processes = {"multiprocessing_options": _this_process_only(ocp)}
      items = {"item_handlers": _process_local_handlers(ocp, **processes)}
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      enable_async_checkpointing=False,
      create=not self._local,
      # Temporary directories of killed saves are removed on open.
      cleanup_tmp_directories=True,
      **processes,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, **items
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
    if self._local:
      arrays = ocp.args.PyTreeSave(jax.tree.map(sharding.process_row, state))
    else:
      arrays = ocp.args.StandardSave(state)
    self._manager.save(
      int(step),
      args=ocp.args.Composite(
        **{STATE: arrays, PROGRESS: ocp.args.JsonSave(record)}
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
        None restores it as stored (arrays on the default device). A
        process-local state is restored to this process's first device.

    Raises:
      CheckpointError: if the step is damaged, or was written by a run
        with other settings.
      ValueError: for a process-local state without `abstract_state`.
    """
    ocp = errors.import_orbax()
    where = paths.join(self.directory, str(step))
    abstract = None
    if abstract_state is not None:
      abstract = jax.tree.map(_abstract, abstract_state)
    if self._local:
      if abstract is None:
        raise ValueError(
          f"{where}: a process-local state is restored with an "
          "abstract_state (its structure and shapes)."
        )
      abstract = jax.tree.map(_process_row_abstract, abstract)
      arrays = ocp.args.PyTreeRestore(
        abstract,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      )
    else:
      arrays = ocp.args.StandardRestore(abstract)
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          **{STATE: arrays, PROGRESS: ocp.args.JsonRestore()}
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
    state = restored[STATE]
    if self._local:  # This process's row, on its first device.
      state = jax.tree.map(lambda x: x.addressable_data(0)[0], state)
    return state, progress

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


def _this_process_only(ocp):
  """Orbax multiprocessing options of a process-local state: no primary
  host (this process writes everything of its own) and this process alone
  in every barrier (Orbax then skips them), as Orbax sets up its per-host
  local checkpoints (`experimental.emergency`)."""
  index = jax.process_index()
  return ocp.options.MultiprocessingOptions(
    primary_host=None,
    active_processes={index},
    barrier_sync_key_prefix=f"process-{index}",
  )


def _process_local_handlers(ocp, multiprocessing_options) -> dict[str, Any]:
  """The items' handlers of a process-local state: arrays written by the
  process that holds them, not by a primary host."""
  arrays = ocp.type_handlers.create_type_handler_registry(
    (
      jax.Array,
      ocp.type_handlers.ArrayHandler(
        primary_host=None, replica_id=None, use_replica_parallel=False
      ),
    )
  )
  return {
    STATE: ocp.PyTreeCheckpointHandler(
      multiprocessing_options=multiprocessing_options,
      type_handler_registry=arrays,
    ),
    PROGRESS: ocp.JsonCheckpointHandler(
      multiprocessing_options=multiprocessing_options
    ),
  }


def _process_row_abstract(leaf: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  """The [process_count, ...] global form of a process-local leaf."""
  return jax.ShapeDtypeStruct(
    (jax.process_count(), *leaf.shape),
    leaf.dtype,
    sharding=sharding.process_rows_sharding(),
  )


def _abstract(leaf: Any) -> Any:
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  sharding = getattr(leaf, "sharding", None)
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
