"""`data-efficient density`: DENSITY's kernel-sum scores."""

from data_efficient.cli import summary
from data_efficient.stages.configs import DensityConfig as CONFIG

NAME = "density"
HELP = "DENSITY: kernel-sum density of every embedding (RACE or exact)."
DESCRIPTION = (
  "Scores how crowded each example's neighbourhood is. Rerun the same "
  "command after an interruption to resume."
)


def adjust(args) -> None:
  """The sketch always estimates the 'lsh' kernel (--kernel is for exact)."""
  if args.estimator == "sketch":
    args.kernel = "lsh"


def run(config: CONFIG) -> int:
  from data_efficient.stages import density

  manifest = density.density(config)
  return summary.print_json(
    {
      "output": config.output,
      "rows": manifest["num_rows"],
      "bandwidth": manifest["run_config"]["bandwidth"],
    }
  )
