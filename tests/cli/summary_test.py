"""What a finished command prints: the human summary, or `--json`."""

import json

import numpy as np
import pytest

from data_efficient import cli


@pytest.fixture
def density_run(tmp_path):
  """(density output dir, its command line), the run done."""
  np.save(tmp_path / "x.npy", np.eye(10, 4, dtype=np.float32))
  out = str(tmp_path / "den")
  args = ["density", "--embeddings", str(tmp_path / "x.npy"), "--output", out,
          "--estimator", "exact", "--kernel", "gaussian", "--bandwidth", "1",
          "--no_progress"]  # fmt: skip
  assert cli.main(args) == 0
  return out, args


def test_density_says_rows_problems_rate_and_the_next_command(
  density_run, capsys
):
  out, args = density_run
  assert cli.main(args) == 0  # a finished run's rerun summarises it again
  lines = capsys.readouterr().out.splitlines()[-4:]
  assert lines[0].startswith(f"density: 10 rows -> {out}")
  assert lines[1:3] == ["problems: none", "bandwidth: 1"]
  assert lines[3] == (
    f"next: data-efficient select --scores {out} --sampler density-ips "
    "--rate 0.2 --output SELECTION_DIR"
  )


def test_select_prints_a_human_summary_or_with_json_the_json(
  tmp_path, density_run, capsys
):
  sel = str(tmp_path / "sel")
  args = ["select", "--scores", density_run[0], "--sampler", "density-ips",
          "--rate", "0.3", "--output", sel]  # fmt: skip
  capsys.readouterr()
  assert cli.main(args) == 0
  text = capsys.readouterr().out
  assert text.splitlines()[0] == (
    f"select: 3 of 10 examples (30.0%) by density-ips -> {sel}"
  )
  assert f"next: data-efficient materialize --selection {sel} " in text
  with pytest.raises(json.JSONDecodeError):
    json.loads(text)
  # --json before or after the subcommand: the JSON summary, nothing else.
  for argv in (["--json", *args], [*args, "--json"]):
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_selected"] == 3 and data["output"] == sel
