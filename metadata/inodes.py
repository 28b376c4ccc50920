"""In-memory inode records of the namespace, packed tight for millions of files.

A regular file costs one small __slots__ object: mode/uid/gid/rep/nlink live in
one interned tuple (most files share it), the three timestamps share one int
while they are equal, and a file made of one whole chunk stores just that
chunk id (a 32-byte bytes) instead of a list of extents.
"""

from __future__ import annotations

import stat
from typing import Any

S_IFMT = 0o170000
S_IFDIR = stat.S_IFDIR
S_IFREG = stat.S_IFREG
S_IFLNK = stat.S_IFLNK
S_IFIFO = stat.S_IFIFO
S_IFSOCK = stat.S_IFSOCK
S_IFCHR = stat.S_IFCHR
S_IFBLK = stat.S_IFBLK
SPECIAL_TYPES = (S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK)

TYPE_NAMES = {
    S_IFDIR: "dir",
    S_IFREG: "file",
    S_IFLNK: "symlink",
    S_IFIFO: "fifo",
    S_IFSOCK: "socket",
    S_IFCHR: "chardev",
    S_IFBLK: "blockdev",
}

# meta = (mode, uid, gid, rep, nlink); interned so identical tuples are one object
M_MODE, M_UID, M_GID, M_REP, M_NLINK = range(5)
_META: dict[tuple[int, int, int, int, int], tuple[int, int, int, int, int]] = {}

Extent = tuple[bytes | None, int]

# Timestamps are stored minus this base (2^60 ns, mid-2006): today's times then
# fit in two 30-bit digits, a 32-byte int instead of 48 (until 2042).
TIME_BASE = 1 << 60

# Sizes of small files and extent lengths share these int objects instead of
# each holding its own (32 bytes apiece; CPython caches only up to 256).
_SMALL_INTS = tuple(range(1 << 16))


def small(n: int) -> int:
    """n, as a shared int object when it is below 65536."""
    return _SMALL_INTS[n] if 0 <= n < 65536 else n


def meta(mode: int, uid: int, gid: int, rep: int, nlink: int) -> tuple[int, int, int, int, int]:
    """The interned meta tuple for these values."""
    t = (mode, uid, gid, rep, nlink)
    got = _META.get(t)
    if got is None:
        if len(_META) > 100_000:  # pathological variety: stop interning new values
            return t
        _META[t] = got = t
    return got


class Inode:
    """A file, symlink or special file.

    `data` depends on the type: for a regular file its extents (see
    pack_extents) or its Inline content, for a symlink the target string, for a
    special file rdev.
    `times` is one int while atime == mtime == ctime, else (atime, mtime, ctime),
    kept relative to TIME_BASE (see there); get_times() gives absolute ns.
    """

    __slots__ = ("data", "ino", "meta", "size", "times", "version")

    def __init__(self, ino: int, m: tuple, size: int, times: Any, version: int, data: Any):
        self.ino = ino
        self.meta = m
        self.size = _SMALL_INTS[size] if 0 <= size < 65536 else size
        if type(times) is int:
            self.times = times - TIME_BASE
        else:
            self.times = (times[0] - TIME_BASE, times[1] - TIME_BASE, times[2] - TIME_BASE)
        self.version = version
        self.data = data

    @property
    def mode(self) -> int:
        return self.meta[M_MODE]

    @property
    def ftype(self) -> int:
        return self.meta[M_MODE] & S_IFMT

    @property
    def nlink(self) -> int:
        return self.meta[M_NLINK]

    @property
    def rep(self) -> int:
        return self.meta[M_REP]

    def set_meta(self, **kw: int) -> None:
        mode, uid, gid, rep, nlink = self.meta
        self.meta = meta(
            kw.get("mode", mode),
            kw.get("uid", uid),
            kw.get("gid", gid),
            kw.get("rep", rep),
            kw.get("nlink", nlink),
        )

    def get_times(self) -> tuple[int, int, int]:
        """(atime, mtime, ctime) in ns since the epoch."""
        t = self.times
        if type(t) is int:
            t += TIME_BASE
            return (t, t, t)
        return (t[0] + TIME_BASE, t[1] + TIME_BASE, t[2] + TIME_BASE)

    def set_times(self, atime: int, mtime: int, ctime: int) -> None:
        if atime == mtime == ctime:
            self.times = atime - TIME_BASE
        else:
            self.times = (atime - TIME_BASE, mtime - TIME_BASE, ctime - TIME_BASE)

    def touch(self, ts: int, atime: bool = False, mtime: bool = True) -> None:
        """Set ctime (and mtime, optionally atime) to ts."""
        a, m, _c = self.get_times()
        self.set_times(ts if atime else a, ts if mtime else m, ts)

    def extents(self) -> list[Extent]:
        """The file's extents as a list of (chunk id | None, length)."""
        return unpack_extents(self.data, self.size)


class Dir(Inode):
    """A directory: entries map a name to its child inode."""

    __slots__ = ("entries", "index")

    def __init__(self, ino: int, m: tuple, times: Any, version: int) -> None:
        super().__init__(ino, m, 0, times, version, None)
        self.entries: dict[str, Inode] = {}
        self.index: Any = None  # SortedIndex of names, built on the first readdir


class Inline(bytes):
    """A small file's content kept in the namespace (a dfs.inline blob): no chunks.
    Its own type, so it is never mistaken for a one-chunk file's chunk id."""

    __slots__ = ()


def pack_extents(exts: list[Extent], size: int) -> Any:
    """Compact form of an extent list: None (empty), a chunk id (one chunk covering
    the whole file), or a flat tuple (id0, len0, id1, len1, ...)."""
    if not exts:
        return None
    if len(exts) == 1 and exts[0][0] is not None and exts[0][1] == size:
        return exts[0][0]
    flat: list[Any] = []
    for cid, n in exts:
        flat.append(cid)
        flat.append(small(n))
    return tuple(flat)


def unpack_extents(data: Any, size: int) -> list[Extent]:
    """A file's chunk extents ([] for an inline file: it has no chunks)."""
    if data is None or type(data) is Inline:
        return []
    if type(data) is bytes:
        return [(data, size)]
    return [(data[i], data[i + 1]) for i in range(0, len(data), 2)]


def iter_chunks(data: Any) -> list[bytes]:
    """The chunk ids (holes skipped) a file's packed extents reference, in order."""
    if data is None or type(data) is Inline:
        return []
    if type(data) is bytes:
        return [data]
    return [c for c in data[0::2] if c is not None]


def truncate_extents(exts: list[Extent], size: int, new_size: int) -> list[Extent]:
    """Cut extents down to new_size, or grow them with a trailing hole."""
    if new_size >= size:
        if new_size == size:
            return list(exts)
        out = list(exts)
        grow = new_size - size
        if out and out[-1][0] is None:
            out[-1] = (None, out[-1][1] + grow)
        else:
            out.append((None, grow))
        return out
    out = []
    left = new_size
    for cid, n in exts:
        if left <= 0:
            break
        take = min(n, left)
        out.append((cid, take))
        left -= take
    return out
