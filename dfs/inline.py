"""Small files kept inline: their content lives in the metadata service's namespace.

A file of at most INLINE_MAX bytes needs no chunk: its content travels in the
same Raft entry that commits it, so a close() of a new small file is one
metadata commit instead of a chunk put on three chunkservers (each fsync'd)
plus that commit. Raft keeps the entry fsync'd on a majority of metadata nodes,
so the durability contract holds: no minority of metadata nodes loses it.
(Lustre's Data-on-MDT and the SeaweedFS filer's small-file inlining make the
same trade.)

The stored form is a *blob*: one codec byte, then the payload (raw, or zstd
when that saves at least an eighth). The client encodes, so every metadata
replica stores the very same bytes. A blob's content may be shorter than the
file's size: the rest reads as zeros (a file truncated up after it was written).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import zstandard

from dfs.errors import DfsError

INLINE_MAX = 64 << 10  # bytes of content a file may keep inline
RAW, ZSTD = 0, 1
ZSTD_LEVEL = 3
MAX_BLOB = INLINE_MAX + 64  # a blob never needs more (zstd is kept only when smaller)

_local = threading.local()  # a zstd compressor is not safe to share across threads


def _compressor() -> zstandard.ZstdCompressor:
    """This thread's compressor (made once per thread: a context costs to set up)."""
    c = getattr(_local, "compressor", None)
    if c is None:
        c = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return c


def wanted(no_inline: bool = False) -> bool:
    """Whether a client writes small files inline: yes unless ``--no-inline`` or
    DFS_INLINE=0 (or no/off/false) in the environment."""
    if no_inline:
        return False
    return os.environ.get("DFS_INLINE", "1").strip().lower() not in ("0", "no", "off", "false")


def fits(size: int) -> bool:
    """Whether a file of this size may be stored inline."""
    return size <= INLINE_MAX


def encode(data: bytes | bytearray | memoryview) -> bytes:
    """The blob of ``data`` (at most INLINE_MAX bytes)."""
    n = len(data)
    if n > INLINE_MAX:
        raise DfsError("EFBIG", f"{n} bytes do not fit inline (at most {INLINE_MAX})")
    if n >= 128:
        z = _compressor().compress(data)
        if len(z) <= n - n // 8:
            return bytes((ZSTD,)) + z
    return bytes((RAW,)) + bytes(data)


def decode(blob: bytes) -> bytes:
    """The content a blob holds; EINVAL for anything that is not a valid blob."""
    if not isinstance(blob, bytes) or not 1 <= len(blob) <= MAX_BLOB:
        raise DfsError("EINVAL", f"inline content: not a blob of 1..{MAX_BLOB} bytes")
    codec = blob[0]
    if codec == RAW:
        if len(blob) - 1 > INLINE_MAX:
            raise DfsError("EFBIG", f"inline content over {INLINE_MAX} bytes")
        return blob[1:]
    if codec == ZSTD:
        return _unzstd(blob[1:])
    raise DfsError("EINVAL", f"inline content: unknown codec {codec}")


def _unzstd(frame: bytes) -> bytes:
    """Exactly one whole zstd frame that states its size, at most INLINE_MAX: no
    trailing bytes, which another decoder might read as more content."""
    try:
        # a frame may claim any size: refuse before anything is allocated for it
        claimed = zstandard.frame_content_size(frame)
        if claimed < 0:
            raise DfsError("EINVAL", "inline content: zstd frame without its content size")
        if claimed > INLINE_MAX:
            raise DfsError("EFBIG", f"inline content over {INLINE_MAX} bytes")
        d = zstandard.ZstdDecompressor().decompressobj()  # not safe to share across threads
        out = d.decompress(frame)
    except zstandard.ZstdError as e:
        raise DfsError("EINVAL", f"inline content: bad zstd data ({e})") from None
    if not d.eof or d.unused_data or len(out) != claimed:
        raise DfsError("EINVAL", "inline content: not exactly one whole zstd frame")
    return out


def charge(blob: bytes) -> int:
    """What a stored blob may cost at most, for the namespace's inline budget: its
    content's length plus one, since a truncate rewrites a prefix of it raw."""
    if blob[0] == RAW:
        return len(blob)
    return max(len(blob), zstandard.frame_content_size(blob[1:]) + 1)


def head(blob: bytes, size: int) -> bytes:
    """The stored bytes of a file of ``size`` (zeros follow them up to size)."""
    return decode(blob)[:size]


def content(blob: bytes, size: int) -> bytes:
    """The whole file (its blob's content, then zeros up to ``size``)."""
    data = decode(blob)
    return data + bytes(size - len(data)) if size > len(data) else data[:size]


def iter_content(blob: bytes, size: int, step: int = 1 << 20) -> Iterator[bytes]:
    """The file in pieces: a file truncated up to terabytes is mostly zeros, and
    they are produced a step at a time, never all at once."""
    data = head(blob, size)
    if data:
        yield data
    left = size - len(data)
    zeros = bytes(min(step, left))
    while left > 0:
        n = min(step, left)
        yield zeros if n == len(zeros) else bytes(n)
        left -= n
