"""`data-efficient embed`: sentence embeddings of every example."""

from data_efficient.cli import summary
from data_efficient.stages.configs import EmbedConfig as CONFIG

NAME = "embed"
HELP = "Sentence-T5 embeddings of every example (DENSITY's input)."
DESCRIPTION = (
  "Embeds every record (encoder, mean pooling, Dense, L2 normalise). Rerun "
  "the same command after an interruption to resume."
)


def run(config: CONFIG) -> summary.Summary:
  from data_efficient.stages import embed

  out = config.run.output
  next_ = f"data-efficient density --embeddings {out} --output DENSITY_DIR"
  return summary.model_stage(NAME, out, embed.embed(config), next_)
