"""The density stage: embeddings in, one density score per example out.

Streams an `embed` output directory (or a `.npy` matrix), computes either the
exact kernel sums (all embeddings held in host memory; for up to a few million
examples) or the RACE sketch's two passes (memory independent of N), and
writes `(id, problem, density)` shards plus a manifest, resumably: the exact
estimator and the sketch's pass 2 skip the query chunks already written, and
the sketch's pass 1 resumes from its last Orbax checkpoint of the counts
(`build_sketch`), so a rerun after a kill ends with identical counts.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator

import jax
import numpy as np

from data_efficient.io import embeddings, paths
from data_efficient.runs import driver
from data_efficient.stages import configs
from data_efficient.stages.density import exact, kernels, sketch

# Subdirectory of a density output directory holding pass-1 checkpoints.
SKETCH_CHECKPOINTS = "sketch_checkpoints"


def resolve_bandwidth(
  path: str, config: configs.DensityConfig
) -> configs.DensityConfig:
  """`config` with its median kernel value and bandwidth set: as given, or
  the default rule on a seeded sample of the first batch (recorded in the
  manifest either way)."""
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
  checkpoint_dir: str | None = None,
  checkpoint_every: int = 0,
  progress: bool = False,
) -> sketch.RaceSketch:
  """Pass 1: every embedding counted once in every row.

  With `checkpoint_dir`, the counts and the number of rows added so far are
  saved there (Orbax, `runs.snapshots`) at the end of the first batch after
  every `checkpoint_every` rows, and once the pass is over; the hash
  parameters are not stored, as they follow from (seed, width, rows,
  buckets, dim), which the checkpoint records and checks. A rerun restores
  the latest checkpoint and counts only the rows after it (none, if pass 1
  had finished): counts are integers, so the result is identical to an
  uninterrupted pass.
  """
  state, ckpt = None, None
  added = resumed = seen = saved = 0
  for (_, _, vectors), last in _with_last(
    embeddings.iter_embeddings(path, batch_rows)
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
        ckpt, restored = _open_checkpoint(checkpoint_dir, path, config, state)
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
  return state


def _open_checkpoint(directory: str, path: str, config, state):
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
  ckpt = snapshots.StateCheckpointer(directory, config=settings)
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
  start: int = 0,
  batch_rows: int = 65_536,
  progress: bool = True,
  checkpoint_dir: str | None = None,
  checkpoint_every: int = 0,
  record: dict | None = None,
) -> Iterator[tuple[list[str], list, np.ndarray]]:
  """Yields (ids, problems, density) batches in input order, from `start`.

  Args:
    path: An `embed` output directory or a `.npy` matrix.
    config: With its bandwidth resolved (`resolve_bandwidth`).
    mesh: Devices to compute on.
    start: Rows already written (resume): they are not scored again.
    batch_rows: Query rows per batch.
    progress: Print progress to stderr.
    checkpoint_dir: Sketch: where pass 1 saves and resumes (see
      `build_sketch`); None disables checkpoints.
    checkpoint_every: Sketch: rows between pass-1 checkpoints.
    record: Exact: gets 'exact_form', the `exact.FORMS` entry every batch
      uses (chosen for a full batch on this host), for the manifest.

  Raises:
    ValueError: on NaN/inf embeddings, mixed widths or empty input.
  """
  if config.bandwidth is None:
    raise ValueError("Resolve the bandwidth first (resolve_bandwidth).")
  t0 = time.perf_counter()
  if config.estimator == "sketch":
    state = build_sketch(
      path,
      config,
      mesh,
      batch_rows,
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
  for ids, problems, vectors in embeddings.iter_embeddings(path, batch_rows):
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

  The bandwidth is resolved first (the default rule on a seeded sample), so
  the run config records the one used; the exact estimator's manifest also
  records its form (`exact.choose_form`), which is not part of the run
  config: the forms give the same sums, so a resume may use either.
  """
  from data_efficient import sharding

  config = resolve_bandwidth(config.embeddings, config)
  checkpoint_dir = None
  if config.checkpoint_every > 0:
    checkpoint_dir = paths.join(config.output, SKETCH_CHECKPOINTS)

  def write_rows(writer):
    record = {}
    for ids, problems, values in density_scores(
      config.embeddings,
      config,
      sharding.make_mesh(),
      start=writer.rows_done,
      batch_rows=config.batch_rows,
      progress=config.progress,
      checkpoint_dir=checkpoint_dir,
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
