"""SeqIO tasks that pre-train on a selected subset of C4 (span corruption).

`register_selection_task('askllm_xl_20', '/data/selection/askllm_xl_20')`
registers the task 'c4_askllm_xl_20_span_corruption':

  train       c4/en:3.1.0 train, only the examples whose `url` the selection
              lists (or, with `materialized_dir`, the TFRecords that
              `data_efficient.pretraining.materialize` wrote: the fast path)
  validation  c4/en:3.1.0 validation, unfiltered (T5X's train_eval split)
  preprocess  text -> targets, tokenize (T5's vocabulary by default),
              cache placeholder, span corruption, EOS after trim
  features    inputs and targets, both with EOS

Registering from gin. T5X gin files only `import data_efficient.pretraining.seqio_tasks`;
on import this module registers every selection named by

  DATA_EFFICIENT_SELECTIONS  comma-separated NAME=DIR pairs, e.g.
      'askllm_xl_20=/data/sel/askllm_xl_20,density_20=/data/mat/density_20'
      where DIR is a selection directory (`data-efficient select`) or a
      materialised one (`python3 -m data_efficient.pretraining.materialize`), told apart
      by its manifest.
  DATA_EFFICIENT_REGISTRY  path (local or gs://) of a JSON object mapping
      NAME to a DIR string, or to keyword arguments of
      `register_selection_task`, e.g.
      {"askllm_xl_20": "/data/sel/askllm_xl_20",
       "random_20": {"selection_dir": "/data/sel/random_20",
                     "tfds_data_dir": "gs://my-bucket/tfds"}}

Memory of the url filter: the train split is filtered in the input pipeline
through a `tf.lookup.StaticHashTable` of 64-bit url hashes, built from the
selection's ids on first use, on every host: about 16 bytes per selected
url plus the table's overhead, roughly 1.5-3 GB for 20% of C4 (73M urls) and
up to ~10 GB for 80%. Distinct urls share a hash with probability ~2^-63 per
pair, so a whole C4 pass admits ~0.001 unselected examples in expectation.
Every host also reads (and drops) the whole train split. For large
selections, materialise the subset once (`data_efficient.pretraining.materialize`, an
Apache Beam job) and pass `materialized_dir`: no table, no wasted reading.

Selection directories and materialised directories may be local or gs://.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from data_efficient.io import paths, results
from data_efficient.pretraining import span_corruption

DEFAULT_TFDS_NAME = "c4/en:3.1.0"
DEFAULT_VOCABULARY_PATH = (
  "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
)
DEFAULT_EXTRA_IDS = 100
SELECTIONS_ENV = "DATA_EFFICIENT_SELECTIONS"
REGISTRY_ENV = "DATA_EFFICIENT_REGISTRY"
# `kind` in the manifest.json of a directory written by materialize.py.
MATERIALIZED_KIND = "materialized_selection"
# Feature names of the materialised tf.train.Examples.
TEXT_FEATURE = "text"
URL_FEATURE = "url"

_NAME = re.compile(r"[A-Za-z0-9_]+")
# tf.strings.to_hash_bucket_fast buckets: FarmHash64 modulo the largest int64.
_HASH_BUCKETS = 2**63 - 1
_HASH_BATCH = 1 << 20  # urls hashed per TF call while building the table


def task_name(selection: str) -> str:
  """The task name for a selection: 'c4_<selection>_span_corruption'."""
  if not _NAME.fullmatch(selection):
    raise ValueError(
      f"selection name {selection!r} must be letters, digits and "
      "underscores (it becomes part of a SeqIO task name)."
    )
  return f"c4_{selection}_span_corruption"


def default_vocabulary() -> seqio.SentencePieceVocabulary:
  """T5's SentencePiece vocabulary (32000 pieces + 100 extra ids)."""
  return seqio.SentencePieceVocabulary(
    DEFAULT_VOCABULARY_PATH, DEFAULT_EXTRA_IDS
  )


