"""`data-efficient convert`: any supported checkpoint -> Orbax."""

from data_efficient.cli import summary
from data_efficient.stages.configs import ConvertConfig as CONFIG

NAME = "convert"
HELP = "Any supported checkpoint -> an Orbax checkpoint (+ config)."
DESCRIPTION = (
  "Reads a T5X (legacy or Orbax), Hugging Face or sentence-transformers "
  "checkpoint and writes an Orbax checkpoint of the parameters plus the "
  "model config, which every stage's --checkpoint restores sharded onto its "
  "mesh."
)


def run(config: CONFIG) -> summary.Summary:
  import dataclasses

  from data_efficient.models import checkpoints

  model_config = checkpoints.convert(
    config.checkpoint, config.output, model=config.model, dtype=config.dtype
  )
  return summary.Summary(
    {
      "output": config.output,
      "model_config": dataclasses.asdict(model_config),
      "vocab": checkpoints.vocab_file(config.output),
    },
    [f"convert: {config.checkpoint} -> {config.output} ({model_config})"],
    f"data-efficient score --checkpoint {config.output} --input CORPUS "
    "--output SCORES_DIR",
  )
