"""The streaming loop shared by the model stages (score, embed).

read records -> tokenize on host threads -> pack into length buckets ->
sharded device step -> write shards, in order.

Records are processed in chunks: one chunk per corpus block (at most
`chunk_size` consecutive records of one file, see `Corpus.records`). Inside a
chunk, token sequences are packed (first-fit decreasing) into rows of at most
`max_length` tokens and up to `max_segments` sequences; rows are grouped into
length buckets (multiples of `bucket_step`) with a per-bucket batch size from a
token budget, so each (bucket, batch) shape compiles once. Results are put
back in input order and written one chunk per write; shards end at write
boundaries. Chunks are thus the same whatever the process count, and a run
resumed after a kill starts at a chunk boundary: it recomputes exactly the
chunks it lost, and scores and shard bytes equal an uninterrupted run's. The
next chunk is read and tokenized on a
host thread while the device works on the current one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import jax
import numpy as np

from data_efficient import sharding
from data_efficient.runs import driver
from data_efficient.stages import configs

if TYPE_CHECKING:
  from data_efficient.io import corpus as corpus_lib
  from data_efficient.io import results


@dataclasses.dataclass(frozen=True)
class Prepared:
  """Host-side output of a stage for one chunk of records."""

  ids: list[np.ndarray]  # token ids per record, each shorter than max_length
  columns: dict[str, np.ndarray]  # per-record columns computed on the host
  # Encoder-decoder stages only: per-record decoder targets, packed into a
  # parallel row under the same segment number (see `make_batches`).
  decoder_target_ids: list[np.ndarray] | None = None


class Stage(Protocol):
  """What a model stage supplies to the runner."""

  def prepare(self, texts: list[str]) -> Prepared:
    """Tokenizes a chunk of texts (host)."""

  def step(self, params, tokens, segment_ids, num_segments: int) -> dict:
    """Device computation: [b, len] rows -> dict of [b, segments, ...]."""

  def finalize(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-record device outputs -> output columns."""


# Default token budget of a batch per data-parallel device. On CPU, small
# batches keep attention's [length, length] scores in cache: Flan-T5-Base
# scored 1.7x the docs/s at 1024 tokens per batch as at 16384 on 2 cores
# (`benchmarks/askllm_throughput.py`). Since attention runs one head at a
# time on CPU (`t5._one_head_at_a_time`), 2048 tokens (4 rows of 512) scores
# 7-10% faster per row than 1024 (Small and Base, same process): the first
# decoder step reads its weights once for twice the rows. Accelerators want
# bigger batches to fill their matrix units (a choice, not a measurement).
CPU_TOKENS_PER_DEVICE = 2048
ACCELERATOR_TOKENS_PER_DEVICE = 4096


@dataclasses.dataclass(frozen=True)
class PackingConfig:
  """How sequences become device batches.

  Attributes:
    max_length: Row length cap; every sequence must be at most this long.
    max_segments: Most sequences packed into one row (1 disables packing).
    bucket_step: Row lengths are rounded up to a multiple of this.
    tokens_per_batch: Token budget of one device batch (rows x length);
      None: a per-platform default per data-parallel device (`for_mesh`).
  """

  max_length: int = 512
  max_segments: int = 8
  bucket_step: int = 64
  tokens_per_batch: int | None = None

  def for_mesh(self, mesh: jax.sharding.Mesh) -> PackingConfig:
    """This config with `tokens_per_batch` set (the default if None)."""
    if self.tokens_per_batch is not None:
      return self
    cpu = mesh.devices.flat[0].platform == "cpu"
    per_device = CPU_TOKENS_PER_DEVICE if cpu else ACCELERATOR_TOKENS_PER_DEVICE
    width = mesh.shape[sharding.DATA]
    return dataclasses.replace(self, tokens_per_batch=per_device * width)


