"""The density stage: embeddings in, one density score per example out.

Streams an `embed` output directory (or a `.npy` matrix), computes either the
exact kernel sums (all embeddings held in host memory; for up to a few million
examples) or the RACE sketch's two passes (memory independent of N), and
writes `(id, problem, density)` shards plus a manifest, resumably: the exact
estimator and the sketch's pass 2 skip the query chunks already written, and
the sketch's pass 1 resumes from its last Orbax checkpoint of the counts
(`build_sketch`), so a rerun after a kill ends with identical counts.

It runs as one process or as a multi-process job (a pod's hosts, each with
`--distributed`), whose every process takes a contiguous share of the rows
(`embeddings.share`) and computes on its own devices: in pass 1 it counts its
share and the int32 counts are summed over the processes (`sharding.
process_sum`, exact), in pass 2 (and for the exact sums, against every row)
it scores its share and writes its own shards. A row's buckets and score
are computed from that row alone, whatever batch, device or process it
falls to, so the job writes the rows of a single process, bit for bit. Each
process checkpoints its own partial counts
(`SKETCH_CHECKPOINTS/process-PPPPP-of-NNNNN`) and resumes its own shards, so
rerunning the whole job after a process died resumes it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from data_efficient import sharding
from data_efficient.io import embeddings, paths
from data_efficient.runs import driver
from data_efficient.stages import configs
from data_efficient.stages.density import exact, kernels, sketch

# Subdirectory of a density output directory holding pass-1 checkpoints.
SKETCH_CHECKPOINTS = "sketch_checkpoints"


def sketch_checkpoint_dir(
  output: str, process_index: int, process_count: int
) -> str:
  """Where one process of a job saves its pass-1 counts: SKETCH_CHECKPOINTS
  itself for a single process, else its own subdirectory
  `process-PPPPP-of-NNNNN` (every process's counts are its own)."""
  where = paths.join(output, SKETCH_CHECKPOINTS)
  if process_count == 1:
    return where
  return paths.join(
    where, f"process-{process_index:05d}-of-{process_count:05d}"
  )


def resolve_bandwidth(
  path: str, config: configs.DensityConfig
) -> configs.DensityConfig:
  """`config` with its median kernel value and bandwidth set: as given, or
  the default rule on a seeded sample of the first batch (recorded in the
  manifest either way). The first batch of the whole input, whatever this
  process's share: every process of a job resolves the same bandwidth."""
  if config.median_kernel_value is None:
    value = kernels.default_kernel_value(config.kernel, config.hashes_per_row)
    config = dataclasses.replace(config, median_kernel_value=value)
  if config.bandwidth is not None:
    return config
  _, _, first = next(embeddings.iter_embeddings(path), (None, None, None))
  if first is None:
    raise ValueError(f"{path}: no embeddings.")
  width = kernels.default_bandwidth(
    first,
    config.kernel,
    hashes_per_row=config.hashes_per_row,
    median_kernel_value=config.median_kernel_value,
    seed=config.seed,
  )
  return dataclasses.replace(config, bandwidth=float(width))


def _with_last(iterable):
  """Yields (item, is_last) pairs."""
  iterator = iter(iterable)
  try:
    item = next(iterator)
  except StopIteration:
    return
  for following in iterator:
    yield item, False
    item = following
  yield item, True


def build_sketch(
  path: str,
  config: configs.DensityConfig,
  mesh,
  batch_rows: int = 65_536,
  *,
  rows: range | None = None,
  checkpoint_dir: str | None = None,
  checkpoint_every: int = 0,
  progress: bool = False,
) -> sketch.RaceSketch:
  """Pass 1: every embedding counted once in every row.

  In a multi-process job every process calls it with its own `rows` (a
  non-empty share), its local mesh and its own `checkpoint_dir`: it counts
  its rows, and the counts of all processes are summed (int32: exact), so
  each process returns the sketch of every row.

  With `checkpoint_dir`, this process's counts and the number of its rows
  added so far are saved there (Orbax, `runs.snapshots`) at the end of the
  first batch after every `checkpoint_every` rows, and once its rows are
  done; the hash parameters are not stored, as they follow from (seed,
  width, rows, buckets, dim), which the checkpoint records and checks. A
  rerun restores the latest checkpoint and counts only the rows after it
  (none, if its pass 1 had finished): counts are integers, so the result is
  identical to an uninterrupted pass.

  Args:
    path: An `embed` output directory or a `.npy` matrix.
    config: With its bandwidth resolved (`resolve_bandwidth`).
    mesh: This process's devices.
    batch_rows: Rows read per batch.
    rows: The rows to count (default: this process's share,
      `embeddings.share`; all of them in a single process).
    checkpoint_dir: This process's checkpoint directory; None saves none.
    checkpoint_every: Rows between checkpoints.
    progress: Print the resume to stderr.

  Raises:
    ValueError: on NaN/inf embeddings, mixed widths or no rows.
  """
  if rows is None:
    rows = embeddings.share(path, jax.process_index(), jax.process_count())
  state, ckpt = None, None
  added = resumed = seen = saved = 0
  # Each process counts alone; an error in its share stops every process.
  with sharding.all_or_none(f"sketch pass 1 over {path}"):
    for (_, _, vectors), last in _with_last(
      embeddings.iter_embeddings(path, batch_rows, rows)
    ):
      if state is None:
        state = sketch.init(
          vectors.shape[1],
          config.bandwidth,
          rows=config.rows,
          buckets=config.buckets,
          hashes_per_row=config.hashes_per_row,
          seed=config.seed,
        )
        if checkpoint_dir is not None:
          ckpt, restored = _open_checkpoint(
            checkpoint_dir, path, config, state, rows
          )
          if restored is not None:
            counts, record = restored
            state = dataclasses.replace(state, counts=counts)
            added = resumed = saved = record["rows_added"]
            if progress:
              print(
                f"density: resuming sketch pass 1 after {resumed} rows "
                f"({checkpoint_dir})",
                file=sys.stderr,
              )
            if record["complete"]:
              break
      n = len(vectors)
      seen += n
      if seen <= resumed:
        continue
      skip = max(0, resumed - (seen - n))
      state = sketch.add(state, vectors[skip:], mesh=mesh)
      added += n - skip
      if ckpt is not None and (
        last or (checkpoint_every and added - saved >= checkpoint_every)
      ):
        ckpt.save(
          added,
          {"counts": state.counts},
          {"rows_added": added, "complete": last},
        )
        saved = added
    if ckpt is not None:
      ckpt.close()
    if state is None:
      raise ValueError(f"{path}: no embeddings.")
  if jax.process_count() > 1:  # Every process's rows counted: exact sums.
    counts = sharding.process_sum(np.asarray(state.counts))
    state = dataclasses.replace(state, counts=jnp.asarray(counts))
  return state


def _open_checkpoint(directory: str, path: str, config, state, rows):
  """(checkpointer, latest (counts, record) or None) for pass 1."""
  from data_efficient.runs import snapshots

  settings = {
    "what": "race_sketch_pass1",
    "embeddings": path,
    "dim": state.dim,
    "width": state.width,
    "rows": config.rows,
    "buckets": config.buckets,
    "seed": config.seed,
  }
  if state.hashes_per_row != 1:  # Absent in (and equal to) K = 1 checkpoints.
    settings["hashes_per_row"] = state.hashes_per_row
  if jax.process_count() > 1:  # This process's share of the rows.
    settings["embedding_rows"] = [rows.start, rows.stop]
  ckpt = snapshots.StateCheckpointer(
    directory, config=settings, process_local=True
  )
  restored = ckpt.restore_latest({"counts": state.counts})
  if restored is None:
    return ckpt, None
  tree, record = restored
  return ckpt, (tree["counts"], record)


def density_scores(
  path: str,
  config: configs.DensityConfig,
  mesh: jax.sharding.Mesh,
  *,
  rows: range | None = None,
  start: int = 0,
  batch_rows: int = 65_536,
  progress: bool = True,
  checkpoint_dir: str | None = None,
  checkpoint_every: int = 0,
  record: dict | None = None,
) -> Iterator[tuple[list[str], list, np.ndarray]]:
  """Yields (ids, problems, density) batches of `rows`, in order, from
  `start`.

  Every process of a job scores its own rows: the sketch counts them in
  pass 1 and sums the counts over the processes (`build_sketch`); the exact
  sums take every row as keys.

  Args:
    path: An `embed` output directory or a `.npy` matrix.
    config: With its bandwidth resolved (`resolve_bandwidth`).
    mesh: This process's devices.
    rows: The rows to score (default: this process's share,
      `embeddings.share`; all of them in a single process).
    start: Rows of `rows` already written (resume): not scored again.
    batch_rows: Query rows per batch.
    progress: Print progress to stderr.
    checkpoint_dir: Sketch: where pass 1 saves and resumes this process's
      counts (see `build_sketch`); None disables checkpoints.
    checkpoint_every: Sketch: rows between pass-1 checkpoints.
    record: Exact: gets 'exact_form', the `exact.FORMS` entry every batch
      uses (chosen for a full batch on this host), for the manifest.

  Raises:
    ValueError: on NaN/inf embeddings, mixed widths or empty input.
  """
  if config.bandwidth is None:
    raise ValueError("Resolve the bandwidth first (resolve_bandwidth).")
  if rows is None:
    rows = embeddings.share(path, jax.process_index(), jax.process_count())
  t0 = time.perf_counter()
  if config.estimator == "sketch":
    state = build_sketch(
      path,
      config,
      mesh,
      batch_rows,
      rows=rows,
      checkpoint_dir=checkpoint_dir,
      checkpoint_every=checkpoint_every,
      progress=progress,
    )
    if progress:
      print(
        f"density: sketch pass 1 done ({sketch.num_examples(state)} "
        f"examples, {time.perf_counter() - t0:.1f}s)",
        file=sys.stderr,
      )

    def score(vectors):
      return sketch.scores(state, vectors, debias=config.debias, mesh=mesh)

  else:
    _, keys = embeddings.read_embeddings(path)
    n_keys, dim = keys.shape
    form = exact.choose_form(mesh, min(batch_rows, n_keys), n_keys, dim)
    if jax.process_count() > 1:  # Every process takes process 0's form.
      vote = np.zeros(len(exact.FORMS), np.int32)
      vote[exact.FORMS.index(form)] = jax.process_index() == 0
      form = exact.FORMS[int(np.argmax(sharding.process_sum(vote)))]
    if record is not None:
      record["exact_form"] = form

    def score(vectors):
      return exact.kernel_sums(
        vectors,
        keys,
        config.kernel,
        config.bandwidth,
        hashes_per_row=config.hashes_per_row,
        mesh=mesh,
        form=form,
      )

  done = 0
  for ids, problems, vectors in embeddings.iter_embeddings(
    path, batch_rows, rows
  ):
    if done + len(ids) <= start:
      done += len(ids)
      continue
    skip = max(0, start - done)
    done += len(ids)
    values = np.asarray(jax.device_get(score(vectors[skip:])), np.float32)
    yield ids[skip:], problems[skip:], values
    if progress:
      print(
        f"density: {done} scored ({time.perf_counter() - t0:.1f}s)",
        file=sys.stderr,
      )


def schema():
  import pyarrow as pa

  return pa.schema(
    [("id", pa.string()), ("problem", pa.string()), ("density", pa.float32())]
  )


def density(config: configs.DensityConfig) -> dict:
  """The `density` stage: every embedding's density score; the manifest.

  Joins the process group first (`config.processes`): every process then
  scores and writes its share of the rows (see the module docstring). The
  bandwidth is resolved first (the default rule on a seeded sample), so the
  run config records the one used; the exact estimator's manifest also
  records its form (`exact.choose_form`, process 0's), which is not part of
  the run config: the forms give the same sums, so a resume may use either.

  Returns:
    The manifest (on process 0) or this process's row count.

  Raises:
    ValueError: on bad embeddings, or fewer rows than processes.
  """
  config.processes.initialize()
  index, count = jax.process_index(), jax.process_count()
  if count > 1 and (n := embeddings.num_rows(config.embeddings)) < count:
    raise ValueError(
      f"{config.embeddings}: {n} embeddings cannot be shared by {count} "
      "processes; run fewer processes."
    )
  config = resolve_bandwidth(config.embeddings, config)
  where = None
  if config.checkpoint_every > 0:
    where = sketch_checkpoint_dir(config.output, index, count)

  def write_rows(writer):
    record = {}
    for ids, problems, values in density_scores(
      config.embeddings,
      config,
      sharding.local_mesh(),
      start=writer.rows_done,
      batch_rows=config.batch_rows,
      progress=config.progress,
      checkpoint_dir=where,
      checkpoint_every=config.checkpoint_every,
      record=record,
    ):
      writer.write({"id": ids, "problem": problems, "density": values})
    return {
      "stage": "density",
      "embeddings_manifest": driver.input_manifest(config.embeddings),
      **record,
    }

  return driver.reduce(
    config.output,
    config.run_config(),
    schema(),
    config.batch_rows,
    write_rows,
  )
