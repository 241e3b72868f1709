"""Tests of `data-efficient select` over score and density directories."""

import dataclasses
import functools
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest

from data_efficient.io import records, results, score_join, sorted_runs
from data_efficient.io import scores as scores_lib
from data_efficient.stages import configs, ranking, sampling, select


@dataclasses.dataclass(frozen=True)
class InMemoryScores:
  """One score per id of a whole score directory (the reference's input)."""

  kind: str
  path: str
  column: str
  ids: np.ndarray  # [n] str
  values: np.ndarray  # [n] float64
  problems: np.ndarray  # [n] str ('' = none)
  manifest: dict


def read_in_memory(path: str) -> InMemoryScores:
  """A score directory read whole, as the in-memory selection did."""
  source = scores_lib.open_scores(path)
  table = results.read_results(path, columns=["id", "problem", source.column])
  problems = table.column("problem").to_pylist()
  return InMemoryScores(
    kind=source.kind,
    path=path,
    column=source.column,
    ids=np.asarray(table.column("id").to_pylist(), dtype=object),
    values=table.column(source.column)
    .to_numpy(zero_copy_only=False)
    .astype(np.float64),
    problems=np.asarray([p or "" for p in problems], dtype=object),
    manifest=source.manifest,
  )


def _aligned(
  inputs: Sequence[InMemoryScores],
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


def choose_in_memory(
  sampler: str,
  inputs: Sequence[InMemoryScores],
  *,
  rate: float | None = None,
  k: int | None = None,
  seed: int = 0,
  quality_rate: float | None = None,
  excluded_problems: Sequence[str] = records.DEFAULT_EXCLUDED_PROBLEMS,
) -> tuple[np.ndarray, dict]:
  """The merge branch's in-memory `select.choose`: the reference."""
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
        f"--quality_rate {quality_rate} keeps {top} examples, fewer than "
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


def write_dir(path, stage, column, ids, values, problems=None, *,
              rows_per_shard=4, processes=1):  # fmt: skip
  """A score directory; process p of `processes` writes every p-th row."""
  schema = pa.schema(
    [("id", pa.string()), ("problem", pa.string()), (column, pa.float32())]
  )
  problems = problems or [None] * len(ids)
  for p in range(processes):
    writer = results.ResultWriter(
      path,
      schema,
      process_index=p,
      process_count=processes,
      rows_per_shard=rows_per_shard,
      run_config={"stage": stage},
    )
    for start in range(p, len(ids), processes * rows_per_shard):
      rows = slice(start, start + processes * rows_per_shard, processes)
      writer.write(
        {
          "id": ids[rows],
          "problem": problems[rows],
          column: np.asarray(values[rows], np.float32),
        }
      )
    writer.close()
  extra = {"score_column": column} if stage == "score" else {}
  results.write_manifest(path, {"stage": stage, **extra})
  return str(path)


def run_select(output, paths, sampler, **settings):
  """The stage's (ids, manifest)."""
  config = configs.SelectConfig(
    scores=tuple(paths), sampler=sampler, output=str(output), **settings
  )
  manifest = select.select(config)
  return results.read_results(output).column("id").to_pylist(), manifest


IDS = [f"d{i}" for i in range(10)]
QUALITY = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5, 0.05]
DENSITY = [5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0, 10.0]


@pytest.fixture
def dirs(tmp_path):
  problems = [None] * 9 + ["malformed_json"]
  q = write_dir(tmp_path / "q", "score", "p_yes", IDS[::-1],
                QUALITY[::-1], problems[::-1])  # fmt: skip
  d = write_dir(tmp_path / "d", "density", "density", IDS, DENSITY, problems)
  return q, d


def run(tmp_path, **settings):
  out = tmp_path / "sel"
  manifest = select.select(configs.SelectConfig(output=str(out), **settings))
  assert manifest == results.read_manifest(out)
  return results.read_results(out).column("id").to_pylist(), manifest


