"""Tests for tpu_scripts/: usage, dry runs exactly as docs/pretraining.md."""

import os
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_SCRIPTS = sorted((_ROOT / "tpu_scripts").glob("*.sh"))
_RUNNABLE = [p for p in _SCRIPTS if p.name != "common.sh"]
_DOC = _ROOT / "docs" / "pretraining.md"


def _doc_examples():
  """(command, expected output) of each ```console block in the doc."""
  blocks = re.findall(r"```console\n(.*?)```", _DOC.read_text(), re.S)
  examples = []
  for block in blocks:
    lines = block.rstrip("\n").split("\n")
    assert lines[0].startswith("$ ")
    examples.append((lines[0][2:], "\n".join(lines[1:]) + "\n"))
  return examples


def _bash(command, **env):
  return subprocess.run(
    ["bash", "-c", command],
    cwd=_ROOT,
    env={**os.environ, **env},
    capture_output=True,
    text=True,
    timeout=60,
  )


def test_every_script_is_documented():
  documented = {shlex.split(c)[1] for c, _ in _doc_examples()}
  assert documented == {f"tpu_scripts/{p.name}" for p in _RUNNABLE}


@pytest.mark.parametrize("command, expected", _doc_examples())
def test_dry_run_prints_the_documented_commands(command, expected):
  out = _bash(command)
  assert out.returncode == 0, out.stderr
  assert out.stdout == expected
  # --dry_run as the first argument is the same as DRY_RUN=1.
  words = shlex.split(command)
  flag_form = shlex.join([words[1], "--dry_run", *words[2:]])
  assert _bash(flag_form).stdout == expected


@pytest.mark.parametrize("path", _RUNNABLE, ids=lambda p: p.name)
def test_usage_and_strict_mode(path):
  text = path.read_text()
  lines = text.splitlines()
  assert lines[0] == "#!/usr/bin/env bash"
  assert lines[1].startswith(f"# Usage: {path.name} [--dry_run] ")
  assert "set -euo pipefail" in text
  assert os.access(path, os.X_OK)
  out = _bash(f"tpu_scripts/{path.name}", DRY_RUN="1")
  assert out.returncode == 2
  assert out.stdout == ""
  assert out.stderr.strip() == lines[1]


def test_launch_rejects_bad_arguments():
  base = "DRY_RUN=1 tpu_scripts/launch_pretraining.sh n z"
  assert _bash(f"{base} medium sel /d gs://m 10").returncode == 2
  bad = _bash(f"{base} small bad-name /d gs://m 10")
  assert bad.returncode == 2 and "SELECTION" in bad.stderr


def test_extra_flags_are_quoted_for_the_remote_shell():
  out = _bash(
    "DRY_RUN=1 tpu_scripts/launch_pretraining.sh n z large s /d gs://m 5 "
    "'--gin.utils.SaveCheckpointConfig.period=2000'"
  )
  assert out.stdout.rstrip().endswith(
    "--alsologtostderr --gin.utils.SaveCheckpointConfig.period=2000'"
  )
  assert "pretrain_t5_1_1_large.gin" in out.stdout


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="no shellcheck")
def test_shellcheck_clean():
  out = subprocess.run(
    ["shellcheck", "-x", *map(str, _SCRIPTS)],
    cwd=_ROOT,
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stdout
