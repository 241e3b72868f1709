"""`data-efficient perplexity`: the perplexity-filter baseline."""

from data_efficient.cli import summary
from data_efficient.stages.configs import PerplexityConfig as CONFIG

NAME = "perplexity"
HELP = "Perplexity-filter baseline: mean token NLL under a prefix-LM T5."
DESCRIPTION = (
  "Scores every record by the mean negative log-likelihood of its second "
  "half given its first half (docs/perplexity.md), under a T5 1.1 "
  "LM-adapted checkpoint. Rerun the same command to resume."
)


def run(config: CONFIG) -> summary.Summary:
  from data_efficient.stages import perplexity

  out = config.run.output
  next_ = summary.next_select(out, "perplexity")
  return summary.model_stage(NAME, out, perplexity.perplexity(config), next_)