def test_askllm_topk_keeps_the_highest_scores(tmp_path, dirs):
  ids, manifest = run(
    tmp_path, scores=(dirs[0],), sampler="askllm-topk", rate=0.3
  )
  assert ids == ["d0", "d2", "d4"]
  assert manifest["counts"] == {
    "num_examples": 10,
    "num_excluded": 1,
    "num_selected": 3,
  }
  assert manifest["sampler"] == "askllm-topk" and manifest["seed"] == 0
  assert not os.path.exists(tmp_path / "sel.scratch")


def test_density_topk_and_bottomk_skip_excluded_rows(tmp_path, dirs):
  ids, _ = run(tmp_path, scores=(dirs[1],), sampler="density-bottomk", k=2)
  assert ids == ["d1", "d3"]
  top, _ = run_select(tmp_path / "top", dirs[1:], "density-topk", k=2)
  assert top == ["d5", "d6"]  # d9 (density 10) is malformed: excluded


def test_seeded_samplers_are_deterministic_and_differ_by_seed(tmp_path, dirs):
  for sampler in ("density-ips", "random", "askllm-then-ips"):
    a, _ = run_select(tmp_path / f"{sampler}a", dirs, sampler, k=4, seed=1)
    b, _ = run_select(
      tmp_path / f"{sampler}b", dirs[::-1], sampler, k=4, seed=1
    )
    assert a == b and "d9" not in a and len(set(a)) == 4
  seeds = {
    tuple(run_select(tmp_path / f"r{s}", dirs, "random", k=4, seed=s)[0])
    for s in range(5)
  }
  assert len(seeds) > 1


def test_askllm_then_ips_samples_within_the_quality_top(tmp_path, dirs):
  chosen, manifest = run_select(
    tmp_path / "sel", dirs, "askllm-then-ips", k=3, quality_rate=0.4
  )
  assert set(chosen) <= {"d0", "d2", "d4", "d6"}
  assert manifest["counts"]["quality_rate"] == 0.4


def test_bad_requests_are_clear_errors(tmp_path, dirs):
  with pytest.raises(ValueError, match="needs density"):
    run_select(tmp_path / "a", dirs[:1], "density-ips", k=1)
  with pytest.raises(ValueError, match="more than the 9 eligible examples"):
    run_select(tmp_path / "b", dirs[:1], "askllm-topk", k=10)
  assert not os.path.exists(tmp_path / "b")
  other = write_dir(tmp_path / "o", "density", "density", IDS[:9], DENSITY[:9])
  with pytest.raises(ValueError, match="different examples: id 'd9' is in"):
    run_select(tmp_path / "c", [dirs[0], other], "askllm-then-ips", k=1)
  with pytest.raises(ValueError, match="Two density inputs"):
    run_select(tmp_path / "e", [dirs[1], other], "density-ips", k=1)


