"""Content-defined chunking (FastCDC) and chunk ids.

Cut points depend on the content, not on offsets, so inserting bytes near the
start of a file changes only the chunks around the insertion: the rest keep
their ids and are not uploaded again (dedup).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc.cy import FastCDC

# pyfastcdc's real mean is about avg + min (FIELD-NOTES): ~1 MiB chunks
MIN_SIZE = 256 * 1024
AVG_SIZE = 768 * 1024
MAX_SIZE = 4 * 1024 * 1024
READ_BLOCK = 16 * 1024 * 1024


def chunk_id(data: bytes | memoryview) -> str:
    """A chunk's id: SHA-256 of its content, 64 lowercase hex characters."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ChunkParams:
    min_size: int = MIN_SIZE
    avg_size: int = AVG_SIZE
    max_size: int = MAX_SIZE

    def cutter(self) -> FastCDC:
        return FastCDC(avg_size=self.avg_size, min_size=self.min_size, max_size=self.max_size)


DEFAULT = ChunkParams()


def split_buffer(
    buf: bytes | bytearray | memoryview, params: ChunkParams = DEFAULT
) -> Iterator[memoryview]:
    """Cut a whole buffer; each piece is a view into ``buf`` (no copy)."""
    with memoryview(buf) as view:
        cuts = [(c.offset, c.offset + c.length) for c in params.cutter().cut_buf(view)]
    whole = memoryview(buf)
    for start, end in cuts:
        yield whole[start:end]


class Chunker:
    """Incremental chunking: feed bytes as they come, get whole chunks back.

    Cut points are the same as for the whole buffer: the chunk that reaches
    the end of what was fed so far is held back until more data (or
    ``finish``) shows where it really ends.
    """

    def __init__(self, params: ChunkParams = DEFAULT) -> None:
        self.params = params
        self._cutter = params.cutter()
        self._pending = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self._pending += data
        if len(self._pending) < self.params.max_size * 2:
            return []
        return self._cut(final=False)

    def finish(self) -> list[bytes]:
        return self._cut(final=True) if self._pending else []

    def _cut(self, final: bool) -> list[bytes]:
        pending = self._pending
        with memoryview(pending) as view:
            cuts = [(c.offset, c.offset + c.length) for c in self._cutter.cut_buf(view)]
        out: list[bytes] = []
        consumed = 0
        for start, end in cuts:
            if end == len(pending) and not final:
                break  # may continue past what we have: wait for more
            out.append(bytes(pending[start:end]))
            consumed = end
        del pending[:consumed]
        return out


def split_stream(
    stream: BinaryIO, params: ChunkParams = DEFAULT, block: int = READ_BLOCK
) -> Iterator[bytes]:
    """Cut a stream of any length, reading ``block`` bytes at a time."""
    chunker = Chunker(params)
    while data := stream.read(block):
        yield from chunker.feed(data)
    yield from chunker.finish()
