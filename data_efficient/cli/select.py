"""`data-efficient select`: a subset by one of the paper's samplers."""

from data_efficient.cli import summary
from data_efficient.stages.configs import SelectConfig as CONFIG

NAME = "select"
HELP = "Choose a subset from score directories with one of the samplers."
DESCRIPTION = (
  "Writes a selection directory: the kept ids, sorted, and a manifest with "
  "the sampler, rate, seed and the inputs' manifests."
)


def run(config: CONFIG) -> int:
  from data_efficient.stages import select

  manifest = select.select(config)
  return summary.print_json({"output": config.output, **manifest["counts"]})
