"""Tests for data_efficient.sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_efficient import sharding


def _rows(n, *rest):
  return np.arange(n * int(np.prod(rest)), dtype=np.float64).reshape(n, *rest)


@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("n", [1, 13, 16, 100])
@pytest.mark.parametrize("as_jax", [False, True])
def test_shard_rows_pads_with_zeros_and_splits_rows(devices, n, as_jax):
  mesh = sharding.make_mesh(devices=jax.devices()[:devices])
  x = _rows(n, 3)
  multiple = devices * 8
  got = sharding.shard_rows(jnp.asarray(x) if as_jax else x, mesh, multiple)
  n_pad = -(-n // multiple) * multiple
  assert got.shape == (n_pad, 3) and got.dtype == jnp.float32
  assert got.sharding == sharding.rows_sharding(mesh)
  assert got.sharding.spec == jax.P((sharding.DATA, sharding.MODEL))
  want = np.zeros((n_pad, 3), np.float32)
  want[:n] = x
  np.testing.assert_array_equal(np.asarray(got), want)
  # Device i holds rows [i * n_pad / devices, (i + 1) * n_pad / devices).
  per_device = n_pad // devices
  for shard in got.addressable_shards:
    i = list(mesh.devices.flat).index(shard.device)
    rows = range(n_pad)[shard.index[0]]
    assert rows == range(i * per_device, (i + 1) * per_device)
    np.testing.assert_array_equal(shard.data, want[shard.index])


def test_shard_rows_keeps_a_multiple_and_trailing_axes(mesh):
  x = _rows(24, 2, 5)
  got = sharding.shard_rows(x, mesh, 8)
  assert got.shape == (24, 2, 5)  # already a multiple: no padding
  np.testing.assert_array_equal(np.asarray(got), x.astype(np.float32))
  assert {s.data.shape for s in got.addressable_shards} == {(3, 2, 5)}


def test_shard_rows_splits_over_the_model_axis_too():
  mesh = sharding.make_mesh(model_parallelism=2)
  got = sharding.shard_rows(_rows(5, 4), mesh, 16)
  assert got.shape == (16, 4)
  # Eight distinct two-row shards, not four copied twice.
  shards = got.addressable_shards
  assert {s.data.shape for s in shards} == {(2, 4)}
  assert sorted(s.index[0].start for s in shards) == list(range(0, 16, 2))


@pytest.mark.parametrize("devices", [1, 8])
def test_shard_rows_replicated(devices):
  mesh = sharding.make_mesh(devices=jax.devices()[:devices])
  x = _rows(13, 3)
  got = sharding.shard_rows(x, mesh, 24, replicate=True)
  assert got.sharding == sharding.replicated(mesh)
  assert len(got.addressable_shards) == devices
  want = np.concatenate([x, np.zeros((11, 3))]).astype(np.float32)
  for shard in got.addressable_shards:
    np.testing.assert_array_equal(shard.data, want)


def test_shard_rows_rejects_a_multiple_the_devices_do_not_divide(mesh):
  with pytest.raises(ValueError, match="multiple=12 .* 8 devices"):
    sharding.shard_rows(_rows(5, 2), mesh, 12)
  # Replicated rows need no split: any multiple works.
  got = sharding.shard_rows(_rows(5, 2), mesh, 12, replicate=True)
  assert got.shape == (12, 2)
