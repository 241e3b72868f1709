"""Checks shared by the corpus reader tests."""

import collections
import itertools

import pytest


def _blocks(records):
  """Groups consecutive records with equal `block`: [(block, [records])]."""
  return [
    (block, list(group))
    for block, group in itertools.groupby(records, key=lambda r: r.block)
  ]


def _check_block_shares(read, block_size, process_counts=(1, 2, 3)):
  """Asserts the block contract of `Corpus.records` for one corpus.

  Args:
    read: `read(process_index, process_count, start)` -> list of records,
      reading with `block_size`.
    block_size: The block size `read` uses.
    process_counts: Process counts to compare with one process.

  Returns:
    The one-process stream.
  """
  whole = read(0, 1, 0)
  whole_blocks = _blocks(whole)
  by_block = dict(whole_blocks)
  # Consecutive records with equal `block` are exactly one block.
  assert len(by_block) == len(whole_blocks)
  assert all(len(group) <= block_size for _, group in whole_blocks)
  block_ids = collections.Counter(
    tuple(r.id for r in group) for _, group in whole_blocks
  )
  for count in process_counts:
    shares = [read(index, count, 0) for index in range(count)]
    # Every record exactly once.
    ids = [r.id for share in shares for r in share]
    assert sorted(ids) == sorted(r.id for r in whole)
    assert len(ids) == len(set(ids))
    found_blocks = collections.Counter()
    for index, share in enumerate(shares):
      groups = _blocks(share)
      assert len({block for block, _ in groups}) == len(groups)
      for block, group in groups:
        assert group == by_block[block]  # Whole, same order, same records.
        found_blocks[tuple(r.id for r in group)] += 1
      # Resuming at every block boundary (and inside the first block).
      boundaries = itertools.accumulate(len(g) for _, g in groups)
      for start in {1, *boundaries, len(share) + 2}:
        assert read(index, count, start) == share[start:]
    assert found_blocks == block_ids
  return whole


@pytest.fixture
def check_block_shares():
  """`check_block_shares(read, block_size)`: see `_check_block_shares`."""
  return _check_block_shares
