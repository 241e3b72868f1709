"""T5X legacy checkpoints: msgpack `checkpoint` + TensorStore zarr arrays.

A T5X checkpoint directory (`checkpoint_1138000/`, local or gs://) holds a
msgpack `checkpoint` file with the train state, whose `optimizer/target` tree
is the parameters under their T5X names. Small leaves are stored inline;
large ones are TensorStore specs of zarr arrays next to the file
(`target.encoder.layers_0.mlp.wi_0.kernel/`), read one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from flax import serialization

from data_efficient.models import t5
from data_efficient.models.checkpoints import assembly, paths
from data_efficient.models.checkpoints.errors import CheckpointError


def _is_ts_spec(node: Any) -> bool:
  # Parameter subtrees never have a key named 'driver'.
  return isinstance(node, dict) and "driver" in node


def _flatten_target(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  if isinstance(tree, dict) and not _is_ts_spec(tree):
    for key, value in tree.items():
      yield from _flatten_target(value, f"{prefix}{key}/")
  else:
    yield prefix.rstrip("/"), tree


def tensorstore_spec(directory: str, spec: Mapping[str, Any]) -> dict:
  """The TensorStore spec that opens one leaf of a T5X legacy checkpoint.

  T5X stores each leaf's zarr path relative to the checkpoint directory,
  either in `spec['kvstore']['path']` or (tensorstore < 0.1.14) in
  `spec['path']`, and a dummy GCS bucket; the real location is rebuilt from
  `directory` (local or gs://bucket/...).

  Raises:
    CheckpointError: if the spec names no path.
  """
  kvstore = spec.get("kvstore")
  relative = kvstore.get("path") if isinstance(kvstore, dict) else None
  relative = relative or spec.get("path")
  if not relative:
    raise CheckpointError(
      f"{directory}: a tensorstore spec has no 'path' ({dict(spec)})."
    )
  return {
    "driver": spec.get("driver", "zarr"),
    "kvstore": paths.kvstore(paths.join(directory, str(relative).strip("/"))),
  }


def read_params(path: str, config: t5.T5Config, dtype: Any) -> dict:
  """The parameters of the T5X legacy checkpoint `path`, cast to `dtype`."""
  import tensorstore as ts

  file = paths.join(path, "checkpoint")
  try:
    state = serialization.msgpack_restore(paths.read_bytes(file))
    target = state["optimizer"]["target"]
  except (KeyError, TypeError):
    raise CheckpointError(
      f"{file}: no optimizer/target tree; not a T5X legacy checkpoint."
    ) from None
  except CheckpointError:
    raise
  except Exception as e:  # msgpack raises several unrelated types
    raise CheckpointError(f"{file}: not a readable msgpack ({e}).") from None

  stored = {}
  for name, leaf in _flatten_target(target):
    if _is_ts_spec(leaf):
      spec = tensorstore_spec(path, leaf)
      kvstore = spec["kvstore"]
      where = kvstore["path"]
      if kvstore["driver"] == "gcs":
        where = f"gs://{kvstore['bucket']}/{where}"

      def open_array(spec=spec, where=where):
        try:
          return ts.open(spec, read=True).result()
        except Exception as e:  # tensorstore reports I/O as ValueError etc.
          raise CheckpointError(
            f"{where}: cannot open the zarr array ({e})."
          ) from None

      shape = (leaf.get("metadata") or {}).get("shape")
      if shape is None:  # only the array's own .zarray knows
        shape = open_array().shape
      stored[name] = assembly.Stored(
        where,
        tuple(int(d) for d in shape),
        lambda open_array=open_array: open_array().read().result(),
      )
    else:
      array = np.asarray(leaf)
      stored[name] = assembly.Stored(
        file, array.shape, lambda array=array: array
      )
  rules = {
    leaf: assembly.Rule((leaf,)) for leaf in assembly.expected_shapes(config)
  }
  return assembly.assemble(stored, rules, config, dtype, where=file)
