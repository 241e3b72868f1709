"""Tests for the streamed Zstandard reader."""

import io

import pytest
import zstandard

from data_efficient.io import zstd


class _CountingFile(io.BytesIO):
  """A file that counts the bytes read from it."""

  consumed = 0

  def read(self, size=-1):
    data = super().read(size)
    self.consumed += len(data)
    return data


def _lines(n):
  return b"".join(b"line %d %s\n" % (i, b"x" * (i % 97)) for i in range(n))


def test_reads_every_frame_of_a_multi_frame_file():
  data = _lines(1000)
  compressor = zstandard.ZstdCompressor()
  frames = compressor.compress(data[:5000]) + compressor.compress(data[5000:])
  reader = io.BufferedReader(zstd.ZstdReader(io.BytesIO(frames)))
  assert reader.read() == data


def test_streams_without_reading_the_whole_file():
  data = _lines(200_000)  # ~10 MB, written by a streaming writer.
  compressed = io.BytesIO()
  with zstandard.ZstdCompressor().stream_writer(
    compressed, closefd=False
  ) as writer:
    writer.write(data)
  source = _CountingFile(compressed.getvalue())
  reader = io.BufferedReader(zstd.ZstdReader(source))
  assert reader.readline() == b"line 0 \n"
  assert source.consumed < len(source.getvalue()) // 2
  assert reader.readline() + reader.read() == data[len(b"line 0 \n") :]


def test_truncated_and_corrupt_data_raise_with_the_byte_offset():
  # With a checksum, as the zstd command writes by default.
  compressor = zstandard.ZstdCompressor(write_checksum=True)
  compressed = compressor.compress(_lines(1000))
  with pytest.raises(EOFError, match=r"after \d+ compressed bytes"):
    io.BufferedReader(zstd.ZstdReader(io.BytesIO(compressed[:-10]))).read()
  corrupt = compressed[:100] + b"\xff" * 32 + compressed[132:]
  with pytest.raises(zstandard.ZstdError, match=r"compressed bytes 0-\d+"):
    io.BufferedReader(zstd.ZstdReader(io.BytesIO(corrupt))).read()


def test_an_empty_file_is_empty():
  assert io.BufferedReader(zstd.ZstdReader(io.BytesIO(b""))).read() == b""
