"""From score directories to a selection: the paper's samplers, seeded.

A selection directory is a results directory whose rows are the kept ids,
sorted, with a manifest naming the sampler, rate or k, seed, the inputs'
manifests and the counts. Every sampler is deterministic given the seed and
independent of how the scores were sharded (see `sampling`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from data_efficient.io import records
from data_efficient.io import scores as scores_lib
from data_efficient.runs import driver
from data_efficient.stages import configs, sampling

SAMPLERS = configs.SAMPLERS


def _aligned(
  inputs: Sequence[scores_lib.Scores],
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
  """(ids, kind -> values, problems), all in the order of sorted ids.

  Raises:
    ValueError: if two inputs score different sets of ids, or one kind is
      given twice.
  """
  base = inputs[0]
  order = np.argsort(base.ids, kind="stable")
  ids = base.ids[order]
  values = {}
  problems = base.problems[order]
  for s in inputs:
    if s.kind in values:
      raise ValueError(f"Two {s.kind} inputs given ({s.path}); pass one.")
    o = np.argsort(s.ids, kind="stable")
    if len(s.ids) != len(ids) or not np.array_equal(s.ids[o], ids):
      only = len(set(s.ids) ^ set(ids))
      raise ValueError(
        f"{s.path} and {base.path} score different examples ({only} ids "
        "in one but not the other): they come from different corpora or "
        "runs."
      )
    values[s.kind] = s.values[o]
  return ids, values, problems


def choose(
  sampler: str,
  inputs: Sequence[scores_lib.Scores],
  *,
  rate: float | None = None,
  k: int | None = None,
  seed: int = 0,
  quality_rate: float | None = None,
  excluded_problems: Sequence[str] = records.DEFAULT_EXCLUDED_PROBLEMS,
) -> tuple[np.ndarray, dict]:
  """Runs `sampler` over the aligned inputs.

  Args:
    sampler: A key of SAMPLERS.
    inputs: The score directories the sampler needs (`read_scores`); the
      `random` sampler needs any one, for the ids.
    rate: Fraction of the corpus to keep (`sampling.rate_to_k` rounding);
      k is counted over all rows, excluded ones included.
    k: Number to keep, instead of rate.
    seed: Seed of the random samplers.
    quality_rate: For askllm-then-ips: the Ask-LLM top fraction kept before
      inverse propensity sampling; at least rate.
    excluded_problems: Rows with any of these problems are never selected.

  Returns:
    (sorted selected ids, counts for the manifest).

  Raises:
    ValueError: on an unknown sampler, missing inputs, or bad rate/k.
  """
  if sampler not in SAMPLERS:
    raise ValueError(
      f"Unknown sampler {sampler!r}; choose from {list(SAMPLERS)}."
    )
  if not inputs:
    raise ValueError("Give at least one score directory (--scores).")
  needs = SAMPLERS[sampler][0]
  have = {s.kind for s in inputs}
  if missing := [n for n in needs if n not in have]:
    raise ValueError(
      f"sampler={sampler!r} needs {' and '.join(missing)} scores "
      f"({', '.join(scores_lib.PRODUCERS[m][1] for m in missing)} output)."
    )
  ids, values, problems = _aligned(inputs)
  n = len(ids)
  if (rate is None) == (k is None):
    raise ValueError("Give exactly one of --rate and --k.")
  k = sampling.rate_to_k(rate, n) if rate is not None else k
  excluded = np.asarray(
    [bool(set(p.split(",")) & set(excluded_problems)) for p in problems], bool
  )
  eligible = ~excluded
  # Perplexity is undefined (NaN) for examples too short to split.
  unscored = np.zeros(n, bool)
  if scores_lib.PERPLEXITY in values:
    unscored = ~np.isfinite(values[scores_lib.PERPLEXITY]) & eligible
    eligible &= ~unscored
  if k > eligible.sum():
    raise ValueError(
      f"k={k} is more than the {int(eligible.sum())} eligible examples "
      f"({int(excluded.sum())} excluded for problems {list(excluded_problems)})."
    )
  ids_e = ids[eligible]
  vals = {kind: v[eligible] for kind, v in values.items()}
  if sampler == "askllm-topk":
    chosen = sampling.top_k(ids_e, vals[scores_lib.QUALITY], k)
  elif sampler == "density-ips":
    chosen = sampling.inverse_propensity_sample(
      ids_e, vals[scores_lib.DENSITY], k, seed
    )
  elif sampler == "density-topk":
    chosen = sampling.top_k(ids_e, vals[scores_lib.DENSITY], k)
  elif sampler == "density-bottomk":
    chosen = sampling.bottom_k(ids_e, vals[scores_lib.DENSITY], k)
  elif sampler == "random":
    chosen = sampling.uniform_sample(ids_e, k, seed)
  elif sampler == "semdedup":
    # Removing the highest scores is SemDeDup at the eps that keeps k.
    chosen = sampling.bottom_k(ids_e, vals[scores_lib.SEMDEDUP], k)
  elif sampler == "prototypes":
    chosen = sampling.top_k(ids_e, vals[scores_lib.PROTOTYPES], k)
  elif sampler == "perplexity":
    chosen = sampling.bottom_k(ids_e, vals[scores_lib.PERPLEXITY], k)
  else:  # askllm-then-ips
    quality_rate = (
      quality_rate if quality_rate is not None else min(1.0, 2 * k / n)
    )
    top = sampling.rate_to_k(quality_rate, n)
    if top < k:
      raise ValueError(
        f"quality_rate={quality_rate} keeps {top} examples, fewer than "
        f"the {k} to select."
      )
    pool = np.isin(
      ids_e,
      sampling.top_k(ids_e, vals[scores_lib.QUALITY], min(top, len(ids_e))),
    )
    chosen = sampling.inverse_propensity_sample(
      ids_e[pool], vals[scores_lib.DENSITY][pool], k, seed
    )
  counts = {
    "num_examples": n,
    "num_excluded": int(excluded.sum()),
    "num_selected": len(chosen),
  }
  if unscored.any():
    counts["num_unscored"] = int(unscored.sum())
  if sampler == "askllm-then-ips":
    counts["quality_rate"] = quality_rate
  return chosen, counts


def selection_manifest(
  sampler: str,
  inputs: Sequence[scores_lib.Scores],
  counts: Mapping,
  *,
  rate: float | None,
  k: int | None,
  seed: int,
  excluded_problems: Sequence[str],
) -> dict:
  """Provenance of a selection directory."""
  corpus = inputs[0].manifest.get("run_config", {}).get("corpus")
  return {
    "stage": "select",
    "sampler": sampler,
    "description": SAMPLERS[sampler][1],
    "rate": rate,
    "k": k,
    "seed": seed,
    "excluded_problems": list(excluded_problems),
    "counts": dict(counts),
    "corpus": corpus,
    "inputs": [
      {
        "path": s.path,
        "kind": s.kind,
        "column": s.column,
        "manifest": s.manifest,
      }
      for s in inputs
    ],
  }


def select(config: configs.SelectConfig) -> dict:
  """The `select` stage: the kept ids, sorted, and the manifest."""
  import pyarrow as pa

  inputs = [scores_lib.read_scores(path) for path in config.scores]
  excluded = tuple(config.exclude_problems)
  chosen, counts = choose(
    config.sampler,
    inputs,
    rate=config.rate,
    k=config.k,
    seed=config.seed,
    quality_rate=config.quality_rate,
    excluded_problems=excluded,
  )

  def write_rows(writer):
    if writer.rows_done == 0:
      writer.write({"id": list(chosen)})
    return selection_manifest(
      config.sampler,
      inputs,
      counts,
      rate=config.rate,
      k=config.k,
      seed=config.seed,
      excluded_problems=excluded,
    )

  return driver.reduce(
    config.output,
    config.run_config(),
    pa.schema([("id", pa.string())]),
    1_000_000,
    write_rows,
    timed=False,
  )
