"""`data-efficient demo`: the whole pipeline on real text, offline."""

from data_efficient.cli import summary
from data_efficient.stages.configs import DemoConfig as CONFIG

NAME = "demo"
HELP = (
  "The whole pipeline on real text, offline (score, embed, density, select, "
  "SeqIO, report)."
)


def run(config: CONFIG) -> summary.Summary:
  from data_efficient import demo

  result = demo.run(config)
  return summary.Summary(
    result,
    [
      "Source shares (%) of the corpus and of each selection:",
      demo.shares_table(result),
      f"summary: {result['summary']}",
      f"report: {result['report']}",
    ],
    f"open {result['report']} in a browser",
  )