def hash_urls(urls: tf.Tensor | np.ndarray) -> tf.Tensor:
  """64-bit hashes (int64) of url strings, the keys of the url filter."""
  return tf.strings.to_hash_bucket_fast(urls, _HASH_BUCKETS)


def _split_tfds_name(tfds_name: str) -> tuple[str, str | None]:
  name, _, version = tfds_name.partition(":")
  return name, version or None


def _check_corpus(
  manifest: Mapping[str, Any], tfds_name: str, where: str
) -> None:
  """Checks that a selection was made from the TFDS dataset it filters."""
  corpus = manifest.get("corpus")
  if not isinstance(corpus, Mapping):
    return  # Older or hand-made selections: nothing to check against.
  name, version = _split_tfds_name(tfds_name)
  if corpus.get("kind") != "tfds":
    raise ValueError(
      f"{where}: selected from a {corpus.get('kind')!r} corpus, whose ids "
      f"are not {name} urls; materialise it (data_efficient.pretraining.materialize) "
      "and pass materialized_dir instead."
    )
  if corpus.get("name") != name or (
    version is not None and corpus.get("version") not in (None, version)
  ):
    raise ValueError(
      f"{where}: selected from {corpus.get('name')}:{corpus.get('version')} "
      f"but the task reads {tfds_name}; pass "
      f"tfds_name='{corpus.get('name')}:{corpus.get('version')}'."
    )


class SelectedTfdsDataSource(seqio.TfdsDataSource):
  """A TFDS source whose train split keeps only the selected urls.

  Other splits are read unfiltered. The url table is built from the
  selection on the first train read and kept for the life of the source.
  """

  def __init__(
    self,
    selection_dir: str,
    *,
    tfds_name: str = DEFAULT_TFDS_NAME,
    tfds_data_dir: str | None = None,
    filtered_split: str = "train",
    url_feature: str = URL_FEATURE,
  ):
    self._selection_dir = os.fspath(selection_dir)
    manifest = results.read_manifest(self._selection_dir)
    _check_corpus(manifest, tfds_name, self._selection_dir)
    self._num_selected = manifest["num_rows"]
    self._filtered_split = filtered_split
    self._url_feature = url_feature
    self._table: tf.lookup.StaticHashTable | None = None
    super().__init__(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir)

  @property
  def selection_dir(self) -> str:
    return self._selection_dir

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def _url_table(self) -> tf.lookup.StaticHashTable:
    if self._table is None:
      keys = [
        hash_urls(np.asarray(batch.column(0).to_pylist(), dtype=object))
        .numpy()
        .astype(np.int64)
        for batch in results.iter_results(
          self._selection_dir, columns=["id"], batch_rows=_HASH_BATCH
        )
      ]
      # Sorted and unique: duplicate keys are an error for the initializer.
      keys = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
      self._table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
          keys, tf.ones_like(keys, dtype=tf.int64)
        ),
        default_value=0,
      )
    return self._table

  def get_dataset(
    self,
    split: str | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
    *,
    sequence_length: Mapping[str, int] | None = None,
    use_cached: bool = False,
    num_epochs: int | None = 1,
  ) -> tf.data.Dataset:
    """Reads `split`; the train split holds only the selected examples."""
    split = split or self._filtered_split
    dataset = super().get_dataset(
      split,
      shuffle,
      seed,
      shard_info,
      sequence_length=sequence_length,
      use_cached=use_cached,
      num_epochs=num_epochs,
    )
    if split != self._filtered_split:
      return dataset
    table = self._url_table()
    feature = self._url_feature
    return dataset.filter(lambda ex: table.lookup(hash_urls(ex[feature])) > 0)

  def num_input_examples(self, split: str) -> int | None:
    if split == self._filtered_split:
      return self._num_selected
    return super().num_input_examples(split)


