"""Rerun to resume, in one place: the driver every stage runs under.

A stage writes one output directory: result shards (`io.results`), then
`manifest.json` last, atomically. A directory whose manifest records the same
run config is finished: a rerun says so and returns that manifest, without
reading weights or input. A directory without a manifest is an unfinished
run: the writer keeps its whole shards and the stage resumes after them. A
rerun with another config is refused, naming the setting that differs.

Two kinds of stage run here:
- row-streaming stages (score, embed, perplexity): `run_stage` deals the
  corpus to processes, feeds this process's share through a `RecordRunner`
  (the stage's device loop) into its shards, and process 0 writes the
  manifest once every process is done;
- reductions (density, cluster, select): `reduce` hands the stage a writer
  positioned after the rows already written (one per process, in a
  multi-process job: each process writes its share of the rows) and
  process 0 writes the manifest with the stage's fields, the run config, the
  time taken and the code version.
Long reductions also snapshot their state (`runs.snapshots`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import jax

from data_efficient import sharding
from data_efficient.io import paths, results

if TYPE_CHECKING:
  from data_efficient.io import corpus as corpus_lib


class RecordRunner(Protocol):
  """A stage's loop over records (`stages.engine.Runner`)."""

  def run(self, records, writer, *, chunk_size, progress, on_chunk):
    """Writes the rows of `records` with `writer` (calling
    `progress.update` after each write, if given); returns run statistics."""


class Progress:
  """A row-streaming stage's progress bar on stderr, with an ETA: records
  against the share's record count where the corpus knows it (Parquet,
  Arrow, TFDS, or a `limit`), else the bytes of its files read against their
  size (JSON Lines and text, compressed or not)."""

  def __init__(
    self,
    corpus: corpus_lib.Corpus,
    total: int | None,
    initial: int,
    process_index: int,
    process_count: int,
  ):
    import tqdm  # Only stages with progress on show it.

    self._corpus = corpus
    self._records = initial
    size = None
    if total is None:
      size = corpus.share_bytes(process_index, process_count)
    self._by_bytes = size is not None
    common = {"file": sys.stderr, "dynamic_ncols": True, "smoothing": 0.1}
    if self._by_bytes:
      self._bar = tqdm.tqdm(
        total=size, unit="B", unit_scale=True, unit_divisor=1024, **common
      )
    else:
      self._bar = tqdm.tqdm(total=total, initial=initial, unit="doc", **common)

  def update(self, records: int, postfix: str) -> None:
    """After `records` more records were written; `postfix` ends the bar."""
    self._records += records
    if self._by_bytes:
      self._bar.update(self._corpus.bytes_read - self._bar.n)
      postfix = f"docs={self._records} {postfix}"
    else:
      self._bar.update(records)
    self._bar.set_postfix_str(postfix, refresh=False)

  def close(self) -> None:
    self._bar.close()


@dataclasses.dataclass(frozen=True)
class StageOutput:
  """Where and how a row-streaming stage writes."""

  output_dir: str
  schema: Any  # pyarrow.Schema of the rows
  run_config: dict[str, Any]  # everything that determines the rows
  provenance: dict[str, Any]  # extra manifest fields (model, prompt, ...)
  chunk_size: int = 2048
  chunks_per_shard: int = 16
  limit: int | None = None  # records per process, rounded up to whole blocks
  progress: bool = True


def completed_run(
  output_dir: str, run_config: Mapping[str, Any]
) -> dict[str, Any] | None:
  """The manifest if `output_dir` holds this finished run (else None)."""
  manifest = results.completed_manifest(output_dir, run_config)
  if manifest is not None:
    print(f"{output_dir} is already complete.", file=sys.stderr)
  return manifest