def pack(
  lengths: np.ndarray, max_length: int, max_segments: int
) -> list[list[int]]:
  """First-fit-decreasing packing of sequences into rows.

  Args:
    lengths: [n] sequence lengths, each in 1..max_length.
    max_length: Row capacity in tokens.
    max_segments: Most sequences per row.

  Returns:
    Rows as lists of sequence indices; every index appears exactly once.
    Deterministic: ties in length are broken by index.
  """
  order = np.lexsort((np.arange(len(lengths)), -np.asarray(lengths)))
  rows: list[list[int]] = []
  free: list[int] = []
  for i in order:
    n = int(lengths[i])
    for r, space in enumerate(free):
      if space >= n and len(rows[r]) < max_segments:
        rows[r].append(int(i))
        free[r] -= n
        break
    else:
      rows.append([int(i)])
      free.append(max_length - n)
  return rows


@dataclasses.dataclass
class Batch:
  tokens: np.ndarray  # int32 [b, len]
  segment_ids: np.ndarray  # int32 [b, len], 1..s per row, 0 = padding
  members: list[list[int]]  # per row: record index of each segment
  # Output slots per row (the step's static `num_segments`): the smallest
  # power of two that holds the batch's most packed row, so a batch of long
  # prompts does not pay for 8 decoder queries per row while shapes stay few.
  num_segments: int
  # With decoder targets: the parallel decoder row, same shape and numbering.
  decoder_target_tokens: np.ndarray | None = None
  decoder_segment_ids: np.ndarray | None = None


