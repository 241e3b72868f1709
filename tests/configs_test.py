"""Tests for the T5X gin files, parsed as text (T5X is not installed)."""

import pathlib
import re

import gin
import pytest
from gin import config_parser

from data_efficient.pretraining import span_corruption

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_CONFIGS = sorted((_ROOT / "configs" / "t5x").glob("*.gin"))
_SIZES = {
  "pretrain_t5_1_1_small.gin": "small",
  "pretrain_t5_1_1_large.gin": "large",
}


def _statements(path):
  parser = config_parser.ConfigParser(
    path.read_text(), gin.config.ParserDelegate(skip_unknown=True)
  )
  return list(parser)


def test_both_sizes_exist():
  assert sorted(p.name for p in _CONFIGS) == sorted(_SIZES)


@pytest.mark.parametrize("path", _CONFIGS, ids=lambda p: p.name)
def test_gin_file(path):
  statements = _statements(path)
  imports = [
    s.module for s in statements if isinstance(s, config_parser.ImportStatement)
  ]
  includes = [
    s.filename
    for s in statements
    if isinstance(s, config_parser.IncludeStatement)
  ]
  # A macro is a binding with no argument name: NAME = value.
  macros = {
    s.selector: s.value
    for s in statements
    if isinstance(s, config_parser.BindingStatement) and not s.arg_name
  }
  bindings = {
    (s.scope, s.selector, s.arg_name): str(s.value)
    for s in statements
    if isinstance(s, config_parser.BindingStatement)
  }
  assert "data_efficient.pretraining.seqio_tasks" in imports
  assert includes == [
    "t5x/configs/runs/pretrain.gin",
    f"t5x/examples/t5/t5_1_1/{_SIZES[path.name]}.gin",
  ]
  assert macros["TASK_FEATURE_LENGTHS"] == {"inputs": 512, "targets": 114}
  assert (
    macros["TASK_FEATURE_LENGTHS"]["targets"]
    == span_corruption.span_corruption_lengths(512)[1]
  )
  assert macros["BATCH_SIZE"] == 1024
  assert macros["DROPOUT_RATE"] == 0.0
  assert macros["USE_CACHED_TASKS"] is False
  # Left to the command line (pretrain.gin marks them %gin.REQUIRED).
  for name in ("MIXTURE_OR_TASK_NAME", "MODEL_DIR", "TRAIN_STEPS"):
    assert name not in macros
  for scope in ("train", "train_eval"):
    key = (scope, "utils.DatasetConfig", "batch_size")
    assert bindings[key] == "%BATCH_SIZE"


@pytest.mark.parametrize("path", _CONFIGS, ids=lambda p: p.name)
def test_launch_command_in_header(path, tmp_path):
  """The header's command names this file and a registrable task."""
  header = "\n".join(
    line[2:] for line in path.read_text().splitlines() if line.startswith("# ")
  )
  assert f"configs/t5x/{path.name}" in header
  for flag in ("MIXTURE_OR_TASK_NAME", "MODEL_DIR", "TRAIN_STEPS"):
    assert f"--gin.{flag}=" in header
  assert "--gin.USE_CACHED_TASKS=False" in header
  env = re.search(r'DATA_EFFICIENT_SELECTIONS="(\w+)=([^"]+)"', header)
  task = re.search(r'MIXTURE_OR_TASK_NAME=\\"([^\\]+)\\"', header).group(1)

  seqio = pytest.importorskip("seqio")
  import pyarrow as pa

  from data_efficient.io import results
  from data_efficient.pretraining import seqio_tasks

  assert seqio_tasks.task_name(env.group(1)) == task
  selection = tmp_path / "sel"
  writer = results.ResultWriter(
    selection, pa.schema([("id", pa.string())]), run_config={}
  )
  writer.write({"id": ["https://a/1"]})
  writer.close()
  results.write_manifest(selection, {})
  registered = seqio_tasks.register_selection_task(
    env.group(1), str(selection), vocabulary=seqio.PassThroughVocabulary(10)
  )
  try:
    assert seqio.get_mixture_or_task(task) is registered
  finally:
    seqio.TaskRegistry.remove(task)
