"""Peak host memory of putting a model on a mesh: full copy vs Orbax restore.

  python3 benchmarks/restore_memory.py [--div 4] [--layers 24] [--keep DIR]

Builds a Flan-T5-XL-shaped model with every width divided by `--div`
(vocab, emb, heads, mlp; head_dim stays 64) and `--layers` encoder and
decoder layers, writes it as HF `model.safetensors`, converts it with
`checkpoints.convert`, then measures in a fresh process each:

  (a) full copy  `checkpoints.load_params` (host NumPy tree) + `device_put`
                 with the shardings of `sharding.param_shardings`
  (b) sharded    `checkpoints.orbax.restore_sharded` of the converted
                 checkpoint (what `load_params(..., mesh=mesh)` does)

onto a (data=4, model=2) mesh of 8 emulated CPU devices.

Memory is the process's resident set from the kernel, /proc/self/status
VmHWM (peak) and VmRSS (now), so native buffers (TensorStore, XLA) count,
which tracemalloc would miss. VmHWM rather than `ru_maxrss`: Linux keeps
the pre-exec high-water mark in `ru_maxrss`, and children started by the
(large) setup process reported its peak, not their own. On CPU the devices' buffers are host
memory too (and XLA:CPU may alias a NumPy array as one device's buffer), so
the figures that transfer to TPU/GPU hosts, where device arrays live in HBM,
are:
  host tree  (a) only: the peak after `load_params`, before `device_put`,
             minus the baseline: the full host copy every process makes
  transient  peak minus resident-after: what loading needed only while it
             ran (read buffers, casts, the host tree where not aliased)
The device arrays themselves cannot be told apart from host memory on CPU
(deleting them does not return memory to the OS, and XLA:CPU may alias one
buffer for several devices), so no "host = peak - device" is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _status(field: str) -> int:
  """A /proc/self/status memory field ('VmRSS', 'VmHWM') in bytes."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f"no {field} in /proc/self/status")


def _config(div: int, layers: int):
  from data_efficient.models import presets

  xl = presets.FLAN_T5_XL
  return xl.replace(
    vocab_size=xl.vocab_size // div,
    emb_dim=xl.emb_dim // div,
    num_heads=xl.num_heads // div,
    mlp_dim=xl.mlp_dim // div,
    num_encoder_layers=layers,
    num_decoder_layers=layers,
  )


def _write_safetensors(config, folder: str) -> int:
  """Random params as HF `model.safetensors`; returns the parameter count."""
  import jax
  import numpy as np
  from flax import traverse_util
  from safetensors.numpy import save_file

  from data_efficient.models import t5
  from data_efficient.models.checkpoints import hf

  rng = np.random.default_rng(0)
  rules = hf.torch_rules(config)
  shapes = traverse_util.flatten_dict(
    jax.tree.map(lambda x: x.shape, t5.abstract_params(config)), sep="/"
  )
  state = {}
  for leaf, rule in rules.items():
    shape = getattr(shapes[leaf], "value", shapes[leaf])
    if rule.transpose:
      shape = shape[::-1]
    state[rule.names[0]] = rng.standard_normal(shape, np.float32)
  os.makedirs(folder)
  save_file(state, os.path.join(folder, "model.safetensors"))
  hf_config = {
    "model_type": "t5",
    "vocab_size": config.vocab_size,
    "d_model": config.emb_dim,
    "num_heads": config.num_heads,
    "num_layers": config.num_encoder_layers,
    "num_decoder_layers": config.num_decoder_layers,
    "d_kv": config.head_dim,
    "d_ff": config.mlp_dim,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
  }
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf_config, f)
  return sum(v.size for v in state.values())


def _measure(method: str, path: str) -> dict:
  """Runs in a fresh process: loads `path` by `method`, reports memory."""
  import gc

  import jax
  from flax import traverse_util

  from data_efficient import sharding
  from data_efficient.models import checkpoints, t5
  from data_efficient.models.checkpoints import orbax

  mesh = sharding.make_mesh(model_parallelism=2)
  config = checkpoints.config_from_checkpoint(path)
  shardings = sharding.param_shardings(t5.abstract_params(config), mesh)
  jax.block_until_ready(jax.device_put(0.0))  # runtime up before baseline
  gc.collect()
  baseline = _status("VmRSS")
  start = time.perf_counter()
  host_peak = None
  if method == "full_copy":
    host = checkpoints.load_params(path, config)
    host_peak = _status("VmHWM")
    params = jax.device_put(host, shardings)
    jax.block_until_ready(params)
    del host
  else:
    params = orbax.restore_sharded(path, config, mesh)
    jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  gc.collect()
  leaves = traverse_util.flatten_dict(params, sep="/").values()
  after = _status("VmRSS")
  return {
    "method": method,
    "seconds": seconds,
    "baseline": baseline,
    "peak": _status("VmHWM"),
    "after": after,
    "host_tree_peak": host_peak,
    "device_bytes": sum(
      s.data.nbytes for x in leaves for s in x.addressable_shards
    ),
    "model_bytes": sum(x.nbytes for x in leaves),
    "largest_leaf_bytes": max(x.nbytes for x in leaves),
  }


def _child(method: str, path: str) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  )
  out = subprocess.run(
    [sys.executable, __file__, "--_measure", method, path],
    env=env,
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--div", type=int, default=4)
  parser.add_argument("--layers", type=int, default=24)
  parser.add_argument("--keep", help="work directory to keep (default: temp)")
  parser.add_argument("--_measure", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._measure:
    print(json.dumps(_measure(*args._measure)))
    return

  from data_efficient.models import checkpoints

  config = _config(args.div, args.layers)
  with tempfile.TemporaryDirectory(dir=args.keep) as work:
    hf, converted = os.path.join(work, "hf"), os.path.join(work, "orbax")
    count = _write_safetensors(config, hf)
    checkpoints.convert(hf, converted)
    results = [
      _child("full_copy", hf),
      _child("restore_sharded", converted),
    ]
  mib = 2**20
  print(
    f"Flan-T5-XL widths / {args.div}, {args.layers}+{args.layers} layers: "
    f"{count / 1e6:.1f}M params, {results[0]['model_bytes'] / mib:.0f} MiB "
    "fp32; mesh data=4 x model=2 (8 CPU devices)"
  )
  print(
    f"{'method':<16}{'seconds':>8}{'peak':>8}{'after':>8}{'transient':>11}"
    f"{'host tree':>11}{'tree/model':>12}"
  )
  for r in results:
    row = (
      f"{r['method']:<16}{r['seconds']:>8.1f}"
      f"{(r['peak'] - r['baseline']) / mib:>8.0f}"
      f"{(r['after'] - r['baseline']) / mib:>8.0f}"
      f"{(r['peak'] - r['after']) / mib:>11.0f}"
    )
    if r["host_tree_peak"] is not None:
      tree = r["host_tree_peak"] - r["baseline"]
      row += f"{tree / mib:>11.0f}{tree / r['model_bytes']:>12.2f}"
    print(row)
  print(
    "(MiB above the baseline; transient = peak - after; host tree = "
    "full_copy's peak after load_params, before device_put)"
  )
  print(json.dumps(results))


if __name__ == "__main__":
  main()