def run_stage(
  runner: RecordRunner,
  corpus: corpus_lib.Corpus,
  out: StageOutput,
  *,
  on_chunk: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
  """Runs a model stage for this process, resuming, then writes the manifest.

  Every process writes its own shards and statistics; process 0 waits for
  all of them and writes `manifest.json` last, atomically. Rerunning a
  finished run's command changes nothing and returns its manifest.

  Returns:
    The manifest (on process 0) or this process's row count.
  """
  index, count = jax.process_index(), jax.process_count()
  manifest = completed_run(out.output_dir, out.run_config)
  if manifest is not None:
    return manifest
  writer = results.ResultWriter(
    out.output_dir,
    out.schema,
    process_index=index,
    process_count=count,
    rows_per_shard=out.chunk_size * out.chunks_per_shard,
    run_config=out.run_config,
  )
  start = writer.rows_done
  records = corpus.records(index, count, start=start, block_size=out.chunk_size)
  total = corpus.share_size(index, count, out.chunk_size)
  if out.limit is not None:
    records = _whole_blocks(records, max(0, out.limit - start))
    total = out.limit if total is None else min(total, out.limit)
  if start:
    print(
      f"[process {index}] resuming after {start} rows already written.",
      file=sys.stderr,
    )
  progress = None
  if out.progress and index == 0:
    progress = Progress(corpus, total, start, index, count)
  # Each process runs its share alone (its own devices, no collective): an
  # error there (a bad record) fails every process once all are done,
  # instead of leaving them waiting for it at the barrier below.
  with sharding.all_or_none(f"{out.output_dir}: this process's records"):
    stats = runner.run(
      records,
      writer,
      chunk_size=out.chunk_size,
      progress=progress,
      on_chunk=on_chunk,
    )
    if progress is not None:
      progress.close()
    rows = writer.close()
  # Statistics of this session only (a resumed run reports what it redid).
  results.write_json(
    out.output_dir,
    f"stats-{index:05d}.json",
    {"process_index": index, "rows": rows, "stats": stats.as_dict()},
  )
  sharding.barrier(f"{out.output_dir}:done")
  if index:
    return {"process_index": index, "rows": rows}
  manifest = dict(out.provenance)
  manifest.update(
    run_config=out.run_config,
    processes=[
      results.read_json(out.output_dir, f"stats-{i:05d}.json")
      for i in range(count)
    ],
    code_version=code_version(),
  )
  return results.write_manifest(out.output_dir, manifest)


def code_version() -> str:
  """The package version, plus the git commit when run from a checkout."""
  import importlib.metadata
  import os
  import subprocess

  try:
    version = importlib.metadata.version("data_efficient")
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(
      ["git", "-C", root, "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      check=True,
      timeout=5,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return version
  return f"{version}+g{commit}"


def _whole_blocks(
  records: Iterable[corpus_lib.Record], limit: int
) -> Iterator[corpus_lib.Record]:
  """At least `limit` records (if there are), ending at a block boundary."""
  last = None
  for n, record in enumerate(records):
    if n >= limit and record.block != last:
      return
    last = record.block
    yield record


def reduce(
  output_dir: str,
  run_config: Mapping[str, Any],
  schema: Any,
  rows_per_shard: int,
  write_rows: Callable[[results.ResultWriter], Mapping[str, Any]],
  *,
  timed: bool = True,
) -> dict[str, Any]:
  """Runs a reduction stage into `output_dir`, resuming; returns the manifest.

  In a multi-process job every process calls it: each writes its own rows
  (its share of the output, in process order) into its own shards, and
  process 0 writes the manifest, with its stage fields, once all are done.

  Args:
    output_dir: The stage's output directory.
    run_config: Everything that determines the rows (recorded, compared on
      a rerun).
    schema: pyarrow schema of the rows.
    rows_per_shard: Rows per output shard.
    write_rows: Writes this process's rows after `writer.rows_done` (a
      resumed run's are already there) and returns the manifest's stage
      fields (`stage` first).
    timed: Record the seconds the run took (`seconds`).

  Returns:
    The manifest (on process 0) or this process's row count.
  """
  index, count = jax.process_index(), jax.process_count()
  manifest = completed_run(output_dir, run_config)
  if manifest is not None:
    return manifest
  writer = results.ResultWriter(
    output_dir,
    schema,
    process_index=index,
    process_count=count,
    rows_per_shard=rows_per_shard,
    run_config=run_config,
  )
  if writer.rows_done:
    print(
      f"[process {index}] resuming after {writer.rows_done} rows already "
      "written.",
      file=sys.stderr,
    )
  t0 = time.perf_counter()
  manifest = dict(write_rows(writer))
  rows = writer.close()
  sharding.barrier(f"{output_dir}:reduced")
  if index:
    return {"process_index": index, "rows": rows}
  manifest["run_config"] = dict(run_config)
  if timed:
    manifest["seconds"] = round(time.perf_counter() - t0, 2)
  manifest["code_version"] = code_version()
  return results.write_manifest(output_dir, manifest)


def input_manifest(path: str) -> dict[str, Any] | None:
  """The manifest of an input directory (None for a plain `.npy` file)."""
  return None if path.endswith(".npy") else results.read_manifest(path)


def scratch_path(output_dir: str) -> str:
  """`output_dir` + '.scratch': beside it, on the same (shared) storage."""
  if paths.is_remote(output_dir):
    return output_dir.rstrip("/") + ".scratch"
  return os.path.normpath(output_dir) + ".scratch"


@contextlib.contextmanager
def scratch(path: str, stage: str) -> Iterator[None]:
  """A job's scratch directory for `stage`: process 0 clears it (a killed
  run's is stale) before any process writes there, and removes it at the
  end."""
  first = jax.process_index() == 0
  with sharding.all_or_none(f"clearing {stage}'s scratch directory"):
    if first:
      paths.rmtree(path)
  try:
    yield
  finally:
    if first:
      paths.rmtree(path)
