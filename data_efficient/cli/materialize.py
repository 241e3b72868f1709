"""`data-efficient materialize`: a selection's examples as TFRecords (Beam)."""

from data_efficient.stages.configs import MaterializeConfig as CONFIG

NAME = "materialize"
HELP = "Write a selection's examples as TFRecords (an Apache Beam job)."
DESCRIPTION = (
  "Joins a selection with its corpus by id and writes TFRecords for SeqIO; "
  "unknown flags go to Apache Beam (e.g. --runner=DataflowRunner)."
)
PASSES_UNKNOWN_FLAGS = True


def run(config: CONFIG, pipeline_args=()) -> int:
  import dataclasses
  import json
  import logging

  from data_efficient.pretraining import materialize

  logging.basicConfig(level=logging.INFO)
  config = dataclasses.replace(config, pipeline_args=tuple(pipeline_args))
  manifest = materialize.run(config)
  print(json.dumps(manifest["splits"], indent=2, sort_keys=True))
  return 0
