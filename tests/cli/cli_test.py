"""Tests of the `data-efficient` command: parsing, exit codes, one real run.

The stages themselves are tested through their library functions; here the
flags are checked against the config dataclasses they are derived from.
"""

import json

import numpy as np
import pytest

from data_efficient import cli
from data_efficient.cli import flags
from data_efficient.io import records, results
from data_efficient.stages import configs, select

NAMES = [command.NAME for command in cli.COMMANDS]
CORPUS = configs.CorpusConfig(input="c.jsonl")
STREAMED = {"corpus": CORPUS, "run": configs.StreamConfig(output="o")}
# Each command's required flags only, and the config they mean (the rest is
# the library's defaults).
MINIMAL = {
  "score": ("--input c.jsonl --output o", configs.ScoreConfig(**STREAMED)),
  "perplexity": (
    "--input c.jsonl --output o",
    configs.PerplexityConfig(**STREAMED),
  ),
  "embed": ("--input c.jsonl --output o", configs.EmbedConfig(**STREAMED)),
  "density": (
    "--embeddings x.npy --output o",
    configs.DensityConfig(embeddings="x.npy", output="o"),
  ),
  "cluster": (
    "--method semdedup --embeddings x.npy --output o",
    configs.ClusterConfig(method="semdedup", embeddings="x.npy", output="o"),
  ),
  "convert": (
    "--checkpoint ckpt --output o",
    configs.ConvertConfig(checkpoint="ckpt", output="o"),
  ),
  "report": (
    "--input c.jsonl --output o",
    configs.ReportConfig(corpus=CORPUS, output="o"),
  ),
  "demo": ("--output o", configs.DemoConfig(output="o")),
  "select": (
    "--scores s --sampler random --k 1 --output o",
    configs.SelectConfig(scores=("s",), sampler="random", k=1, output="o"),
  ),
  "materialize": (
    "--selection s --input c.jsonl --output o",
    configs.MaterializeConfig(selection="s", corpus=CORPUS, output="o"),
  ),
}


def minimal(name, extra=""):
  """The argv of `data-efficient NAME`: its required flags, then EXTRA's."""
  return [name, *MINIMAL[name][0].split(), *extra.split()]


def parse(argv):
  """The config `data-efficient ARGV` would run its stage with."""
  args = cli.build_parser().parse_args(argv)
  return flags.config_from_args(args.command.CONFIG, args)


def exit_code(argv):
  """The code `cli.main(argv)` exits with (it must exit)."""
  with pytest.raises(SystemExit) as exit_:
    cli.main(argv)
  return exit_.value.code


@pytest.mark.parametrize("name", ["", *NAMES])
def test_help_exits_0(name, capsys):
  assert exit_code([*name.split(), "--help"]) == 0
  usage = capsys.readouterr().out.splitlines()[0]
  assert usage.startswith(" ".join(["usage: data-efficient", *name.split()]))


@pytest.mark.parametrize(
  ("name", "flag"),
  [(name, flag) for name in NAMES for flag in MINIMAL[name][0].split()[::2]],
)
def test_a_missing_required_flag_exits_2_naming_it(name, flag, capsys):
  argv = minimal(name)
  i = argv.index(flag)
  assert exit_code(argv[:i] + argv[i + 2 :]) == 2
  assert flag in capsys.readouterr().err


@pytest.mark.parametrize("name", NAMES)
def test_minimal_flags_give_the_library_defaults(name):
  assert parse(minimal(name)) == MINIMAL[name][1]


@pytest.mark.parametrize(
  ("argv", "expected"),
  [
    (
      minimal(
        "score",
        "--id_field id --on_error mark --model tiny --chunk_size 16 "
        "--no_progress",
      ),
      configs.ScoreConfig(
        corpus=configs.CorpusConfig(
          input="c.jsonl", id_field="id", on_error="mark"
        ),
        model=configs.ModelConfig(model="tiny"),
        run=configs.StreamConfig(output="o", chunk_size=16, progress=False),
      ),
    ),
    (
      minimal("density", "--estimator exact --kernel gaussian --bandwidth 0.5"),
      configs.DensityConfig(
        embeddings="x.npy",
        output="o",
        estimator="exact",
        kernel="gaussian",
        bandwidth=0.5,
      ),
    ),
    (
      minimal("cluster", "--distance euclidean --clusters 8"),
      configs.ClusterConfig(
        method="semdedup",
        embeddings="x.npy",
        output="o",
        kmeans=configs.KMeansConfig(clusters=8, spherical=False),
      ),
    ),
    (
      (
        "select --scores q --scores d --sampler askllm-then-ips --rate 0.5 "
        "--exclude_problems empty,nul_bytes --output o"
      ).split(),
      configs.SelectConfig(
        scores=("q", "d"),
        sampler="askllm-then-ips",
        rate=0.5,
        exclude_problems=("empty", "nul_bytes"),
        output="o",
      ),
    ),
  ],
)
def test_flags_set_the_fields_they_name(argv, expected):
  assert parse(argv) == expected


def test_select_flags_come_from_the_library():
  base = ["select", "--scores", "s", "--k", "1", "--output", "o"]
  for sampler in select.SAMPLERS:
    config = parse([*base, "--sampler", sampler])
    assert config.sampler == sampler
    assert config.exclude_problems == records.DEFAULT_EXCLUDED_PROBLEMS
  with pytest.raises(SystemExit):
    parse([*base, "--sampler", "nonsense"])


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (
      minimal("select", "--rate 0.1"),
      "--rate: not allowed with argument --k",
    ),
    (
      minimal("density", "--estimator exact --kernel nonsense"),
      "--kernel: invalid choice: 'nonsense'",
    ),
    (
      # The sketch estimates 'lsh' only: another kernel is refused, not
      # quietly replaced.
      minimal("density", "--kernel gaussian"),
      "kernel='gaussian': the sketch estimates the 'lsh' kernel only",
    ),
    (minimal("cluster", "--eps 3"), "eps=3.0: must be in [0, 2]"),
    (minimal("cluster", "--clusters 0"), "clusters=0 must be >= 1"),
  ],
)
def test_settings_that_do_not_go_together_exit_2_naming_them(
  argv, message, capsys
):
  assert exit_code(argv) == 2
  assert message in capsys.readouterr().err


@pytest.fixture
def embeddings(tmp_path):
  """A .npy file of 50 unit vectors [50, 16]."""
  x = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
  np.save(tmp_path / "x.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
  return str(tmp_path / "x.npy")


def density(embeddings, output, extra):
  """Runs `data-efficient density` in this process; its exit code."""
  argv = ["density", "--embeddings", embeddings, "--output", str(output)]
  return cli.main([*argv, "--no_progress", *extra.split()])


def test_density_runs_and_prints_its_summary(tmp_path, embeddings, capsys):
  out = tmp_path / "den"
  extra = "--estimator exact --kernel gaussian --bandwidth 0.5"
  assert density(embeddings, out, f"--json {extra}") == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary == {
    "stage": "density",
    "output": str(out),
    "rows": 50,
    "problems": {},
    "seconds": summary["seconds"],
    "bandwidth": 0.5,
  }
  assert results.read_manifest(out)["num_rows"] == 50


def test_rerun_with_other_flags_into_the_same_dir_is_refused(
  tmp_path, embeddings
):
  out = tmp_path / "den"
  assert density(embeddings, out, "--rows 8 --buckets 64") == 0
  with pytest.raises(results.OutputError, match="rows: 8 -> 16"):
    density(embeddings, out, "--rows 16 --buckets 64")
