"""The offline demo: the whole pipeline on real text (`data-efficient demo`)."""

from data_efficient.demo.pipeline import (
  SAMPLERS,
  SUMMARY_FILE,
  run,
  shares_table,
)

__all__ = ["SAMPLERS", "SUMMARY_FILE", "run", "shares_table"]
