"""`data-efficient materialize`: a selection's examples as TFRecords (Beam)."""

from data_efficient.cli import summary
from data_efficient.stages.configs import MaterializeConfig as CONFIG

NAME = "materialize"
HELP = "Write a selection's examples as TFRecords (an Apache Beam job)."
DESCRIPTION = (
  "Joins a selection with its corpus by id and writes TFRecords for SeqIO; "
  "unknown flags go to Apache Beam (e.g. --runner=DataflowRunner)."
)
PASSES_UNKNOWN_FLAGS = True


def run(config: CONFIG, pipeline_args=()) -> summary.Summary:
  import dataclasses
  import logging

  from data_efficient.pretraining import materialize

  logging.basicConfig(level=logging.INFO)
  config = dataclasses.replace(config, pipeline_args=tuple(pipeline_args))
  manifest = materialize.run(config)
  splits = manifest["splits"]
  lines = [f"materialize: -> {config.output}"]
  lines += [
    f"{name}: {split['num_examples']:,} examples ({split['file_pattern']})"
    for name, split in sorted(splits.items())
  ]
  lines.append(f"ids not found in the corpus: {manifest['missing_ids']:,}")
  return summary.Summary(
    {"output": config.output, "splits": splits},
    lines,
    "register the SeqIO task over it and train with T5X: docs/pretraining.md",
  )