def make_batches(
  ids: list[np.ndarray],
  packing: PackingConfig,
  batch_multiple: int,
  decoder_target_ids: list[np.ndarray] | None = None,
) -> Iterator[Batch]:
  """Packs a chunk's sequences into fixed-shape batches, bucket by bucket.

  Batch sizes are multiples of `batch_multiple` (the data-parallel width);
  short final batches are padded with empty rows so shapes repeat. With
  `decoder_target_ids`, a record is packed by the longer of its two
  sequences and its decoder targets fill a parallel row of the same shape,
  as the same segment number.
  """
  lengths = np.asarray([len(x) for x in ids])
  if decoder_target_ids is not None:
    lengths = np.maximum(lengths, [len(x) for x in decoder_target_ids])
  if lengths.size and (lengths.min() < 1 or lengths.max() > packing.max_length):
    raise ValueError(
      f"Sequence lengths must be in 1..{packing.max_length}; got "
      f"{lengths.min()}..{lengths.max()}."
    )
  if packing.tokens_per_batch is None:
    raise ValueError("Set tokens_per_batch first: PackingConfig.for_mesh.")
  rows = pack(lengths, packing.max_length, packing.max_segments)
  step = packing.bucket_step
  buckets: dict[int, list[list[int]]] = {}
  for row in rows:
    used = int(lengths[row].sum())
    bucket = min(packing.max_length, -(-used // step) * step)
    buckets.setdefault(bucket, []).append(row)
  for bucket in sorted(buckets):
    full = max(1, packing.tokens_per_batch // bucket)
    full = max(batch_multiple, full // batch_multiple * batch_multiple)
    group = buckets[bucket]
    for start in range(0, len(group), full):
      members = group[start : start + full]
      size = _batch_rows(len(members), full, batch_multiple)
      tokens, segments = _fill_rows(ids, members, (size, bucket))
      most = max(len(row) for row in members)
      slots = min(packing.max_segments, 1 << (most - 1).bit_length())
      batch = Batch(tokens, segments, members, slots)
      if decoder_target_ids is not None:
        batch.decoder_target_tokens, batch.decoder_segment_ids = _fill_rows(
          decoder_target_ids, members, (size, bucket)
        )
      yield batch


def _fill_rows(
  ids: list[np.ndarray], members: list[list[int]], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
  """[b, len] tokens and segment ids: row r holds members[r] in order."""
  tokens = np.zeros(shape, np.int32)
  segments = np.zeros(shape, np.int32)
  for r, row in enumerate(members):
    offset = 0
    for s, i in enumerate(row):
      n = len(ids[i])
      tokens[r, offset : offset + n] = ids[i]
      segments[r, offset : offset + n] = s + 1
      offset += n
  return tokens, segments


def _batch_rows(rows: int, full: int, multiple: int) -> int:
  """Rows of the batch holding `rows` rows: `full`, or for a bucket's last
  batch the smallest `multiple` * 2^k that fits, so padding rows stay under
  half a batch while the number of compiled shapes stays logarithmic."""
  size = multiple
  while size < rows:
    size *= 2
  return min(size, full)


@dataclasses.dataclass
class RunStats:
  """What a run did, for the summary and the manifest."""

  records: int = 0
  resumed_from: int = 0
  real_tokens: int = 0
  padded_tokens: int = 0
  host_seconds: float = 0.0
  device_seconds: float = 0.0
  wall_seconds: float = 0.0

  @property
  def padding_fraction(self) -> float:
    if not self.padded_tokens:
      return 0.0
    return 1.0 - self.real_tokens / self.padded_tokens

  def as_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["padding_fraction"] = round(self.padding_fraction, 4)
    d["docs_per_second"] = round(self.records / max(self.wall_seconds, 1e-9), 2)
    return d


class Runner:
  """Runs a stage over a record stream on a mesh, writing result shards."""

  def __init__(
    self,
    stage: Stage,
    params,
    mesh: jax.sharding.Mesh,
    packing: PackingConfig,
    param_shardings=None,
  ):
    self.stage = stage
    self.packing = packing.for_mesh(mesh)
    self.mesh = mesh
    self._batch_sharding = sharding.batch_sharding(mesh)
    if param_shardings is None:
      param_shardings = jax.tree.map(
        lambda _: sharding.replicated(mesh), params
      )
    self.params = jax.device_put(params, param_shardings)
    # Encoder-decoder stages (`seq2seq = True`) also take the decoder rows,
    # after num_segments: step(params, tokens, segment_ids, num_segments,
    # decoder_target_tokens, decoder_segment_ids).
    arrays = 4 if getattr(stage, "seq2seq", False) else 2
    self._step = jax.jit(
      stage.step,
      static_argnums=(3,),
      in_shardings=(param_shardings,) + (self._batch_sharding,) * arrays,
      out_shardings=self._batch_sharding,
    )

  def _device_outputs(
    self, prepared: Prepared, stats: RunStats
  ) -> dict[str, np.ndarray]:
    """Runs every batch of a chunk; returns per-record outputs in order."""
    n = len(prepared.ids)
    outputs: dict[str, np.ndarray] = {}
    width = self.mesh.shape[sharding.DATA]
    pending = []
    start = time.perf_counter()
    decoder = prepared.decoder_target_ids
    for batch in make_batches(prepared.ids, self.packing, width, decoder):
      rows = [batch.tokens, batch.segment_ids]
      if decoder is not None:
        rows += [batch.decoder_target_tokens, batch.decoder_segment_ids]
      # Placed here, not by jit: in a multi-process job jit refuses NumPy
      # inputs with a sharding over several devices (a TPU host's chips),
      # even devices of this process only.
      rows = jax.device_put(rows, self._batch_sharding)
      result = self._step(self.params, *rows[:2], batch.num_segments, *rows[2:])
      pending.append((batch, result))  # dispatch is asynchronous
      stats.padded_tokens += batch.tokens.size
      if decoder is not None:
        stats.padded_tokens += batch.decoder_target_tokens.size
    for batch, result in pending:
      result = jax.device_get(result)
      for name, value in result.items():
        if name not in outputs:
          outputs[name] = np.zeros((n,) + value.shape[2:], value.dtype)
        for r, row in enumerate(batch.members):
          outputs[name][row] = value[r, : len(row)]
    stats.device_seconds += time.perf_counter() - start
    stats.real_tokens += sum(len(x) for x in prepared.ids)
    if decoder is not None:
      stats.real_tokens += sum(len(x) for x in decoder)
    return outputs

  def run(
    self,
    records: Iterable[corpus_lib.Record],
    writer: results.ResultWriter,
    *,
    chunk_size: int,
    progress: driver.Progress | None = None,
    on_chunk: Callable[[RunStats], None] | None = None,
  ) -> RunStats:
    """Scores `records` (already positioned after `writer.rows_done`).

    Args:
      records: This process's record stream, starting at the resume point.
      writer: Where rows go, one write per chunk.
      chunk_size: Records per chunk.
      progress: The progress bar to update after each chunk, if any.
      on_chunk: Called after each chunk is written (tests use it).
    """
    stats = RunStats(resumed_from=writer.rows_done)
    chunks = _chunked(records, chunk_size)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      future = pool.submit(self._read_and_prepare, chunks)
      while True:
        chunk, prepared, host_seconds = future.result()
        if not chunk:
          break
        future = pool.submit(self._read_and_prepare, chunks)
        stats.host_seconds += host_seconds
        outputs = self._device_outputs(prepared, stats)
        columns = dict(prepared.columns)
        columns.update(self.stage.finalize(outputs))
        writer.write(_row_columns(chunk, columns))
        stats.records += len(chunk)
        stats.wall_seconds = time.perf_counter() - t0
        if progress is not None:
          progress.update(
            len(chunk),
            f"docs/s={stats.records / stats.wall_seconds:.1f} "
            f"tokens/s={stats.real_tokens / stats.wall_seconds:.0f} "
            f"pad={stats.padding_fraction:.1%}",
          )
        if on_chunk is not None:
          on_chunk(stats)
    stats.wall_seconds = time.perf_counter() - t0
    return stats

  def _read_and_prepare(self, chunks: Iterator[list[corpus_lib.Record]]):
    start = time.perf_counter()
    chunk = next(chunks, [])
    prepared = self.stage.prepare([r.text for r in chunk]) if chunk else None
    return chunk, prepared, time.perf_counter() - start


def _chunked(
  records: Iterable[corpus_lib.Record], size: int
) -> Iterator[list[corpus_lib.Record]]:
  """Chunks of consecutive records of one corpus block (at most `size`).

  Readers asked for `block_size=size` mark each record with its block, and a
  block's records all belong to one process: so chunks, and the packing
  inside them, are the same whatever the process count or resume point.
  """
  chunk: list[corpus_lib.Record] = []
  for record in records:
    if chunk and (len(chunk) == size or record.block != chunk[-1].block):
      yield chunk
      chunk = []
    chunk.append(record)
  if chunk:
    yield chunk


def _row_columns(
  chunk: list[corpus_lib.Record], columns: Mapping[str, np.ndarray]
) -> dict[str, Any]:
  rows = {
    "id": [r.id for r in chunk],
    "problem": [r.problem for r in chunk],
  }
  rows.update(columns)
  return rows


def warn_random(model: str) -> None:
  """Says loudly that a tiny test model has random weights."""
  bar = "!" * 72
  print(
    f"{bar}\n!! --model {model} has RANDOM weights: its scores and embeddings "
    f"mean NOTHING.\n!! Use it to test the pipeline, never to select data.\n"
    f"{bar}",
    file=sys.stderr,
  )


def load_model(model: configs.ModelConfig):
  """(T5 config, load_params) from the model settings.

  `load_params(mesh)` reads the weights only when a run needs them (a
  finished run's rerun does not): an Orbax checkpoint is restored straight
  onto the mesh (each process reading only its devices' shards), other
  formats into host memory.

  Raises:
    ValueError: without a model or checkpoint, or a real model without
      weights.
  """
  from data_efficient.models import checkpoints, presets, t5

  if model.model is None and model.checkpoint is None:
    raise ValueError("Give model, checkpoint, or both.")
  if model.model is not None:
    config = presets.get_preset(model.model)
  else:
    config = checkpoints.config_from_checkpoint(model.checkpoint)
  config = config.replace(dtype=model.dtype)
  if model.checkpoint is None:
    if not model.model.startswith("tiny"):
      raise ValueError(
        f"model={model.model!r} needs a checkpoint (only the tiny test "
        "models may run with random weights)."
      )
    warn_random(model.model)
    return config, lambda mesh: t5.init_params(config, seed=0)
  dtype = np.float32 if model.dtype == "float32" else "bfloat16"
  checkpoints.detect_format(model.checkpoint)  # a bad path fails here, early
  return config, lambda mesh: checkpoints.load_params(
    model.checkpoint, config, dtype=dtype, mesh=mesh
  )


def run_model_stage(
  settings: configs.ScoreConfig
  | configs.PerplexityConfig
  | configs.EmbedConfig,
  stage: Stage,
  model_config: Any,
  load_params: Callable[[jax.sharding.Mesh], Any],
  abstract: Any,
  schema: Any,
  run_config: Mapping[str, Any],
  provenance: Mapping[str, Any],
) -> dict[str, Any]:
  """The shared tail of score, perplexity and embed: corpus, mesh, runner,
  manifest. The weights are read (`load_params(mesh)`) only if the output is
  not already complete.

  Args:
    settings: The stage's config.
    stage: The stage's host and device functions, and its `tokenizer`
      (path and SHA-256 recorded).
    model_config: The network's config (recorded in the manifest).
    load_params: Reads the weights for a mesh.
    abstract: The model's boxed abstract parameter tree (logical axes),
      from which the parameter shardings are derived.
    schema: pyarrow schema of the rows.
    run_config: The stage's own entries of the run config.
    provenance: The stage's own manifest fields.

  Returns:
    The manifest (process 0) or this process's row count.
  """
  corpus = settings.corpus.open()
  run, model = settings.run, settings.model
  mesh = sharding.local_mesh(model.model_parallelism)
  packing = PackingConfig(
    max_length=stage.max_length,
    max_segments=run.max_segments,
    tokens_per_batch=run.tokens_per_batch,
  )
  run_config = dict(
    run_config,
    model=model.model,
    checkpoint=model.checkpoint,
    vocab=str(stage.tokenizer.path),
    dtype=model.dtype,
    max_length=stage.max_length,
    corpus=corpus.describe(),
    chunk_size=run.chunk_size,
    chunks_per_shard=run.chunks_per_shard,
    limit=run.limit,
  )
  provenance = dict(
    provenance,
    model_config=dataclasses.asdict(model_config),
    random_weights=model.checkpoint is None,
    vocabulary={
      "path": str(stage.tokenizer.path),
      "sha256": stage.tokenizer.sha256,
    },
  )
  out = driver.StageOutput(
    output_dir=run.output,
    schema=schema,
    run_config=run_config,
    provenance=provenance,
    chunk_size=run.chunk_size,
    chunks_per_shard=run.chunks_per_shard,
    limit=run.limit,
    progress=run.progress,
  )
  manifest = driver.completed_run(out.output_dir, out.run_config)
  if manifest is not None:
    return manifest
  shardings = sharding.param_shardings(abstract, mesh)
  runner = Runner(stage, load_params(mesh), mesh, packing, shardings)
  return driver.run_stage(runner, corpus, out)


def tokenizer_for(model: configs.ModelConfig):
  """The SentencePiece tokenizer of a model stage: `vocab` if given, else
  the checkpoint folder's own (`spiece.model`), else T5's."""
  from data_efficient.models import checkpoints, tokenizer

  path = model.vocab
  if path is None and model.checkpoint is not None:
    path = checkpoints.vocab_file(model.checkpoint)
  return tokenizer.Tokenizer(path or tokenizer.DEFAULT_VOCAB)


def run_t5_stage(
  settings: configs.ModelStageConfig,
  make_stage: Callable[[Any, Any], Stage],
  schema: Any,
  run_config: Mapping[str, Any],
  provenance: Callable[[Stage], Mapping[str, Any]],
) -> dict[str, Any]:
  """A T5 model stage end to end: processes, weights, tokenizer, the run.

  Args:
    settings: The stage's config.
    make_stage: (T5 config, tokenizer) -> the stage.
    schema: pyarrow schema of the rows.
    run_config: The stage's own entries of the run config.
    provenance: The stage's own manifest fields, from the stage.
  """
  from data_efficient.models import t5

  settings.processes.initialize()
  model_config, load_params = load_model(settings.model)
  stage = make_stage(model_config, tokenizer_for(settings.model))
  return run_model_stage(
    settings,
    stage,
    model_config,
    load_params,
    t5.abstract_params(model_config),
    schema,
    run_config,
    provenance(stage),
  )
