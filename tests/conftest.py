"""Test set-up: eight emulated CPU devices, fixed before JAX initialises."""

import os

# Must happen before the first `import jax` anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (
      _flags + " --xla_force_host_platform_device_count=8"
  ).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
