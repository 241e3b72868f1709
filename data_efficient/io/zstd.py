"""Streamed Zstandard decompression that notices truncated files.

`zstandard`'s own `stream_reader` ends quietly when a file stops in the
middle of a frame; a corpus reader must report that instead of yielding a
short file, the way `gzip` raises `EOFError`.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import zstandard

# Compressed bytes read per step: output per step is bounded by this times
# the compression ratio, so memory stays small whatever the file size.
_READ_SIZE = 1 << 17
# Accept frames written with long-distance matching (`zstd --long=31`), as
# some corpora are; memory is only allocated as a frame needs it.
_MAX_WINDOW_SIZE = 1 << 31


class ZstdReader(io.RawIOBase):
  """Decompressed bytes of a Zstandard stream of one or more frames.

  Raises `EOFError` where the input ends inside a frame (a file cut exactly
  between two frames cannot be told from a shorter file) and
  `zstandard.ZstdError` on corrupt data (found by the frame checksum, which
  the zstd command writes, or by the format). Frames before the damage are
  returned first. Wrap in `io.BufferedReader` to read lines.
  """

  def __init__(self, compressed: BinaryIO):
    self._compressed = compressed
    self._decompressor = zstandard.ZstdDecompressor(
      max_window_size=_MAX_WINDOW_SIZE
    )
    self._frame = None  # The decompressor of the frame being read.
    self._pending = memoryview(b"")  # Decompressed, not yet returned.
    self._offset = 0  # Compressed bytes consumed, for error messages.
    self._error: zstandard.ZstdError | None = None  # Raised once drained.

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    while not self._pending:
      if not self._fill():
        return 0
    n = min(len(buffer), len(self._pending))
    buffer[:n] = self._pending[:n]
    self._pending = self._pending[n:]
    return n

  def _fill(self) -> bool:
    """Decompresses the next input; False at the clean end of the input."""
    if self._error is not None:
      raise self._error
    data = self._compressed.read(_READ_SIZE)
    if not data:
      if self._frame is not None:
        raise EOFError(
          f"Zstandard data ends inside a frame, after {self._offset} "
          "compressed bytes: the file is truncated"
        )
      return False
    output = []
    while data:
      if self._frame is None:
        self._frame = self._decompressor.decompressobj()
      try:
        output.append(self._frame.decompress(data))
      except zstandard.ZstdError as e:
        # The frames before the damage are still returned.
        self._error = zstandard.ZstdError(
          f"{e} in compressed bytes {self._offset}-{self._offset + len(data)}"
        )
        break
      self._offset += len(data)
      data = b""
      if self._frame.eof:  # One frame done; the rest starts the next one.
        data = self._frame.unused_data
        self._offset -= len(data)
        self._frame = None
    self._pending = memoryview(b"".join(output))
    return True
