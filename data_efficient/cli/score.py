"""`data-efficient score`: Ask-LLM P('yes') for every example."""

from data_efficient.cli import summary
from data_efficient.stages.configs import ScoreConfig as CONFIG

NAME = "score"
HELP = "Ask-LLM: P('yes') of Flan-T5 for every example."
DESCRIPTION = (
  "Scores every record with the paper's Ask-LLM prompt. Rerun the same "
  "command after an interruption to resume."
)


def run(config: CONFIG) -> summary.Summary:
  from data_efficient.stages import askllm

  out = config.run.output
  next_ = summary.next_select(out, "askllm-topk")
  return summary.model_stage(NAME, out, askllm.score(config), next_)
