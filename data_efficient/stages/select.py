"""From score directories to a selection: the paper's samplers, seeded.

A selection directory is a results directory whose rows are the kept ids,
sorted (across its shards, in shard order), with a manifest naming the
sampler, rate or k, seed, the inputs' manifests and the counts. Every sampler
is deterministic given the seed and independent of how the scores were
sharded or ordered (see `sampling`), and of the number of processes.

Selection streams the score shards, in memory that does not grow with the
number of rows or the length of the ids (C4: 365M urls, some thousands of
characters long). Every sampler ranks the eligible rows by a per-item key and
keeps the first k (`ranking`): a counting pass, a few passes that find the
k-th row exactly, then a pass that keeps the rows at or before it, sorted in
runs on disk and merged (`sorted_runs`). askllm-then-ips ranks twice: its
pool is the Ask-LLM top, found the same way. Several inputs are joined by id
(`score_join`).

On many hosts (`--distributed`, or `--coordinator_address`,
`--num_processes`, `--process_id`) every process runs every pass over its
own share of the rows: of the one input's rows (`results.share`), or, for
several inputs, of the id-hash buckets, which every process first deals its
share of each input into. After each pass the processes add up their counts
and gather their small candidate sets (`ranking`), so all of them take the
same decisions. In the last pass each process sorts the ids it keeps into
runs; processes other than 0 leave theirs on the scratch directory, and
process 0 merges them with its own into the output's shards, the same rows
in the same order as one process writes (the others write one empty shard
each), then the manifest. The scratch, `SELECTION.scratch` beside the
output, must be on storage every process reaches (gs://, or a shared file
system); it holds the buckets (about the inputs' size) and their joined
copies, written by the first pass for the later ones, and the kept ids.
Memory per process: one batch of 65,536 rows of one input, or one bucket of
about 262,144 rows per input; the pass's sample (65,536 rows) or collected
rows (at most 262,144 rows or 64 MB of ids), gathered to every process;
32 MB of ids being sorted; and, on process 0, a batch of 1,024 ids per run
being merged.

A process that fails (an unreadable shard, a bad score) makes every process
fail at the end of that pass, with its error on process 0's output
(`sharding.all_or_none`). One that dies takes the job down: JAX's
distributed runtime ends the others when they miss its heartbeats (100 s),
or at once if it was process 0. The manifest is written only once every
process's rows are, so a rerun of the same command redoes the passes (they
keep no state) and resumes the output after process 0's whole shards; the
scratch is cleared first, so a killed run's cannot mix in.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_efficient import sharding
from data_efficient.io import paths, score_join, sorted_runs
from data_efficient.io import scores as scores_lib
from data_efficient.runs import driver
from data_efficient.stages import configs, ranking, sampling

SAMPLERS = configs.SAMPLERS
# Output shards of 2^18 ids (~18 MB of C4 urls), written 2^14 at a time: the
# writer holds one shard, this loop one write's Python strings.
_ROWS_PER_SHARD = 1 << 18
_WRITE_ROWS = 1 << 14

# How each sampler ranks, stage by stage: (score kind, rule); the first k of
# the last stage are kept, each earlier stage keeps the pool of the next.
_HIGHEST, _LOWEST, _IPS, _UNIFORM = "highest", "lowest", "ips", "uniform"
_RANKS: dict[str, tuple[tuple[str | None, str], ...]] = {
  "askllm-topk": ((scores_lib.QUALITY, _HIGHEST),),
  "density-ips": ((scores_lib.DENSITY, _IPS),),
  "density-topk": ((scores_lib.DENSITY, _HIGHEST),),
  "density-bottomk": ((scores_lib.DENSITY, _LOWEST),),
  "random": ((None, _UNIFORM),),
  # Removing the highest scores is SemDeDup at the eps that keeps k.
  "semdedup": ((scores_lib.SEMDEDUP, _LOWEST),),
  "prototypes": ((scores_lib.PROTOTYPES, _HIGHEST),),
  "perplexity": ((scores_lib.PERPLEXITY, _LOWEST),),
  "askllm-then-ips": (
    (scores_lib.QUALITY, _HIGHEST),
    (scores_lib.DENSITY, _IPS),
  ),
}


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What a pass needs to tell eligible rows and compute their keys."""

  sources: Mapping[str, scores_lib.ScoreSource]  # kind -> input
  excluded_problems: frozenset[str]
  seed: int


def _eligible(rows: score_join.Rows, plan: _Plan) -> tuple[np.ndarray, ...]:
  """[n] bool masks (eligible, excluded, unscored) of a batch."""
  problems = pc.dictionary_encode(pc.fill_null(rows.problems, ""))
  names = problems.dictionary.to_pylist()
  flags = np.asarray(
    [bool(set(p.split(",")) & plan.excluded_problems) for p in names] + [False]
  )
  excluded = flags[problems.indices.to_numpy(zero_copy_only=False)]
  # Perplexity is undefined (NaN) for examples too short to split.
  unscored = np.zeros(len(rows), bool)
  if scores_lib.PERPLEXITY in rows.values:
    unscored = ~np.isfinite(rows.values[scores_lib.PERPLEXITY]) & ~excluded
  return ~excluded & ~unscored, excluded, unscored


