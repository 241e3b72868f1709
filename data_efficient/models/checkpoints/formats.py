"""The checkpoint formats, and how a directory's format is told.

orbax_params           our converted format (`checkpoints.convert`): Orbax
                       params + `data_efficient_config.json`.
orbax_t5x              T5X Orbax step dir (`state/_METADATA` + OCDBT).
t5x_legacy             T5X checkpoint dir: msgpack `checkpoint` + one zarr
                       array per large leaf.
sentence_transformers  folder with `modules.json`: T5 encoder + mean pooling
                       + Dense without bias (+ Normalize).
hf_safetensors         `model.safetensors` or `model.safetensors.index.json`.
hf_flax                HF Flax `flax_model.msgpack`.
"""

from __future__ import annotations

import os

from data_efficient.models.checkpoints import paths
from data_efficient.models.checkpoints.errors import CheckpointError

ORBAX_FORMATS = ("orbax_params", "orbax_t5x")
# Formats that record no model config (T5X keeps it in its gin files).
WITHOUT_CONFIG = ("t5x_legacy", "orbax_t5x")

# Format -> the file whose presence identifies it, in detection order (an ST
# folder also holds model.safetensors, so it is checked before HF). Orbax's
# `_METADATA` wins over a legacy `checkpoint` file, as in T5X's own
# `checkpoint_utils.detect_checkpoint_type`.
_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
  ("orbax_params", ("data_efficient_config.json",)),
  ("orbax_t5x", ("_METADATA", "state/_METADATA")),
  ("t5x_legacy", ("checkpoint",)),
  ("sentence_transformers", ("modules.json",)),
  ("hf_safetensors", ("model.safetensors", "model.safetensors.index.json")),
  ("hf_flax", ("flax_model.msgpack",)),
)
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Files Orbax writes before `_METADATA` (or that survive its removal): their
# presence alone means an incomplete Orbax checkpoint.
_ORBAX_LEFTOVERS = (
  "manifest.ocdbt",
  "state/manifest.ocdbt",
  "_CHECKPOINT_METADATA",
  "params/_METADATA",
  "params/manifest.ocdbt",
)


def detect_format(path: str | os.PathLike) -> str:
  """The checkpoint format of the directory `path`.

  Returns:
    One of 'orbax_params', 'orbax_t5x', 't5x_legacy',
    'sentence_transformers', 'hf_safetensors', 'hf_flax'.

  Raises:
    CheckpointError: if the directory holds none of them (the message lists
      the files looked for), only a pickled PyTorch checkpoint, or an
      incomplete Orbax checkpoint.
  """
  path = os.fspath(path)
  for name, markers in _MARKERS:
    if _first_present(path, markers):
      return name
  if pickle_name := _first_present(path, _PICKLES):
    raise CheckpointError(
      f"{paths.join(path, pickle_name)} is a pickled PyTorch checkpoint, "
      "which is never unpickled here (pickle can run arbitrary code). "
      "Re-save it as safetensors with transformers: "
      "`Model.from_pretrained(dir).save_pretrained(dir, "
      "safe_serialization=True)`."
    )
  if leftover := _first_present(path, _ORBAX_LEFTOVERS):
    raise CheckpointError(
      f"{path}: holds {leftover} but no _METADATA or "
      "data_efficient_config.json: an incomplete Orbax checkpoint (an "
      "interrupted write or conversion, or removed files). Use another "
      "step, or write or convert it again."
    )
  looked_for = ", ".join(
    f"{m} ({name})" for name, markers in _MARKERS for m in markers
  )
  raise CheckpointError(
    f"{path}: no checkpoint found. Looked for: {looked_for}."
  )


def _first_present(path: str, names: tuple[str, ...]) -> str | None:
  """The first of `names` that is a file in the directory `path`, if any."""
  return next((n for n in names if paths.exists(paths.join(path, n))), None)


def no_config_error(path: str, fmt: str) -> CheckpointError:
  """The error for asking a `WITHOUT_CONFIG` checkpoint for its config."""
  from data_efficient.models import presets  # flax: only on this error

  return CheckpointError(
    f"{path}: a {fmt} checkpoint records no model config; name the model "
    f"(--model, one of {', '.join(presets.PRESETS)})."
  )
