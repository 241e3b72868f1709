"""Score directories: what each stage's output contributes to a selection.

A score directory is a results directory (`results`) written by `score`,
`density`, `cluster` or `perplexity`; its manifest's `stage` says which kind
of score it holds and which column is the score. Select and the report
stream them through `open_scores`; nothing reads a whole directory into
memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pyarrow as pa

from data_efficient.io import results

# Which score a stage's directory contributes, by the manifest's `stage`.
QUALITY, DENSITY = "quality", "density"
SEMDEDUP, PROTOTYPES = "semdedup", "prototypes"
PERPLEXITY = "perplexity"

# kind -> (default score column, the command that writes it)
PRODUCERS = {
  QUALITY: ("p_yes", "data-efficient score"),
  DENSITY: ("density", "data-efficient density"),
  SEMDEDUP: ("semdedup_similarity", "data-efficient cluster --method semdedup"),
  PROTOTYPES: (
    "centroid_distance",
    "data-efficient cluster --method prototypes",
  ),
  PERPLEXITY: ("mean_nll", "data-efficient perplexity"),
}


@dataclasses.dataclass(frozen=True)
class ScoreSource:
  """One stage's score directory, streamed rather than read whole."""

  kind: str  # QUALITY, DENSITY, SEMDEDUP, PROTOTYPES or PERPLEXITY
  path: str
  column: str
  manifest: dict

  @property
  def num_rows(self) -> int:
    return self.manifest["num_rows"]

  def batches(
    self, batch_rows: int = 65_536, rows: range | None = None
  ) -> Iterator[pa.RecordBatch]:
    """Record batches of (id, problem, score column), in shard order.

    Args:
      batch_rows: Most rows per batch.
      rows: Only these rows (e.g. a process's `results.share`); default all.

    Raises:
      results.OutputError: naming the shard, if one is unreadable.
    """
    return results.iter_results(
      self.path, ["id", "problem", self.column], batch_rows, rows
    )


def open_scores(path: str, column: str | None = None) -> ScoreSource:
  """Opens a `score`, `density`, `cluster` or `perplexity` output directory.

  Raises:
    ValueError: if the directory holds no scores.
  """
  manifest = results.read_manifest(path)
  stage = manifest.get("stage")
  if stage == "score":
    kind, column = QUALITY, column or manifest.get("score_column", "p_yes")
  elif stage in (DENSITY, SEMDEDUP, PROTOTYPES, PERPLEXITY):
    kind, column = stage, column or PRODUCERS[stage][0]
  else:
    raise ValueError(
      f"{path}: a '{stage}' directory holds no scores to select by; pass "
      "the output of `data-efficient score`, `density`, `cluster` or "
      "`perplexity`."
    )
  return ScoreSource(kind=kind, path=path, column=column, manifest=manifest)
