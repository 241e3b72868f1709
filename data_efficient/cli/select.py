"""`data-efficient select`: a subset by one of the paper's samplers."""

from data_efficient.cli import summary
from data_efficient.stages.configs import SelectConfig as CONFIG

NAME = "select"
HELP = "Choose a subset from score directories with one of the samplers."
DESCRIPTION = (
  "Writes a selection directory: the kept ids, sorted, and a manifest with "
  "the sampler, rate, seed and the inputs' manifests."
)


def run(config: CONFIG) -> summary.Summary:
  from data_efficient.stages import select

  manifest = select.select(config)
  if (other := summary.other_process(manifest, config.output)) is not None:
    return other
  counts = manifest["counts"]
  kept, n = counts["num_selected"], counts["num_examples"]
  lines = [
    f"select: {kept:,} of {n:,} examples ({kept / max(n, 1):.1%}) by "
    f"{config.sampler} -> {config.output}",
    f"left out: {counts['num_excluded']:,} rows with problems "
    f"({', '.join(config.exclude_problems) or 'none excluded'})",
  ]
  corpus = (manifest.get("corpus") or {}).get("spec", "CORPUS")
  return summary.Summary(
    {"stage": NAME, "output": config.output, **counts},
    lines,
    f"data-efficient materialize --selection {config.output} --input "
    f"{corpus} --output TFRECORDS_DIR (or the SeqIO task: "
    "docs/pretraining.md)",
  )