def corpus(seed, n=90):
  """Ids of C4-like varied lengths (one of 2000 characters), scores with
  ties, some excluded problems and unscored (NaN) perplexities."""
  rng = np.random.default_rng(seed)
  lengths = rng.choice([0, 3, 40, 70, 300], n)
  lengths[n // 2] = 2000
  ids = [
    f"https://s{i}.example/" + "".join(rng.choice(list("az/é-%Z"), m))
    for i, m in enumerate(lengths)
  ]
  ids[n // 3] = ids[n // 3][:22]  # Prefix-sharing ids.
  problems = rng.choice(
    [None, None, None, "truncated", "malformed_json", "empty,duplicate_id"], n
  ).tolist()
  values = {
    "quality": rng.choice([0.1, 0.5, 0.5, 0.9], n)
    + rng.random(n) * 0.01 * (rng.random(n) < 0.5),
    "density": rng.choice([1.0, 2.0, 2.0, 3.0], n) * rng.choice([1, 1.5], n),
    "semdedup": rng.choice([0.0, 0.0, 0.3, 0.99], n),
    "prototypes": rng.random(n).round(1),
    "perplexity": np.where(rng.random(n) < 0.2, np.nan, rng.random(n) * 5),
  }
  return np.asarray(ids, object), np.asarray(problems, object), values


STAGES = {
  "quality": ("score", "p_yes"),
  "density": ("density", "density"),
  "semdedup": ("semdedup", "semdedup_similarity"),
  "prototypes": ("prototypes", "centroid_distance"),
  "perplexity": ("perplexity", "mean_nll"),
}


def write_score_dirs(root) -> dict[str, str]:
  """kind -> directory under `root`, each in its own row order, shard size
  and process count."""
  ids, problems, values = corpus(seed=0)
  rng = np.random.default_rng(1)
  out = {}
  for i, (kind, (stage, column)) in enumerate(STAGES.items()):
    order = rng.permutation(len(ids))
    out[kind] = write_dir(root / kind, stage, column, ids[order],
                          values[kind][order], list(problems[order]),
                          rows_per_shard=3 + 4 * i,
                          processes=1 + i % 2)  # fmt: skip
  return out


@pytest.fixture
def score_dirs(tmp_path):
  return write_score_dirs(tmp_path)


def use_small_memory(setattr_=setattr):
  """Tiny buckets, samples, collections and sorted runs: every pass and
  merge of the bounded-memory path runs on small inputs (`setattr_`:
  monkeypatch's, or plain setattr in a job's process)."""
  kth = functools.partial(
    ranking.kth, sample_rows=8, collect_rows=6, collect_bytes=400
  )
  setattr_(ranking, "kth", kth)
  setattr_(
    score_join,
    "JoinedScores",
    functools.partial(score_join.JoinedScores, bucket_rows=7, batch_rows=5),
  )
  setattr_(
    sorted_runs,
    "SortedRuns",
    functools.partial(sorted_runs.SortedRuns, run_bytes=200),
  )


@pytest.fixture
def small_memory(monkeypatch):
  use_small_memory(monkeypatch.setattr)


SAMPLER_INPUTS = {
  "askllm-topk": ["quality"],
  "density-ips": ["density", "quality"],
  "density-topk": ["density"],
  "density-bottomk": ["density"],
  "random": ["prototypes", "perplexity"],
  "askllm-then-ips": ["quality", "density"],
  "perplexity": ["perplexity"],
  "semdedup": ["semdedup", "density", "quality"],
  "prototypes": ["prototypes"],
}


@pytest.mark.parametrize("sampler", list(SAMPLER_INPUTS))
@pytest.mark.parametrize("reverse", [False, True])
def test_streaming_selection_equals_the_in_memory_one(
  sampler, reverse, tmp_path, score_dirs, small_memory
):
  paths = [score_dirs[kind] for kind in SAMPLER_INPUTS[sampler]]
  paths = paths[::-1] if reverse else paths
  inputs = [read_in_memory(p) for p in paths]
  for i, size in enumerate([{"rate": 0.3}, {"k": 1}, {"k": 0}]):
    settings = dict(size, seed=3)
    if sampler == "askllm-then-ips":
      settings["quality_rate"] = 0.5
    want, counts = choose_in_memory(sampler, inputs, **settings)
    got, manifest = run_select(tmp_path / f"sel{i}", paths, sampler,
                               **settings)  # fmt: skip
    assert got == list(want)
    assert manifest["counts"] == counts


def test_selection_does_not_depend_on_shards_or_processes(tmp_path):
  ids, problems, values = corpus(seed=2)
  rng = np.random.default_rng(3)
  chosen = set()
  for i, processes in enumerate([1, 2, 3]):
    order = rng.permutation(len(ids))
    path = write_dir(tmp_path / f"d{i}", "density", "density", ids[order],
                     values["density"][order], list(problems[order]),
                     rows_per_shard=2 + 5 * i,
                     processes=processes)  # fmt: skip
    got, _ = run_select(tmp_path / f"sel{i}", [path], "density-ips", rate=0.4)
    chosen.add(tuple(got))
  assert len(chosen) == 1


def test_a_corrupt_shard_is_named_and_nothing_is_complete(tmp_path):
  ids = [f"https://example.com/{i:04d}" for i in range(5000)]
  rng = np.random.default_rng(0)
  path = write_dir(tmp_path / "d", "density", "density", np.asarray(ids),
                   rng.random(5000) + 0.5, rows_per_shard=1000)  # fmt: skip
  shard = os.path.join(path, results.read_manifest(path)["shards"][2]["file"])
  data = bytearray(open(shard, "rb").read())
  data[100:3000] = rng.integers(0, 256, 2900, dtype=np.uint8).tobytes()
  with open(shard, "wb") as f:
    f.write(data)
  out = tmp_path / "sel"
  with pytest.raises(results.OutputError, match=shard):
    run_select(out, [path], "density-ips", rate=0.5)
  assert not os.path.exists(out / results.MANIFEST)


def test_a_repeated_id_marked_duplicate_joins_copy_by_copy(tmp_path):
  """A corpus read with on_error='mark' scores a repeated id twice (the
  second copy marked duplicate_id); select joins its inputs copy by copy,
  leaves the marked copy out, and agrees with the in-memory reference."""
  ids = [*IDS, "d3"]
  problems = [None] * 10 + ["duplicate_id"]
  q = write_dir(tmp_path / "q", "score", "p_yes", ids, [*QUALITY, 0.99],
                problems)  # fmt: skip
  d = write_dir(tmp_path / "d", "density", "density", ids, [*DENSITY, 0.5],
                problems, rows_per_shard=3)  # fmt: skip
  for sampler in ("askllm-topk", "askllm-then-ips", "density-ips"):
    got, manifest = run_select(tmp_path / sampler, [q, d], sampler, k=4)
    inputs = [read_in_memory(p) for p in (q, d)]
    want, counts = choose_in_memory(sampler, inputs, k=4)
    assert got == sorted(want) and manifest["counts"] == counts
    assert manifest["counts"]["num_excluded"] == 1
  other = write_dir(tmp_path / "o", "density", "density", IDS, DENSITY)
  with pytest.raises(ValueError, match="'d3' a different number of times"):
    run_select(tmp_path / "bad", [q, other], "askllm-then-ips", k=1)


def test_later_passes_read_one_joined_file_per_bucket(tmp_path, monkeypatch):
  ids = [f"https://example.com/{i:04d}" for i in range(500)]
  rng = np.random.default_rng(3)
  quality = rng.random(500)
  quality[::7] = np.nan  # unscored rows travel as NaN
  problems = [None] * 499 + ["too_short"]
  q = write_dir(tmp_path / "q", "score", "p_yes", ids, quality, problems,
                rows_per_shard=64)  # fmt: skip
  d = write_dir(tmp_path / "d", "density", "density", ids[::-1],
                rng.random(500) + 0.5, problems[::-1])  # fmt: skip
  sources = [scores_lib.open_scores(p) for p in (q, d)]
  joined = score_join.JoinedScores(
    sources, str(tmp_path / "scratch"), bucket_rows=100, batch_rows=50
  )
  joined.deal()
  opened = []
  original = score_join.paths.open_file
  monkeypatch.setattr(
    score_join.paths,
    "open_file",
    lambda path, *a: (
      opened.append(os.path.basename(path)) or original(path, *a)
    ),
  )
  passes = []
  for _ in range(3):
    opened.clear()
    passes.append(list(joined))
    assert len(passes[-1]) == 5  # buckets
    if len(passes) == 1:  # every input's dealt file of every bucket
      assert len(opened) == 2 * 5 and not any("joined" in f for f in opened)
    else:
      assert sorted(opened) == [f"joined-{b:06d}.arrow" for b in range(5)]
  assert sum(np.isnan(r.values["quality"]).sum() for r in passes[-1]) == 72
  for first, later in zip(passes[0], passes[-1], strict=True):
    assert first.ids.equals(later.ids)
    assert first.problems.equals(later.problems)
    assert first.values.keys() == later.values.keys() == {"quality", "density"}
    for kind, values in first.values.items():
      np.testing.assert_array_equal(values, later.values[kind])
  got = sorted(i for rows in passes[-1] for i in rows.ids.to_pylist())
  assert got == sorted(ids)