def _keys(
  rank: tuple[str | None, str],
  ids: pa.Array,
  values: Mapping[str, np.ndarray],
  plan: _Plan,
) -> np.ndarray:
  """[n] float64 keys of eligible rows under `rank` (larger comes first).

  Raises:
    ValueError: naming the file and id of a score that is not finite (or
      not > 0 for inverse propensity sampling).
  """
  kind, rule = rank
  names = ids.to_numpy(zero_copy_only=False)
  if rule == _UNIFORM:
    return sampling.id_uniforms(names, plan.seed)
  scores = values[kind]
  for bad, need in (
    (~np.isfinite(scores), "scores must be finite"),
    (scores <= 0, "inverse propensity sampling needs scores > 0"),
  ):
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      raise ValueError(
        f"{plan.sources[kind].path}: score of id {names[i]!r} is "
        f"{scores[i]}: {need} ({int(bad.sum())} in its batch are not); "
        "recompute that directory."
      )
    if rule != _IPS:
      break
  if rule == _IPS:
    keys = sampling.inverse_propensity_keys(names, scores, plan.seed)
  else:
    keys = scores if rule == _HIGHEST else -scores
  return keys + 0.0  # -0.0 -> 0.0: one key, as NumPy compares them.


def _ranked(
  joined: score_join.JoinedScores,
  ranks: Sequence[tuple[str | None, str]],
  boundaries: Sequence[ranking.Row],
  plan: _Plan,
) -> Iterator[tuple[np.ndarray | None, pa.Array]]:
  """One pass: (keys, ids) of the eligible rows at or before every boundary
  found so far, keys under the next stage's rank (None after the last)."""
  for rows in joined:
    index = np.flatnonzero(_eligible(rows, plan)[0])
    ids = rows.ids.take(index)
    values = {kind: v[index] for kind, v in rows.values.items()}
    keys = None
    for stage, rank in enumerate(ranks[: len(boundaries) + 1]):
      keys = _keys(rank, ids, values, plan)
      if stage == len(boundaries):
        break
      index = np.flatnonzero(ranking.at_or_before(keys, ids, boundaries[stage]))
      ids, keys = ids.take(index), None
      values = {kind: v[index] for kind, v in values.items()}
    yield keys, ids


def _counts(joined: score_join.JoinedScores, plan: _Plan) -> dict[str, int]:
  """The counting pass: examples, excluded, unscored and eligible rows (of
  every process)."""
  counts = np.zeros(4, np.int64)
  with sharding.all_or_none("select's counting pass"):
    for rows in joined:
      eligible, excluded, unscored = _eligible(rows, plan)
      counts += [len(rows), excluded.sum(), unscored.sum(), eligible.sum()]
  names = ("examples", "excluded", "unscored", "eligible")
  totals = sharding.process_sum_exact(counts).tolist()
  return dict(zip(names, totals, strict=True))


def _sizes(
  sampler: str,
  counts: Mapping[str, int],
  *,
  rate: float | None,
  k: int | None,
  quality_rate: float | None,
  excluded_problems: Sequence[str],
) -> tuple[list[int], float | None]:
  """How many each stage keeps, and askllm-then-ips's quality rate.

  Raises:
    ValueError: on a bad rate or k, k larger than the eligible rows, or a
      quality rate that keeps fewer than k.
  """
  n, eligible = counts["examples"], counts["eligible"]
  if (rate is None) == (k is None):
    raise ValueError("Give exactly one of --rate and --k.")
  k = sampling.rate_to_k(rate, n) if rate is not None else k
  if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 0:
    raise ValueError(f"k={k!r} must be an integer >= 0.")
  if not eligible:
    raise ValueError(
      f"There are no eligible examples to select from: all {n} are excluded "
      f"for problems {list(excluded_problems)} or unscored."
    )
  if k > eligible:
    raise ValueError(
      f"k={k} is more than the {eligible} eligible examples "
      f"({counts['excluded']} excluded for problems "
      f"{list(excluded_problems)}); lower --k or --rate."
    )
  if sampler != "askllm-then-ips":
    return [k], None
  quality_rate = (
    quality_rate if quality_rate is not None else min(1.0, 2 * k / n)
  )
  top = sampling.rate_to_k(quality_rate, n)
  if top < k or not top:
    raise ValueError(
      f"quality_rate={quality_rate} keeps {top} examples, fewer than "
      f"the {k} to select (or none)."
    )
  return [min(top, eligible), k], quality_rate


