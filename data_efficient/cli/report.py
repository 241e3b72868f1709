"""`data-efficient report`: one self-contained HTML page."""

from data_efficient.cli import summary
from data_efficient.stages.configs import ReportConfig as CONFIG

NAME = "report"
HELP = "One self-contained HTML page: scores, examples, selections."


def run(config: CONFIG) -> summary.Summary:
  from data_efficient import report

  report.report(config)
  return summary.Summary(
    {"output": config.output},
    [f"report: {config.output}"],
    f"open {config.output} in a browser",
  )