def _read_materialized_manifest(materialized_dir: str) -> dict[str, Any]:
  path = paths.join(materialized_dir, results.MANIFEST)
  if not paths.exists(path):
    raise ValueError(
      f"{materialized_dir}: no {results.MANIFEST}, so materialisation did "
      "not finish; rerun its `data-efficient materialize` command."
    )
  manifest = json.loads(paths.read_bytes(path))
  if manifest.get("kind") != MATERIALIZED_KIND:
    raise ValueError(
      f"{path}: not written by data_efficient.pretraining.materialize (kind "
      f"{manifest.get('kind')!r}); pass a materialised directory."
    )
  return manifest


def materialized_source(materialized_dir: str) -> seqio.TFExampleDataSource:
  """A source over the TFRecord splits `data_efficient.pretraining.materialize` wrote."""
  manifest = _read_materialized_manifest(materialized_dir)
  splits = manifest["splits"]
  return seqio.TFExampleDataSource(
    split_to_filepattern={
      split: os.path.join(materialized_dir, info["file_pattern"])
      for split, info in splits.items()
    },
    feature_description={
      TEXT_FEATURE: tf.io.FixedLenFeature([], tf.string),
      URL_FEATURE: tf.io.FixedLenFeature([], tf.string),
    },
    num_input_examples={
      split: info["num_examples"] for split, info in splits.items()
    },
  )


def _as_vocabulary(
  vocabulary: seqio.Vocabulary | str | None,
) -> seqio.Vocabulary:
  if vocabulary is None:
    return default_vocabulary()
  if isinstance(vocabulary, str):
    return seqio.SentencePieceVocabulary(vocabulary, DEFAULT_EXTRA_IDS)
  return vocabulary


def register_selection_task(
  name: str,
  selection_dir: str | None,
  *,
  tfds_name: str = DEFAULT_TFDS_NAME,
  tfds_data_dir: str | None = None,
  vocabulary: seqio.Vocabulary | str | None = None,
  materialized_dir: str | None = None,
  noise_density: float = span_corruption.NOISE_DENSITY,
  mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH,
  replace: bool = False,
) -> seqio.Task:
  """Registers 'c4_<name>_span_corruption' over a selected subset of C4.

  Args:
    name: The selection's name (letters, digits, underscores).
    selection_dir: A complete selection directory (`data-efficient select`):
      its `id` column holds the selected urls. May be None when
      `materialized_dir` is given.
    tfds_name: The TFDS dataset the selection was made from, with version.
    tfds_data_dir: TFDS data directory (e.g. 'gs://bucket/tfds').
    vocabulary: A `seqio.Vocabulary`, or the path of a SentencePiece model
      (loaded with 100 extra ids); default T5's cc_all.32000.100extra.
    materialized_dir: Directory written by `data_efficient.pretraining.materialize`; if
      given, both splits are read from its TFRecords instead of TFDS.
    noise_density: Span corruption's noise density.
    mean_noise_span_length: Span corruption's mean span length.
    replace: Replace a task already registered under this name (else an
      identical re-registration is a no-op and a different one an error).

  Returns:
    The registered task.

  Raises:
    ValueError: if the name is malformed, the directories are incomplete or
      do not match `tfds_name`, or the name is taken by another selection.
  """
  full_name = task_name(name)
  if materialized_dir is not None:
    source = materialized_source(materialized_dir)
    origin = ("materialized", materialized_dir)
  elif selection_dir is not None:
    source = SelectedTfdsDataSource(
      selection_dir, tfds_name=tfds_name, tfds_data_dir=tfds_data_dir
    )
    origin = ("selection", os.fspath(selection_dir))
  else:
    raise ValueError(
      f"register_selection_task({name!r}): give selection_dir or "
      "materialized_dir."
    )

  if full_name in seqio.TaskRegistry.names():
    existing = seqio.TaskRegistry.get(full_name)
    if replace:
      seqio.TaskRegistry.remove(full_name)
    elif getattr(existing, "_data_efficient_origin", None) == origin:
      return existing
    else:
      raise ValueError(
        f"task {full_name!r} is already registered for another source; "
        "pick another selection name or pass replace=True."
      )

  vocab = _as_vocabulary(vocabulary)
  output_features = {
    "inputs": seqio.Feature(vocab, add_eos=True, required=False),
    "targets": seqio.Feature(vocab, add_eos=True),
  }
  task = seqio.Task(
    full_name,
    source=source,
    output_features=output_features,
    preprocessors=[
      functools.partial(
        seqio.preprocessors.rekey, key_map={"targets": TEXT_FEATURE}
      ),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      functools.partial(
        span_corruption.span_corruption,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
      ),
      seqio.preprocessors.append_eos_after_trim,
    ],
    metric_fns=[],
  )
  task._data_efficient_origin = origin  # pylint: disable=protected-access
  seqio.TaskRegistry.add_provider(full_name, task)
  return task


