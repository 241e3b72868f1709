"""`data-efficient report`: one self-contained HTML page."""

from data_efficient.stages.configs import ReportConfig as CONFIG

NAME = "report"
HELP = "One self-contained HTML page: scores, examples, selections."


def run(config: CONFIG) -> int:
  from data_efficient import report

  report.report(config)
  print(f"wrote {config.output}")
  return 0
