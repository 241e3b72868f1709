"""`data-efficient cluster`: SemDeDup or SSL-prototype scores."""

from data_efficient.cli import summary
from data_efficient.stages.configs import ClusterConfig as CONFIG

NAME = "cluster"
HELP = "SemDeDup or SSL-prototype scores from k-means of the embeddings."
DESCRIPTION = (
  "Spherical (cosine) k-means of the embeddings, streaming and sharded over "
  "all devices, then one score per example: 'semdedup' (its largest cosine "
  "similarity to a cluster-mate farther from the centroid; select --sampler "
  "semdedup keeps the lowest) or 'prototypes' (its distance to the nearest "
  "centroid; select --sampler prototypes keeps the farthest). k-means saves "
  "its centroids every --checkpoint_every iterations "
  "(OUTPUT/kmeans_checkpoints): rerun the same command after an "
  "interruption to resume."
)


def run(config: CONFIG) -> int:
  from data_efficient.stages import cluster

  manifest = cluster.cluster(config)
  clustering = manifest["clustering"]
  out = {"output": config.output, "rows": manifest["num_rows"]}
  out.update({k: clustering[k] for k in ("empty_clusters", "cluster_size")})
  if config.method == "semdedup":
    out.update(
      num_kept=clustering["num_kept"], num_removed=clustering["num_removed"]
    )
  return summary.print_json(out)
