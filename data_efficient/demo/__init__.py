"""The offline demo: the whole pipeline on real text (`data-efficient demo`)."""

from data_efficient.demo.pipeline import SAMPLERS, run

__all__ = ["SAMPLERS", "run"]
