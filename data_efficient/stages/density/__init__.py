"""DENSITY scores: kernel sums over embeddings, exact or by RACE sketch.

- `kernels`: the kernel functions and their default bandwidth rule.
- `exact`: blocked, mesh-sharded exact kernel sums (the ground truth).
- `sketch`: the RACE sketch (p-stable LSH counts), two streaming passes.
- `run`: the stage (`density(config)`): embeddings in, scores out.
"""

from data_efficient.stages.density import exact, kernels, sketch
from data_efficient.stages.density.exact import kernel_sums
from data_efficient.stages.density.kernels import (
  KERNELS,
  Kernel,
  default_bandwidth,
  kernel_matrix,
  lsh_collision_probability,
)
from data_efficient.stages.density.run import density
from data_efficient.stages.density.sketch import RaceSketch

__all__ = [
  "KERNELS",
  "Kernel",
  "RaceSketch",
  "default_bandwidth",
  "density",
  "exact",
  "kernel_matrix",
  "kernel_sums",
  "kernels",
  "lsh_collision_probability",
  "sketch",
]
