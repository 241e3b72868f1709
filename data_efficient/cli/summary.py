"""What a finished command prints: a short summary for people, or with
`--json` the machine-readable one.

Every subcommand's `run` returns a `Summary`; `cli.main` prints one form.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Summary:
  """The end of a command.

  Attributes:
    data: The machine-readable summary (`--json`).
    lines: The human summary: what was written, where, how fast.
    next: The command to run next, if there is an obvious one.
  """

  data: Mapping[str, Any]
  lines: Sequence[str] = ()
  next: str | None = None

  def text(self) -> str:
    """The human form."""
    lines = list(self.lines)
    if self.next:
      lines.append(f"next: {self.next}")
    return "\n".join(lines)

  def json(self) -> str:
    """The machine-readable form: indented JSON."""
    return json.dumps(self.data, indent=2)


def next_select(scores_dir: str, sampler: str) -> str:
  """The `select` command over a score directory."""
  return (
    f"data-efficient select --scores {scores_dir} --sampler {sampler} "
    "--rate 0.2 --output SELECTION_DIR"
  )


def problems(counts: Mapping[str, int]) -> str:
  """'problems: none', or each problem with its row count."""
  if not counts:
    return "problems: none"
  return "problems: " + ", ".join(f"{k} {v}" for k, v in counts.items())


def reduction(stage: str, manifest: Mapping, output: str, **data) -> dict:
  """The JSON summary of a reduction (density, cluster): rows, problems,
  seconds and `data`."""
  return {
    "stage": stage,
    "output": output,
    "rows": manifest["num_rows"],
    "problems": manifest.get("problems", {}),
    "seconds": manifest.get("seconds"),
    **data,
  }


def reduction_lines(data: Mapping) -> list[str]:
  """The human lines of a `reduction` summary."""
  seconds = data["seconds"]
  rate = f", {data['rows'] / max(seconds, 1e-9):,.0f} rows/s" if seconds else ""
  return [
    f"{data['stage']}: {data['rows']:,} rows -> {data['output']}{rate}",
    problems(data["problems"]),
  ]


def other_process(manifest: Mapping, output: str) -> Summary | None:
  """The summary of a process other than 0 of a multi-process job, whose
  stage returns its own row count (`{"process_index", "rows"}`) as process 0
  writes the manifest; None for a manifest."""
  if "num_rows" in manifest:
    return None
  rows = manifest["rows"]
  index = manifest["process_index"]
  return Summary(
    dict(manifest),
    [
      f"process {index}: {rows:,} rows -> {output} (process 0 writes the "
      "manifest)"
    ],  # fmt: skip
  )


def model_stage(stage: str, output: str, manifest: Mapping, next_: str):
  """The summary of a model stage (score, embed, perplexity)."""
  if (other := other_process(manifest, output)) is not None:
    return other
  stats = [p["stats"] for p in manifest.get("processes", [])]
  data = {
    "stage": stage,
    "output": output,
    "rows": manifest["num_rows"],
    "problems": manifest.get("problems", {}),
    "vocabulary": manifest.get("vocabulary"),
    "docs_per_second": [s["docs_per_second"] for s in stats],
    "padding_fraction": [s["padding_fraction"] for s in stats],
    "host_seconds": [round(s["host_seconds"], 2) for s in stats],
    "device_seconds": [round(s["device_seconds"], 2) for s in stats],
  }
  lines = [f"{stage}: {data['rows']:,} rows -> {output}"]
  lines.append(problems(data["problems"]))
  if stats:
    rate = sum(data["docs_per_second"])
    padding = max(data["padding_fraction"])
    lines.append(f"rate: {rate:,.1f} docs/s, padding {padding:.1%}")
  if data["vocabulary"]:
    lines.append(f"vocabulary: {data['vocabulary']['path']}")
  return Summary(data, lines, next_)
