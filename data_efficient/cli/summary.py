"""What a finished stage prints: a JSON summary on stdout."""

from __future__ import annotations

import json
from typing import Any


def print_json(summary: Any) -> int:
  """Prints `summary` as indented JSON; exit code 0."""
  print(json.dumps(summary, indent=2))
  return 0


def print_model_stage(manifest: dict) -> int:
  """The end-of-run summary of a model stage (process 0 only)."""
  if "num_rows" not in manifest:
    return 0
  stats = [p["stats"] for p in manifest.get("processes", [])]
  return print_json(
    {
      "rows": manifest["num_rows"],
      "problems": manifest.get("problems", {}),
      "docs_per_second": [s["docs_per_second"] for s in stats],
      "padding_fraction": [s["padding_fraction"] for s in stats],
      "host_seconds": [round(s["host_seconds"], 2) for s in stats],
      "device_seconds": [round(s["device_seconds"], 2) for s in stats],
    }
  )
