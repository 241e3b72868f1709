"""The cluster stage: k-means of the embeddings, then SemDeDup or SSL-prototype
scores.

- `kmeans`: streaming, sharded k-means (spherical or Euclidean).
- `baselines`: SemDeDup and prototype scores, and the stage
  (`cluster(config)`).
"""

from data_efficient.stages.cluster.baselines import cluster

__all__ = ["cluster"]
