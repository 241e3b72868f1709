"""Writes a selected subset of a corpus as TFRecords (an Apache Beam job).

Filtering C4 by url in the training input pipeline makes every host read
the whole corpus and hold a url table (see `seqio_tasks`). For real runs,
materialise the selection once:

  data-efficient materialize \\
    --selection=/data/selection/askllm_xl_20 \\
    --input=tfds:c4/en:3.1.0 \\
    --output=gs://my-bucket/materialized/askllm_xl_20

The output directory then holds

  train.tfrecord-SSSSS-of-NNNNN       the selected examples
  validation.tfrecord-SSSSS-of-NNNNN  the corpus's validation split, whole
  manifest.json                       counts, file patterns, provenance
                                      (written last)

as `tf.train.Example`s {text, url} (url: the record id), which
`seqio_tasks.register_selection_task(..., materialized_dir=...)` reads with a
`seqio.TFExampleDataSource`.

The pipeline reads the corpus with `data_efficient.io` in `--num_reads`
disjoint shares (the same readers and ids that `data-efficient score` used),
reads the selected ids from the selection's Parquet shards, and joins the
two by id (`CoGroupByKey`): exact, and selected ids absent from the corpus
are counted and listed (`missing_ids-*.txt`), never silently dropped.

Runners. Without runner flags Beam's DirectRunner runs the job in this
process (fine for tests and small corpora). At C4 scale use Dataflow; extra
flags go to Beam's PipelineOptions:

  data-efficient materialize --selection=... --input=... \\
    --output=gs://bucket/materialized/NAME --num_reads=1024 \\
    --runner=DataflowRunner --project=PROJECT --region=us-central1 \\
    --temp_location=gs://bucket/tmp --setup_file=./setup.py \\
    --machine_type=n2-highmem-4 --max_num_workers=100 \\
    --experiments=use_runner_v2

`--setup_file` installs this package on the workers. The join shuffles the
whole corpus once (for c4/en train about 364M records, ~800 GB), which
Dataflow Shuffle handles; the selection directory must be readable by the
workers (gs:// or a path every worker sees). Selections of non-TFDS corpora
work the same way (`--input=/data/*.jsonl.gz`); give their validation
split with `--validation_corpus`, or none.

Apache Beam is an optional dependency (`pip install .[beam]`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from data_efficient.io import paths, results

# Shared with seqio_tasks (kept literal here so that Beam workers need not
# import SeqIO).
MATERIALIZED_KIND = "materialized_selection"
TRAIN_PREFIX = "train.tfrecord"
VALIDATION_PREFIX = "validation.tfrecord"
MISSING_PREFIX = "missing_ids"
_COUNTERS = "data_efficient.pretraining.materialize"


def _example_bytes(record_id: str, text: str) -> bytes:
  """A serialized tf.train.Example {text, url}."""
  import tensorflow as tf  # Lazy: only Beam workers that write need it.

  def feature(value: str) -> tf.train.Feature:
    data = value.encode("utf-8", "surrogatepass")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))

  example = tf.train.Example(
    features=tf.train.Features(
      feature={"text": feature(text), "url": feature(record_id)}
    )
  )
  return example.SerializeToString()


def _read_share(
  index: int,
  spec: str,
  num_reads: int,
  corpus_options: Mapping[str, Any],
) -> Iterator[tuple[str, str]]:
  """(id, text) of share `index` of `num_reads` of the corpus."""
  from data_efficient.io.corpus import open_corpus

  corpus = open_corpus(spec, **corpus_options)
  for record in corpus.records(index, num_reads):
    yield record.id, record.text


def _read_ids(path: str) -> Iterator[str]:
  """The `id` column of one Parquet shard of the selection."""
  import pyarrow.parquet as pq

  parquet = pq.ParquetFile(path, filesystem=paths.filesystem(path))
  for batch in parquet.iter_batches(columns=["id"]):
    yield from batch.column(0).to_pylist()


def _join(item: tuple[str, Mapping[str, Sequence[Any]]]) -> Iterator[Any]:
  """Keeps the records whose id was selected; reports missing ids."""
  import apache_beam as beam

  record_id, groups = item
  texts = list(groups["texts"])
  if not list(groups["selected"]):
    return
  if not texts:
    beam.metrics.Metrics.counter(_COUNTERS, "missing").inc()
    yield beam.pvalue.TaggedOutput("missing", record_id)
    return
  if len(texts) > 1:
    # Ids are unique in a sound corpus; keep one copy, deterministically.
    beam.metrics.Metrics.counter(_COUNTERS, "duplicate_ids").inc()
  beam.metrics.Metrics.counter(_COUNTERS, "train").inc()
  yield _example_bytes(record_id, min(texts))


def _to_example(item: tuple[str, str]) -> bytes:
  import apache_beam as beam

  beam.metrics.Metrics.counter(_COUNTERS, "validation").inc()
  return _example_bytes(*item)


def _counter(result: Any, name: str) -> int:
  from apache_beam.metrics.metric import MetricsFilter

  found = result.metrics().query(
    MetricsFilter().with_namespace(_COUNTERS).with_name(name)
  )["counters"]
  return int(sum(c.committed or 0 for c in found))


def _validation_spec(corpus: str, validation_corpus: str | None) -> str | None:
  if validation_corpus != "auto":
    return validation_corpus or None
  if corpus.startswith("tfds:"):
    from data_efficient.io.tfds_corpus import parse_tfds_spec

    name, version, _ = parse_tfds_spec(corpus)
    return (
      f"tfds:{name}:{version}:validation"
      if version
      else (f"tfds:{name}:validation")
    )
  return None


def materialize(
  selection_dir: str,
  output_dir: str,
  *,
  corpus: str = "tfds:c4/en:3.1.0",
  validation_corpus: str | None = "auto",
  data_dir: str | None = None,
  text_field: str = "text",
  id_field: str | None = None,
  num_reads: int = 256,
  num_shards: int = 0,
  allow_missing: bool = False,
  pipeline_args: Sequence[str] = (),
) -> dict[str, Any]:
  """Runs the Beam job; returns the manifest it wrote.

  Args:
    selection_dir: A complete selection directory (`data-efficient select`).
    output_dir: Where the TFRecords and manifest go (local or gs://).
    corpus: The corpus the selection was made from (an `open_corpus` spec).
    validation_corpus: Spec of the validation split to copy whole; 'auto'
      takes the TFDS corpus's 'validation' split (none for files); None for
      none.
    data_dir: TFDS data directory.
    text_field: Text field (or TFDS feature) of the corpus.
    id_field: Id field (default as in `open_corpus`: TFDS `url`).
    num_reads: Disjoint shares the corpus is read in (parallelism).
    num_shards: TFRecord shards per split; 0 lets the runner choose.
    allow_missing: Write the manifest even if selected ids were not found
      in the corpus (they are listed in missing_ids-*.txt either way).
    pipeline_args: Beam PipelineOptions flags (runner, project, ...).

  Returns:
    The manifest: counts and file patterns per split, the selection's
    manifest, the corpus spec.

  Raises:
    results.OutputError: if the selection is incomplete.
    ValueError: if selected ids are missing from the corpus (unless
      `allow_missing`) or `output_dir` holds another materialisation.
  """
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions

  selection_dir = os.fspath(selection_dir)
  selection = results.read_manifest(selection_dir)
  manifest_path = paths.join(output_dir, results.MANIFEST)
  if paths.exists(manifest_path):
    previous = json.loads(paths.read_bytes(manifest_path))
    if (
      previous.get("selection") == selection
      and previous.get("corpus") == corpus
    ):
      return previous  # Already done.
    raise ValueError(
      f"{output_dir}: holds another materialisation ({manifest_path}); "
      "choose a new output directory or delete it."
    )
  paths.makedirs(output_dir)
  shard_paths = [
    paths.join(selection_dir, s["file"]) for s in selection["shards"]
  ]
  corpus_options = {
    "data_dir": data_dir,
    "text_field": text_field,
    "id_field": id_field,
    "on_error": "mark",  # Keep what `score` saw; never fail mid-job.
    "check_duplicates": False,  # The join counts duplicates instead.
  }
  validation = _validation_spec(corpus, validation_corpus)

  def write(pcoll: Any, prefix: str, label: str) -> None:
    _ = pcoll | f"Write{label}" >> beam.io.WriteToTFRecord(
      paths.join(output_dir, prefix), num_shards=num_shards
    )

  options = PipelineOptions(list(pipeline_args))
  with beam.Pipeline(options=options) as pipeline:
    texts = (
      pipeline
      | "Shares" >> beam.Create(range(num_reads))
      | "SpreadShares" >> beam.Reshuffle()
      | "ReadCorpus"
      >> beam.FlatMap(
        _read_share,
        spec=corpus,
        num_reads=num_reads,
        corpus_options=corpus_options,
      )
    )
    selected = (
      pipeline
      | "SelectionShards" >> beam.Create(shard_paths)
      | "ReadIds" >> beam.FlatMap(_read_ids)
      | "KeyIds" >> beam.Map(lambda record_id: (record_id, True))
    )
    joined = (
      {"texts": texts, "selected": selected}
      | "Join" >> beam.CoGroupByKey()
      | "Keep" >> beam.FlatMap(_join).with_outputs("missing", main="train")
    )
    write(joined.train, TRAIN_PREFIX, "Train")
    _ = joined.missing | "WriteMissing" >> beam.io.WriteToText(
      paths.join(output_dir, MISSING_PREFIX), file_name_suffix=".txt"
    )
    if validation:
      valid = (
        pipeline
        | "ValidationShares" >> beam.Create(range(num_reads))
        | "SpreadValidation" >> beam.Reshuffle()
        | "ReadValidation"
        >> beam.FlatMap(
          _read_share,
          spec=validation,
          num_reads=num_reads,
          corpus_options=corpus_options,
        )
        | "ValidationExamples" >> beam.Map(_to_example)
      )
      write(valid, VALIDATION_PREFIX, "Validation")
  result = pipeline.result

  counts = {
    name: _counter(result, name)
    for name in ("train", "validation", "missing", "duplicate_ids")
  }
  if counts["missing"] and not allow_missing:
    raise ValueError(
      f"{counts['missing']} of {selection['num_rows']} selected ids are not "
      f"in {corpus} (listed in {output_dir}/{MISSING_PREFIX}-*.txt): the "
      "selection was made from another corpus or version. Pass the corpus "
      "it was made from, or --allow_missing to keep the rest."
    )
  splits = {"train": (TRAIN_PREFIX, counts["train"])}
  if validation:
    splits["validation"] = (VALIDATION_PREFIX, counts["validation"])
  manifest = {
    "kind": MATERIALIZED_KIND,
    "corpus": corpus,
    "validation_corpus": validation,
    "data_dir": data_dir,
    "selection_dir": selection_dir,
    "selection": selection,
    "splits": {
      split: {"file_pattern": f"{prefix}-*", "num_examples": n}
      for split, (prefix, n) in splits.items()
    },
    "missing_ids": counts["missing"],
    "duplicate_ids": counts["duplicate_ids"],
  }
  results.write_json(output_dir, results.MANIFEST, manifest)
  return manifest


def run(config) -> dict[str, Any]:
  """The `materialize` stage (`configs.MaterializeConfig`); the manifest."""
  corpus = config.corpus
  return materialize(
    config.selection,
    config.output,
    corpus=corpus.input,
    validation_corpus=config.validation_corpus or None,
    data_dir=corpus.tfds_data_dir,
    text_field=corpus.text_field,
    id_field=corpus.id_field,
    num_reads=config.num_reads,
    num_shards=config.num_shards,
    allow_missing=config.allow_missing,
    pipeline_args=config.pipeline_args,
  )