def _check_inputs(
  sampler: str, sources: Sequence[scores_lib.ScoreSource]
) -> None:
  """Raises ValueError on an unknown sampler or missing inputs."""
  if sampler not in SAMPLERS:
    raise ValueError(
      f"Unknown sampler {sampler!r}; choose from {list(SAMPLERS)}."
    )
  if not sources:
    raise ValueError("Give at least one score directory (--scores).")
  have = {s.kind for s in sources}
  if missing := [n for n in SAMPLERS[sampler][0] if n not in have]:
    raise ValueError(
      f"sampler={sampler!r} needs {' and '.join(missing)} scores "
      f"({', '.join(scores_lib.PRODUCERS[m][1] for m in missing)} output)."
    )


def selection_manifest(
  sampler: str,
  inputs: Sequence[scores_lib.ScoreSource],
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


def _write_kept(
  writer,
  kept: sorted_runs.SortedRuns,
  runs: Sequence[int],
  scratch: str,
  k: int,
) -> None:
  """Process 0: merges its kept ids with the other processes' `runs` and
  writes them all after the rows already written.

  Raises:
    RuntimeError: if the merged ids are not the k the passes found.
  """
  merged = heapq.merge(
    iter(kept),
    *(
      sorted_runs.read(_runs_dir(scratch, p), runs[p])
      for p in range(1, len(runs))
    ),
  )
  total = sum(1 for _ in itertools.islice(merged, writer.rows_done))
  while chunk := list(itertools.islice(merged, _WRITE_ROWS)):
    writer.write({"id": chunk})
    total += len(chunk)
  if total != k:
    raise RuntimeError(
      f"{total} ids kept, not the k={k} the passes found: {scratch} was "
      "changed while select ran; rerun the same command."
    )


def _runs_dir(scratch: str, process: int) -> str:
  return paths.join(scratch, f"runs-{process:05d}")


def select(config: configs.SelectConfig) -> dict:
  """The `select` stage: the kept ids, sorted, and the manifest.

  Every process of a multi-process job calls it (see the module docstring
  for what each one reads and writes).

  Returns:
    The manifest (on process 0; other processes get their row count).

  Raises:
    ValueError: on missing or mismatched inputs, a bad rate or k, k larger
      than the eligible rows, or a score that cannot be ranked (naming the
      file and id).
    results.OutputError: naming the shard, if one is unreadable; nothing is
      then marked complete.
    sharding.ProcessError: if another process failed (quoting its error).
  """
  config.processes.initialize()
  sources = [scores_lib.open_scores(path) for path in config.scores]
  _check_inputs(config.sampler, sources)
  excluded = tuple(config.exclude_problems)
  plan = _Plan({s.kind: s for s in sources}, frozenset(excluded), config.seed)
  ranks = _RANKS[config.sampler]
  manifest = driver.completed_run(config.output, config.run_config())
  if manifest is not None:
    return manifest
  index, count = jax.process_index(), jax.process_count()
  # Scratch beside the output: a request refused below leaves no output.
  scratch = driver.scratch_path(config.output)
  joined = score_join.JoinedScores(
    sources, scratch, process_index=index, process_count=count
  )
  with driver.scratch(scratch, "select"):
    with sharding.all_or_none("select's dealing of rows by id hash"):
      joined.deal()
    counts = _counts(joined, plan)
    sizes, quality_rate = _sizes(
      config.sampler,
      counts,
      rate=config.rate,
      k=config.k,
      quality_rate=config.quality_rate,
      excluded_problems=excluded,
    )
    boundaries = []
    for size in sizes:
      boundaries.append(
        ranking.kth(lambda: _ranked(joined, ranks, boundaries, plan), size)
      )
    manifest_counts = {
      "num_examples": counts["examples"],
      "num_excluded": counts["excluded"],
      "num_selected": sizes[-1],
    }
    if counts["unscored"]:
      manifest_counts["num_unscored"] = counts["unscored"]
    if quality_rate is not None:
      manifest_counts["quality_rate"] = quality_rate

    def write_rows(writer):
      kept = sorted_runs.SortedRuns(_runs_dir(scratch, index))
      with sharding.all_or_none("select's pass keeping the selection"):
        for _, ids in _ranked(joined, ranks, boundaries, plan):
          kept.add(ids)
        runs = kept.close() if index else 0
      runs = sharding.process_sum_exact(
        np.eye(count, dtype=np.int64)[index] * runs
      )
      with sharding.all_or_none("select's merge of the kept ids"):
        if index == 0:
          _write_kept(writer, kept, runs.tolist(), scratch, sizes[-1])
      return selection_manifest(
        config.sampler,
        sources,
        manifest_counts,
        rate=config.rate,
        k=config.k,
        seed=config.seed,
        excluded_problems=excluded,
      )

    return driver.reduce(
      config.output,
      config.run_config(),
      pa.schema([("id", pa.string())]),
      _ROWS_PER_SHARD,
      write_rows,
      timed=False,
    )
