"""Model checkpoints: every supported format -> the T5X-named parameter tree.

  detect_format(path)              the format of a checkpoint directory
  load_params(path, config)        its parameters, in host memory or, with
                                   `mesh=`, restored sharded onto a mesh
  config_from_checkpoint(path)     the T5Config it carries
  vocab_file(path)                 the SentencePiece model it carries, if any
  convert(src, dst)                any format -> our Orbax format

`load_params` returns the structure of `nn.unbox(t5.abstract_params(config))`
(names in `models/t5.py`'s docstring), whichever format `path` holds (see
`formats.py`: T5X legacy, T5X Orbax, our converted Orbax, Hugging Face
safetensors or Flax msgpack, sentence-transformers). Every leaf the config
expects must be present with its shape and nothing else may be: a mismatch
raises `CheckpointError` naming the leaf and the file before any tensor is
read. Tensors are then read one at a time and cast to the requested dtype at
once, so host memory holds one full copy of the model, not two. Pickle files
(`pytorch_model.bin`) are refused, never unpickled.

Behind this face, one module per concern: `paths` (local and gs:// files),
`formats` (detection), `assembly` (checking stored tensors against the
config), `t5x` (T5X legacy), `hf` (Hugging Face and sentence-transformers
folders, T5 and BERT), `orbax` (T5X Orbax and our format, sharded restore),
`errors` (the one `CheckpointError`, also raised by `runs/snapshots.py`).
The readers are imported on use: flax, Orbax and TensorStore are slow to
import, and importing this package loads none of them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from data_efficient.models.checkpoints import formats, paths
from data_efficient.models.checkpoints.errors import CheckpointError
from data_efficient.models.checkpoints.formats import detect_format

if TYPE_CHECKING:
  import jax

  from data_efficient.models import t5

__all__ = [
  "CheckpointError",
  "config_from_checkpoint",
  "convert",
  "detect_format",
  "load_params",
  "vocab_file",
]

# The SentencePiece model a Hugging Face T5 folder carries (google/flan-t5-*,
# sentence-transformers/sentence-t5-*, t5-*).
VOCAB_FILE = "spiece.model"


def load_params(
  path: str | os.PathLike,
  config: t5.T5Config,
  *,
  dtype: Any = np.float32,
  mesh: jax.sharding.Mesh | None = None,
) -> dict:
  """Reads the checkpoint at `path` into the T5X-named tree for `config`.

  Args:
    path: Checkpoint directory (any format `detect_format` knows; gs:// for
      T5X and Orbax checkpoints).
    config: The model the parameters are for; every leaf is checked against
      it.
    dtype: Dtype of the returned arrays (e.g. np.float32, jnp.bfloat16).
    mesh: If given and `path` is an Orbax checkpoint (T5X Orbax or
      converted), restore it straight onto this mesh: each leaf is read with
      its `sharding.param_shardings` sharding, so a process reads only the
      slices its devices hold (`orbax.restore_sharded`). Other formats are
      read into host memory whatever `mesh` is.

  Returns:
    Nested dict of the structure of `nn.unbox(t5.abstract_params(config))`:
    `jax.Array`s on `mesh` for an Orbax checkpoint with `mesh` given, else
    NumPy arrays.

  Raises:
    CheckpointError: on a missing, extra or mis-shaped leaf (naming the leaf
      and the file), an unreadable file, or an unsupported format.
  """
  path = os.fspath(path)
  fmt = detect_format(path)
  if fmt in formats.ORBAX_FORMATS:
    from data_efficient.models.checkpoints import orbax

    if mesh is not None:
      return orbax.restore_sharded(path, config, mesh, dtype)
    return orbax.read_params(path, fmt, config, dtype)
  if fmt == "t5x_legacy":
    from data_efficient.models.checkpoints import t5x

    return t5x.read_params(path, config, np.dtype(dtype))
  from data_efficient.models.checkpoints import hf

  return hf.read_params(path, fmt, config, np.dtype(dtype))


def config_from_checkpoint(path: str | os.PathLike) -> t5.T5Config:
  """The model config that came with the checkpoint at `path`.

  A converted checkpoint carries its T5Config; Hugging Face and
  sentence-transformers folders carry `config.json` (see
  `hf.config_from_hf`). T5X checkpoints carry none.

  Raises:
    CheckpointError: for a T5X checkpoint (the message says to pass a model
      preset) or an unreadable config.
  """
  path = os.fspath(path)
  fmt = detect_format(path)
  if fmt in formats.ORBAX_FORMATS:
    from data_efficient.models.checkpoints import orbax

    return orbax.read_config(path, fmt)
  if fmt in formats.WITHOUT_CONFIG:
    raise formats.no_config_error(path, fmt)
  from data_efficient.models.checkpoints import hf

  return hf.config_from_hf(path)


def vocab_file(path: str | os.PathLike) -> str | None:
  """The SentencePiece model in checkpoint folder `path` (`VOCAB_FILE`), or
  None if the folder carries none (T5X checkpoints do not)."""
  file = paths.join(os.fspath(path), VOCAB_FILE)
  return file if paths.exists(file) else None


def convert(
  src: str | os.PathLike,
  dst: str | os.PathLike,
  *,
  model: str | t5.T5Config | None = None,
  dtype: Any = "float32",
) -> t5.T5Config:
  """Converts any supported checkpoint into our Orbax format.

  Reads `src` with `load_params` (T5X legacy or Orbax, Hugging Face
  safetensors or Flax msgpack, sentence-transformers, or a converted
  checkpoint) and writes `dst/params` (Orbax, OCDBT) and then
  `dst/data_efficient_config.json` (the T5Config and provenance), and
  copies the folder's `spiece.model`, if any (`vocab_file`).

  Args:
    src: Checkpoint directory of any supported format.
    dst: New directory (absent or empty).
    model: Preset name or T5Config; None takes the config stored with `src`
      (Hugging Face `config.json`, or a converted checkpoint's).
    dtype: Dtype the parameters are stored in ('float32', 'bfloat16').

  Returns:
    The T5Config written next to the parameters.

  Raises:
    CheckpointError: if `src` cannot be read or `dst` is not empty.
  """
  import jax.numpy as jnp

  from data_efficient.models import presets, t5
  from data_efficient.models.checkpoints import orbax

  src, dst = os.fspath(src), os.fspath(dst).rstrip("/")
  if not paths.is_gcs(dst) and os.path.exists(dst):
    if not os.path.isdir(dst) or os.listdir(dst):
      raise CheckpointError(
        f"{dst}: already exists and is not an empty directory; choose a new "
        "destination or remove it."
      )
  fmt = detect_format(src)
  if model is None:
    config = config_from_checkpoint(src)
  elif isinstance(model, t5.T5Config):
    config = model
  else:
    try:
      config = presets.get_preset(model)
    except ValueError as e:
      raise CheckpointError(str(e)) from None
  dtype = jnp.dtype(dtype)
  params = load_params(src, config, dtype=dtype)
  source = src if paths.is_gcs(src) else os.path.abspath(src)
  orbax.write_params(
    dst, params, config, dtype=dtype, source={"path": source, "format": fmt}
  )
  vocab = vocab_file(src)
  if vocab is not None:  # the converted checkpoint keeps its vocabulary
    paths.write_bytes(paths.join(dst, VOCAB_FILE), paths.read_bytes(vocab))
  return config