def _is_materialized(directory: str) -> bool:
  path = paths.join(directory, results.MANIFEST)
  if not paths.exists(path):
    return False
  try:
    return json.loads(paths.read_bytes(path)).get("kind") == MATERIALIZED_KIND
  except ValueError:
    return False


def _register_dir(name: str, directory: str) -> seqio.Task:
  if _is_materialized(directory):
    return register_selection_task(name, None, materialized_dir=directory)
  return register_selection_task(name, directory)


def parse_selections(value: str) -> dict[str, str]:
  """Parses DATA_EFFICIENT_SELECTIONS: 'NAME=DIR[,NAME=DIR...]'."""
  pairs = {}
  for item in value.split(","):
    item = item.strip()
    if not item:
      continue
    name, sep, directory = item.partition("=")
    if not sep or not name.strip() or not directory.strip():
      raise ValueError(
        f"{SELECTIONS_ENV}: {item!r} is not NAME=DIR; write e.g. "
        f"{SELECTIONS_ENV}='askllm_20=/data/selection/askllm_20'."
      )
    pairs[name.strip()] = directory.strip()
  return pairs


def register_from_registry(path: str) -> list[seqio.Task]:
  """Registers the selections of a registry JSON file (see the docstring)."""
  try:
    entries = json.loads(paths.read_bytes(path))
  except ValueError as e:
    raise ValueError(f"{REGISTRY_ENV}={path}: not valid JSON ({e}).") from e
  if not isinstance(entries, dict):
    raise ValueError(
      f"{REGISTRY_ENV}={path}: must hold a JSON object mapping selection "
      "names to directories or to register_selection_task arguments."
    )
  tasks = []
  for name, entry in entries.items():
    if isinstance(entry, str):
      tasks.append(_register_dir(name, entry))
    elif isinstance(entry, dict):
      kwargs = dict(entry)
      selection_dir = kwargs.pop("selection_dir", None)
      try:
        tasks.append(register_selection_task(name, selection_dir, **kwargs))
      except TypeError as e:
        raise ValueError(f"{REGISTRY_ENV}={path}: entry {name!r}: {e}") from e
    else:
      raise ValueError(
        f"{REGISTRY_ENV}={path}: entry {name!r} must be a directory string "
        "or an object of register_selection_task arguments."
      )
  return tasks


def register_from_environment(
  environ: Mapping[str, str] | None = None,
) -> list[seqio.Task]:
  """Registers the selections named by DATA_EFFICIENT_REGISTRY/SELECTIONS."""
  environ = os.environ if environ is None else environ
  tasks = []
  if registry := environ.get(REGISTRY_ENV):
    tasks += register_from_registry(registry)
  for name, directory in parse_selections(
    environ.get(SELECTIONS_ENV, "")
  ).items():
    tasks.append(_register_dir(name, directory))
  return tasks


register_from_environment()
