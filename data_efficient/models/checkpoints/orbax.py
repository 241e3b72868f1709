"""Orbax checkpoints: T5X's Orbax train state, and our converted format.

Two Orbax layouts are read (both OCDBT, as Orbax and T5X write by default):

  orbax_t5x      A T5X step directory (`checkpoint_1000/`) whose `state` item
                 holds the train state: `target` (the parameters, T5X names)
                 and `state` (step, optimizer slots). Only `target` is read.
                 The item directory itself (`checkpoint_1000/state/`) works
                 too. T5X tells Orbax from legacy checkpoints by the
                 `_METADATA` file Orbax writes; `formats.detect_format`
                 does the same.
  orbax_params   What `checkpoints.convert` writes (`write_params`):

                   <dst>/params/                     Orbax PyTree, OCDBT
                   <dst>/data_efficient_config.json  T5Config, written last

                 The JSON file is the completion marker: a directory without
                 it is an interrupted conversion and is refused.

`read_params` reads either layout into host memory; `restore_sharded`
(what `checkpoints.load_params(..., mesh=mesh)` calls) restores it straight
onto a mesh: every leaf is read with its target `NamedSharding` from
`sharding.param_shardings`, so each process reads only the slices its own
devices hold and no process ever holds the whole model in host memory.

Shapes are checked against the config from Orbax's metadata before any array
is read; a missing, extra or mis-shaped leaf, and any I/O or format error from
Orbax or TensorStore, is a `CheckpointError` naming the directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from data_efficient import sharding
from data_efficient.models import t5
from data_efficient.models.checkpoints import assembly, errors, formats, paths
from data_efficient.models.checkpoints.errors import CheckpointError

CONFIG_FILE = "data_efficient_config.json"
PARAMS_DIR = "params"
_FORMAT = "data_efficient.orbax_params"
_FORMAT_VERSION = 1
_METADATA = "_METADATA"  # Orbax's PyTree metadata file (T5X checks for it)
_T5X_ITEM = "state"  # T5X's CheckpointManager item holding the train state
_T5X_PARAMS = "target"  # the parameters inside T5X's train state


def _epath(path: str):
  from etils import epath  # Orbax's own path layer (local, gs://)

  return epath.Path(path)


# ---------------------------------------------------------------------------
# Where the parameters live.


def t5x_item_dir(path: str | os.PathLike) -> str:
  """The Orbax item directory holding a T5X train state at `path`.

  `path` is a T5X step directory (holding `state/_METADATA`) or the `state`
  item directory itself (holding `_METADATA`).
  """
  path = os.fspath(path).rstrip("/")
  if paths.exists(paths.join(path, _METADATA)):
    return path
  return paths.join(path, _T5X_ITEM)


def _params_location(path: str, fmt: str) -> tuple[str, tuple[str, ...]]:
  """(Orbax item directory, key path of the parameters inside its tree)."""
  if fmt == "orbax_params":
    _read_manifest(path)  # refuse foreign or newer files before reading
    return paths.join(path, PARAMS_DIR), ()
  if fmt == "orbax_t5x":
    return t5x_item_dir(path), (_T5X_PARAMS,)
  raise CheckpointError(
    f"{path}: a {fmt} checkpoint is not an Orbax checkpoint. Convert it "
    "first: `data-efficient convert SRC DST` (data_efficient.models."
    "checkpoints.convert)."
  )


def _tree_metadata(item_dir: str) -> Mapping[str, Any]:
  """Orbax's metadata tree (shapes, dtypes; no array data) of `item_dir`."""
  if not paths.exists(paths.join(item_dir, _METADATA)):
    raise CheckpointError(
      f"{item_dir}: no {_METADATA} file; the Orbax checkpoint is incomplete "
      "(interrupted write or removed files). Use another step or write it "
      "again."
    )
  ocp = errors.import_orbax()
  handler = ocp.PyTreeCheckpointHandler()
  try:
    metadata = handler.metadata(_epath(item_dir))
    tree = getattr(metadata, "tree", metadata)
  except Exception as e:  # Orbax/TensorStore raise many unrelated types
    raise CheckpointError(
      f"{item_dir}: cannot read the Orbax metadata ({errors.cause(e)}). The "
      "checkpoint is incomplete or corrupt; use another step or write it "
      "again."
    ) from None
  if not isinstance(tree, Mapping):
    raise CheckpointError(
      f"{item_dir}: the Orbax tree is a {type(tree).__name__}, not a dict "
      "of parameters."
    )
  return tree


