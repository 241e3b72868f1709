"""`data-efficient cluster`: SemDeDup or SSL-prototype scores."""

from data_efficient.cli import summary
from data_efficient.stages import configs
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
  "interruption to resume. On a pod, run it on every host with "
  "--distributed: each host reads and writes its share of the rows."
)


def run(config: CONFIG) -> summary.Summary:
  from data_efficient.stages import cluster

  manifest = cluster.cluster(config)
  if (other := summary.other_process(manifest, config.output)) is not None:
    return other
  clustering = manifest["clustering"]
  keys = ["empty_clusters", "cluster_size"]
  if config.method == configs.SEMDEDUP:
    keys += ["num_kept", "num_removed"]
  data = summary.reduction(
    config.method, manifest, config.output, **{k: clustering[k] for k in keys}
  )
  lines = summary.reduction_lines(data)
  lines.append(f"empty clusters: {data['empty_clusters']}")
  if config.method == configs.SEMDEDUP:
    lines.append(
      f"near-duplicates: {data['num_removed']:,} removed, "
      f"{data['num_kept']:,} kept (--eps {config.eps})"
    )
  return summary.Summary(
    data,
    lines,
    summary.next_select(config.output, config.method),
  )
