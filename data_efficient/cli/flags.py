"""Command-line flags derived from the stage configs (`stages/configs.py`).

A config field becomes a flag of the same name (or its `flag` hint), with the
field's default, choices and help; a nested config's fields become flags in
one argument group. `config_from_args` builds the config back from the parsed
flags, so the CLI holds no default and no choice list of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def _leaf_type(annotation: Any) -> Any:
  """`int` for `int | None`, `tuple` for `tuple[str, ...]`, etc."""
  if isinstance(annotation, types.UnionType):
    (annotation,) = [
      a for a in typing.get_args(annotation) if a is not type(None)
    ]
    return _leaf_type(annotation)
  return typing.get_origin(annotation) or annotation


def _fields(config_class: type):
  """(field, resolved type) pairs of a config class, CLI fields only."""
  hints = typing.get_type_hints(config_class)
  for field in dataclasses.fields(config_class):
    if field.metadata.get("cli", True):
      yield field, hints[field.name]


def add_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
  """Adds a flag for every setting of `config_class` (nested ones too)."""
  _add(parser, config_class, parser, {}, {})


def _add(parser, config_class, target, groups, exclusive) -> None:
  for field, annotation in _fields(config_class):
    meta = field.metadata
    if dataclasses.is_dataclass(annotation):
      title = meta.get("group")
      if title not in groups:
        groups[title] = parser.add_argument_group(title)
      _add(parser, annotation, groups[title], groups, exclusive)
      continue
    where = target
    if meta.get("exclusive"):
      key = meta["exclusive"]
      if key not in exclusive:
        exclusive[key] = target.add_mutually_exclusive_group(required=True)
      where = exclusive[key]
    where.add_argument(
      f"--{meta.get('flag') or field.name}", **_argument(field, annotation)
    )


def _argument(field: dataclasses.Field, annotation: Any) -> dict[str, Any]:
  """add_argument's keywords for one setting."""
  meta, kind = field.metadata, _leaf_type(annotation)
  required = field.default is dataclasses.MISSING
  kwargs: dict[str, Any] = {"dest": field.name, "help": meta.get("help")}
  choices = meta.get("choices")
  if isinstance(choices, dict):  # flag words -> field values
    kwargs["choices"] = tuple(choices)
    kwargs["default"] = next(
      w for w, v in choices.items() if v == field.default
    )
  elif kind is bool:
    kwargs["action"] = "store_false" if field.default else "store_true"
  elif kind is tuple and meta.get("repeat"):
    kwargs.update(action="append", required=required)
  elif kind is tuple:  # comma-separated
    kwargs["default"] = ",".join(field.default)
  else:
    kwargs.update(type=kind, choices=choices, required=required)
    if not required:
      kwargs["default"] = field.default
  if meta.get("exclusive"):
    kwargs.pop("required", None)
  return kwargs


def config_from_args(config_class: type, args: argparse.Namespace) -> Any:
  """The config the parsed flags describe."""
  values = {}
  for field, annotation in _fields(config_class):
    if dataclasses.is_dataclass(annotation):
      values[field.name] = config_from_args(annotation, args)
      continue
    value, kind = getattr(args, field.name), _leaf_type(annotation)
    choices = field.metadata.get("choices")
    if isinstance(choices, dict):
      value = choices[value]
    elif kind is tuple and field.metadata.get("repeat"):
      value = field.default if value is None else tuple(value)
    elif kind is tuple:
      value = tuple(part for part in value.split(",") if part)
    values[field.name] = value
  return config_class(**values)
