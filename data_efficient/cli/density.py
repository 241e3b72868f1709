"""`data-efficient density`: DENSITY's kernel-sum scores."""

from data_efficient.cli import summary
from data_efficient.stages.configs import DensityConfig as CONFIG

NAME = "density"
HELP = "DENSITY: kernel-sum density of every embedding (RACE or exact)."
DESCRIPTION = (
  "Scores how crowded each example's neighbourhood is. Rerun the same "
  "command after an interruption to resume."
)


def run(config: CONFIG) -> summary.Summary:
  from data_efficient.stages import density

  manifest = density.density(config)
  if (other := summary.other_process(manifest, config.output)) is not None:
    return other
  bandwidth = manifest["run_config"]["bandwidth"]
  data = summary.reduction(NAME, manifest, config.output, bandwidth=bandwidth)
  return summary.Summary(
    data,
    [*summary.reduction_lines(data), f"bandwidth: {bandwidth:.4g}"],
    summary.next_select(config.output, "density-ips"),
  )
