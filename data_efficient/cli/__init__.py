"""The `data-efficient` command: one thin module per pipeline stage.

Each subcommand module names its stage config (`CONFIG`, whose fields are the
flags: `flags.py`) and runs the stage's library function (`run`). Heavy
imports (JAX models, TensorFlow, SeqIO) happen inside `run`, so
`data-efficient --help` starts fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from data_efficient.cli import (
  cluster,
  convert,
  demo,
  density,
  embed,
  flags,
  materialize,
  perplexity,
  report,
  score,
  select,
)

# In the order `--help` lists them (the pipeline's).
COMMANDS = (
  score,
  perplexity,
  embed,
  density,
  cluster,
  convert,
  report,
  demo,
  select,
  materialize,
)


def build_parser() -> argparse.ArgumentParser:
  """The parser of every subcommand."""
  parser = argparse.ArgumentParser(
    prog="data-efficient",
    description="Ask-LLM and DENSITY data selection for LLM pre-training.",
  )
  sub = parser.add_subparsers(dest="command", required=True)
  for command in COMMANDS:
    p = sub.add_parser(
      command.NAME,
      help=command.HELP,
      description=getattr(command, "DESCRIPTION", None),
    )
    flags.add_flags(p, command.CONFIG)
    p.set_defaults(command=command)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Parses the flags, runs the stage; the exit code."""
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  command = args.command
  if extra and not getattr(command, "PASSES_UNKNOWN_FLAGS", False):
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  if hasattr(command, "adjust"):
    command.adjust(args)
  try:
    config = flags.config_from_args(command.CONFIG, args)
  except ValueError as e:  # settings that do not go together
    parser.error(str(e))
  return command.run(config, *([extra] if extra else []))
