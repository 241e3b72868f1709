"""`data-efficient demo`: the whole pipeline on real text, offline."""

from data_efficient.stages.configs import DemoConfig as CONFIG

NAME = "demo"
HELP = (
  "The whole pipeline on real text, offline (score, embed, density, select, "
  "SeqIO, report)."
)


def run(config: CONFIG) -> int:
  from data_efficient import demo

  demo.run(config)
  return 0
