"""Orbax checkpoints shared by the tests of models/checkpoints."""

from __future__ import annotations

import pathlib

import pytest
from checkpoint_fixtures import TESTDATA, fixture_params, write_t5x_orbax

from data_efficient.models import checkpoints


@pytest.fixture(scope="session")
def t5x_orbax(tmp_path_factory) -> pathlib.Path:
  """t5_a as a T5X Orbax step directory (shared; copy before editing)."""
  return write_t5x_orbax(
    fixture_params("t5_a"), tmp_path_factory.mktemp("t5x_run")
  )


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> pathlib.Path:
  """t5_a converted from HF safetensors (shared; copy before editing)."""
  dst = tmp_path_factory.mktemp("converted") / "t5_a"
  checkpoints.convert(TESTDATA / "t5_a", dst)
  return dst
