"""The `data-efficient` command: one thin module per pipeline stage.

Each subcommand module names its stage config (`CONFIG`, whose fields are the
flags: `flags.py`) and runs the stage's library function (`run`), returning
the `summary.Summary` that `main` prints: for people, or with `--json` as
JSON. Without `--verbose`, TensorFlow's C++ start-up lines are hidden
(`quiet.py`). Heavy
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
  quiet,
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


def _add_output_flags(parser: argparse.ArgumentParser, default) -> None:
  """--verbose and --json, before or after the subcommand's name."""
  parser.add_argument(
    "--verbose",
    action="store_true",
    default=default,
    help="Show TensorFlow's and absl's C++ start-up log lines.",
  )
  parser.add_argument(
    "--json",
    action="store_true",
    default=default,
    help="End with the machine-readable JSON summary instead of the human one.",
  )


def build_parser() -> argparse.ArgumentParser:
  """The parser of every subcommand."""
  parser = argparse.ArgumentParser(
    prog="data-efficient",
    description="Ask-LLM and DENSITY data selection for LLM pre-training.",
  )
  _add_output_flags(parser, False)
  # After the subcommand too; unset there, the top level's value stays.
  output_flags = argparse.ArgumentParser(add_help=False)
  _add_output_flags(output_flags, argparse.SUPPRESS)
  sub = parser.add_subparsers(dest="command", required=True)
  for command in COMMANDS:
    p = sub.add_parser(
      command.NAME,
      help=command.HELP,
      description=getattr(command, "DESCRIPTION", None),
      parents=[output_flags],
    )
    flags.add_flags(p, command.CONFIG)
    p.set_defaults(command=command)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Parses the flags, runs the stage, prints its summary; the exit code."""
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if not args.verbose:  # before any stage imports TensorFlow
    quiet.quiet_native_logs()
  command = args.command
  if extra and not getattr(command, "PASSES_UNKNOWN_FLAGS", False):
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  try:
    config = flags.config_from_args(command.CONFIG, args)
  except ValueError as e:  # settings that do not go together
    parser.error(str(e))
  summary = command.run(config, *([extra] if extra else []))
  print(summary.json() if args.json else summary.text())
  return 0