def _subtree(
  tree: Mapping[str, Any], keys: tuple[str, ...], item_dir: str
) -> Mapping[str, Any]:
  node = tree
  for depth, key in enumerate(keys):
    if not isinstance(node, Mapping) or key not in node:
      found = sorted(node) if isinstance(node, Mapping) else type(node)
      hint = ""
      if os.path.basename(item_dir.rstrip("/")) == PARAMS_DIR:
        hint = (
          f" This looks like the '{PARAMS_DIR}' item of a converted "
          "checkpoint: pass its parent directory."
        )
      raise CheckpointError(
        f"{item_dir}: the Orbax tree has no "
        f"'{'/'.join(keys[: depth + 1])}' subtree (found {found}); not a "
        f"T5X train state.{hint}"
      )
    node = node[key]
  return node


def _check_leaves(
  found: Mapping[str, Any], config: t5.T5Config, item_dir: str
) -> dict[str, tuple[int, ...]]:
  """Checks stored leaf shapes against `config`; returns the expected shapes.

  Args:
    found: T5X leaf path ('encoder/layers_0/...') -> Orbax value metadata.
    config: The model the checkpoint must match.
    item_dir: The Orbax directory, for messages.
  """
  expected = assembly.expected_shapes(config)
  for leaf, shape in expected.items():
    if leaf not in found:
      raise CheckpointError(
        f"{item_dir}: parameter {leaf} {list(shape)} is missing from the "
        "Orbax checkpoint. Does the config match this checkpoint (layers, "
        "vocab_size, tied embeddings)?"
      )
    got = tuple(getattr(found[leaf], "shape", None) or ())
    if got != shape:
      raise CheckpointError(
        f"{item_dir}: parameter {leaf} has shape {list(got)} in the Orbax "
        f"checkpoint, expected {list(shape)} from the config. Use the "
        "config that came with the checkpoint."
      )
  extra = sorted(set(found) - set(expected))
  if extra:
    raise CheckpointError(
      f"{item_dir}: Orbax leaf {extra[0]!r} is not a parameter of this "
      f"model ({len(extra)} unexpected: {', '.join(extra[:5])}"
      f"{', ...' if len(extra) > 5 else ''}). The checkpoint and the config "
      "disagree (layers, decoder, projection?)."
    )
  return expected


def _nest(keys: tuple[str, ...], tree: Any) -> Any:
  for key in reversed(keys):
    tree = {key: tree}
  return tree


def _restore(
  item_dir: str,
  keys: tuple[str, ...],
  config: t5.T5Config,
  restore_args_for: Any,
) -> dict:
  """Restores the parameter subtree at `keys` of the Orbax item `item_dir`.

  Args:
    item_dir: Orbax PyTree directory.
    keys: Key path of the parameters in the stored tree (() = whole tree).
    config: The model; shapes are checked before anything is read.
    restore_args_for: leaf path -> Orbax RestoreArgs for that leaf.

  Returns:
    The nested T5X parameter tree.
  """
  ocp = errors.import_orbax()
  found = traverse_util.flatten_dict(
    _subtree(_tree_metadata(item_dir), keys, item_dir), sep="/"
  )
  expected = _check_leaves(found, config, item_dir)
  flat_args = {leaf: restore_args_for(leaf) for leaf in expected}
  # Orbax wants a template the shape of what it restores; with
  # partial_restore=True it reads only those keys (no optimizer state).
  template = traverse_util.unflatten_dict(
    {leaf: np.empty((), np.float32) for leaf in expected}, sep="/"
  )
  args = ocp.args.PyTreeRestore(
    item=_nest(keys, template),
    restore_args=_nest(keys, traverse_util.unflatten_dict(flat_args, sep="/")),
    partial_restore=bool(keys),
  )
  handler = ocp.PyTreeCheckpointHandler()
  try:
    restored = handler.restore(_epath(item_dir), args=args)
  except Exception as e:  # Orbax/TensorStore raise many unrelated types
    raise CheckpointError(
      f"{item_dir}: cannot read the Orbax checkpoint ({errors.cause(e)}). It "
      "is incomplete or corrupt; use another step or write it again."
    ) from None
  finally:
    handler.close()
  for key in keys:
    restored = restored[key]
  return restored


# ---------------------------------------------------------------------------
# Readers (called by `checkpoints.load_params`, with or without a mesh).


def read_params(path: str, fmt: str, config: t5.T5Config, dtype: Any) -> dict:
  """Host (NumPy) parameters of an Orbax checkpoint, cast to `dtype`.

  TensorStore casts while reading, so the host holds one copy of the model
  in `dtype`, as the other readers do.
  """
  item_dir, keys = _params_location(path, fmt)
  ocp = errors.import_orbax()
  dtype = np.dtype(dtype)
  return _restore(
    item_dir,
    keys,
    config,
    lambda leaf: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype),
  )


