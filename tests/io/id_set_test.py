"""Tests for the compact id hash set."""

import numpy as np

from data_efficient.io import id_set


def test_finds_every_duplicate_across_flushes():
  ids = [f"https://example.com/{i}" for i in range(5000)]
  seen = id_set.IdHashSet(pending_limit=300)  # Forces many merges.
  assert not any(seen.add(i) for i in ids)
  assert len(seen) == len(ids)
  assert all(seen.add(i) for i in ids[::-7])
  assert len(seen) == len(ids)
  assert not seen.add("https://example.com/new")


def test_hash_is_stable_and_64_bit():
  assert id_set.id_hash("a") == id_set.id_hash("a")
  assert id_set.id_hash("a") != id_set.id_hash("b")
  hashes = np.array([id_set.id_hash(str(i)) for i in range(1000)], np.uint64)
  assert hashes.max() > 2**63  # Uses the full 64 bits.
  assert id_set.id_hash("\ud800") != id_set.id_hash("\ufffd")