def restore_sharded(
  path: str | os.PathLike,
  config: t5.T5Config | None,
  mesh: jax.sharding.Mesh,
  dtype: Any = None,
) -> dict:
  """Restores an Orbax checkpoint directly onto `mesh`, sharded.

  Each leaf is read with its `NamedSharding` from
  `sharding.param_shardings(t5.abstract_params(config), mesh)`: every
  process reads only the slices held by its own devices, and no host copy of
  the whole model is made.

  Args:
    path: A converted checkpoint (`checkpoints.convert`) or a T5X Orbax
      checkpoint.
    config: The model; None reads it from a converted checkpoint.
    mesh: The ('data', 'model') mesh from `sharding.make_mesh`.
    dtype: Dtype of the restored arrays; None keeps the stored dtype.

  Returns:
    Nested dict of `jax.Array`s in the structure of
    `nn.unbox(t5.abstract_params(config))`.

  Raises:
    CheckpointError: if `path` is not an Orbax checkpoint, does not match
      `config`, or is incomplete or corrupt.
  """
  path = os.fspath(path)
  fmt = formats.detect_format(path)
  item_dir, keys = _params_location(path, fmt)
  if config is None:
    config = read_config(path, fmt)
  shardings = traverse_util.flatten_dict(
    sharding.param_shardings(t5.abstract_params(config), mesh), sep="/"
  )
  ocp = errors.import_orbax()
  dtype = None if dtype is None else jnp.dtype(dtype)
  return _restore(
    item_dir,
    keys,
    config,
    lambda leaf: ocp.ArrayRestoreArgs(sharding=shardings[leaf], dtype=dtype),
  )


# ---------------------------------------------------------------------------
# Our converted format.


def _read_manifest(path: str) -> dict[str, Any]:
  file = paths.join(path, CONFIG_FILE)
  manifest = paths.read_json(file)
  if manifest.get("format") != _FORMAT:
    raise CheckpointError(
      f"{file}: 'format' is {manifest.get('format')!r}, expected "
      f"{_FORMAT!r}; not written by data_efficient's convert."
    )
  version = manifest.get("format_version")
  if version != _FORMAT_VERSION:
    raise CheckpointError(
      f"{file}: format_version {version!r}; this code reads version "
      f"{_FORMAT_VERSION}. Convert the checkpoint again with this version."
    )
  return manifest


def _config_to_json(config: t5.T5Config) -> dict[str, Any]:
  return {
    k: list(v) if isinstance(v, tuple) else v
    for k, v in dataclasses.asdict(config).items()
  }


def _config_from_json(fields: Any, file: str) -> t5.T5Config:
  if not isinstance(fields, dict):
    raise CheckpointError(f"{file}: 'config' is not an object.")
  known = {f.name for f in dataclasses.fields(t5.T5Config)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise CheckpointError(
      f"{file}: unknown T5Config field(s) {unknown}; written by a newer "
      "data_efficient? Convert the checkpoint again with this version."
    )
  values = {
    k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
  }
  try:
    return t5.T5Config(**values)
  except TypeError as e:  # a required field is absent
    raise CheckpointError(f"{file}: 'config' is incomplete ({e}).") from None


def read_config(path: str, fmt: str) -> t5.T5Config:
  """The T5Config stored with the Orbax checkpoint `path` of format `fmt`.

  Raises:
    CheckpointError: for a T5X checkpoint, which records none (the message
      says to name a model preset), or an unreadable config.
  """
  if fmt != "orbax_params":
    raise formats.no_config_error(path, fmt)
  manifest = _read_manifest(path)
  return _config_from_json(
    manifest.get("config"), paths.join(path, CONFIG_FILE)
  )


def write_params(
  dst: str,
  params: Any,
  config: t5.T5Config,
  *,
  dtype: Any,
  source: Mapping[str, str],
) -> None:
  """Writes `dst/params` (Orbax, OCDBT), then `dst/data_efficient_config.json`.

  Args:
    dst: New directory (absent or empty).
    params: The parameter tree for `config`, in `dtype`.
    config: The model, stored in the JSON file.
    dtype: The dtype of `params`, recorded as `param_dtype`.
    source: Provenance for the JSON file ({'path': ..., 'format': ...}).
  """
  ocp = errors.import_orbax()
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=True))
  try:
    checkpointer.save(
      _epath(paths.join(dst, PARAMS_DIR)), args=ocp.args.PyTreeSave(params)
    )
  finally:
    checkpointer.close()
  manifest = {
    "format": _FORMAT,
    "format_version": _FORMAT_VERSION,
    "config": _config_to_json(config),
    "param_dtype": jnp.dtype(dtype).name,
    "source": dict(source),
  }
  # Written last: its presence says the parameters are complete.
  paths.write_bytes(
    paths.join(dst, CONFIG_FILE),
    (json.dumps(manifest, indent=2) + "\n").encode(),
  )
