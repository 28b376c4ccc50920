"""One open file's content on the mount: committed extents, written bytes, uploads.

A file's content is a list of extents ``[ref, length]``: the first ``length``
bytes of a chunk (``ref`` a chunk id, or a ``Pending`` chunk still being
uploaded), of a small file's inline content (``ref`` the bytes themselves,
see dfs/inline.py), or a hole of zeros (``ref`` None). Writes land in a sorted set of
dirty byte intervals over it. When enough is dirty, or at flush, each dirty
interval is spliced in: the extents before it are kept (the one it starts in
becomes a shorter prefix), the interval plus the old bytes up to the end of
the chunk it ends in are cut into new content-defined chunks, and the extents
after it are kept. So an overwrite in the middle of a large file re-uploads
only about one chunk, and appends never touch what came before.

New chunks upload in the background while the application keeps writing;
``commit`` waits for them and then makes the new extent list visible in one
metadata commit: close() returns only when the data is durable. A file of at
most INLINE_MAX bytes uploads nothing: its commit carries the content itself,
so closing it costs one Raft commit (no chunk put on three chunkservers).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dfs import errors, inline
from dfs.chunking import split_buffer
from dfs.client import Client, Uploader
from dfs.errors import DfsError
from dfs.fuse.cache import Chunk, ChunkCache

log = logging.getLogger("dfs.fuse.file")

SEAL_BYTES = 16 << 20  # dirty bytes of one file that start a background upload
READAHEAD_CHUNKS = 12  # chunks fetched ahead of a sequential reader
OPEN_PREFETCH = 2  # chunks fetched as soon as a file is opened for reading
NEAR = 4 << 20  # a read this close past the last one still counts as sequential
SMALL_CHUNK = 1 << 20  # a file's only new chunk below this skips dedup and batch placement
CHAIN_POOL = 64  # placements fetched at once for small files


class Pending:
    """A chunk cut from written data: bytes until uploaded, then its id."""

    __slots__ = ("cid", "data", "done", "error", "length", "servers")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data: bytes | memoryview | None = data
        self.length = len(data)
        self.cid: str | None = None
        self.servers: list[str] = []  # where it was stored (empty: deduplicated)
        self.done = threading.Event()
        self.error: BaseException | None = None


# None (hole) | str (chunk id) | Pending | bytes: an inline file's content, the
# mount's plain copy of what the namespace holds as a metadata.inodes.Inline blob
Ref = Any


def content_extents(info: dict[str, Any]) -> list[list[Any]]:
    """A file_chunks reply's content as extents: chunk ids and holes, or an inline
    file's content (bytes) and the zeros after it."""
    blob = info.get("inline")
    if blob is None:
        return info["extents"]
    size = info["size"]
    data = inline.head(blob, size)
    out: list[list[Any]] = [[data, len(data)]] if data else []
    if size > len(data):
        out.append([None, size - len(data)])
    return out


class Writeback:
    """The mount's upload pipeline, with a bound on bytes not yet uploaded."""

    def __init__(self, client: Client, cache: ChunkCache, limit: int, workers: int = 4) -> None:
        self.client = client
        self.cache = cache
        self.limit = limit
        self._cond = threading.Condition()
        self._inflight = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dfs-upload")

        self._chains: dict[int, list[list[str]]] = {}  # rep -> placements not used yet
        self._chains_mu = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _chain(self, rep: int) -> list[str]:
        """A placement for one small chunk, from a pool refilled CHAIN_POOL at a time."""
        with self._chains_mu:
            pool = self._chains.get(rep)
            if pool:
                return pool.pop()
        got = self.client.place(CHAIN_POOL, rep)
        if not got:
            raise DfsError(errors.UNAVAILABLE, "no chunkservers to place a chunk on")
        chain = got.pop()
        with self._chains_mu:
            self._chains.setdefault(rep, []).extend(got)
        return chain

    def put_small(self, p: Pending, rep: int) -> None:
        """Store one small chunk from the calling thread: no dedup query and a pooled
        placement, then one put to every replica at once (one hop: ~20% quicker than
        down a chain, for a chunk this small). Any failure falls back to the regular
        pipeline, which re-places and retries."""
        data = p.data
        assert data is not None
        try:
            cid = hashlib.sha256(data).hexdigest()
            chain = self._chain(rep)
            rpc = self.client.rpc
            futs = [rpc.call_async(ep, "cs.put", {"id": cid}, [data], timeout=30) for ep in chain]
            stored: list[str] = []
            for fut in futs:  # every replica must have it (durability); else the pipeline
                stored.extend(rpc.wait(fut).fields.get("stored") or ())
            stored = list(dict.fromkeys(stored)) or chain
        except Exception as exc:  # never leave p undone: a commit waits for it
            log.info("small put failed (%s); retrying through the pipeline", exc)
            with self._chains_mu:
                self._chains.clear()  # a server may be gone: place afresh
            self.submit([p], rep)
            return
        self.client.stats.chunks_sent += 1
        self.client.stats.bytes_sent += len(data)
        p.cid = cid
        p.servers = stored
        self.cache.put(cid, data)
        p.data = None
        p.done.set()

    def put_small_later(self, p: Pending, rep: int) -> None:
        """put_small on the upload pool (the caller goes on; a commit waits for p)."""
        try:
            self._pool.submit(self.put_small, p, rep)
        except RuntimeError:  # shutting down: do it here
            self.put_small(p, rep)

    def submit(self, chunks: list[Pending], rep: int) -> None:
        n = sum(p.length for p in chunks)
        with self._cond:
            while self._inflight and self._inflight + n > self.limit:
                self._cond.wait()
            self._inflight += n
        self._pool.submit(self._upload, chunks, rep, n)

    def _upload(self, chunks: list[Pending], rep: int, n: int) -> None:
        try:
            up = Uploader(self.client, rep)
            for p in chunks:
                up.add(p.data)  # type: ignore[arg-type]
            exts = up.finish()
            for p, (cid, _n) in zip(chunks, exts):
                p.cid = cid
                p.servers = list(up.stored.get(cid) or [])
                self.cache.put(cid, p.data)  # type: ignore[arg-type]
                p.data = None
        except BaseException as exc:
            log.warning("upload of %d chunks failed: %s", len(chunks), exc)
            for p in chunks:
                p.error = exc
        finally:
            for p in chunks:
                p.done.set()
            with self._cond:
                self._inflight -= n
                self._cond.notify_all()


class FileState:
    """Shared by every handle of one inode on this mount."""

    def __init__(
        self,
        fs: Any,
        ino: int,
        path: str | None,
        extents: list[list[Any]],
        size: int,
        version: int,
        rep: int,
    ) -> None:
        self.fs = fs
        self.ino = ino
        self.path = path
        self.rep = rep
        self.mu = threading.RLock()
        self.version = version
        self.refs = 0
        self.attrs: dict[str, Any] = {}
        self._set_extents([[c, n] for c, n in extents])
        self.size = size
        self._starts: list[int] = []
        self._bufs: list[bytearray] = []
        self.dirty_bytes = 0
        self.modified = False
        self.mtime_ns: int | None = None
        self._last_read_end = 0
        # a file created on this mount and not committed yet (lazy create): the
        # first commit creates it, with these owner/mode bits
        self.new = False
        self.exclusive = False
        # attribute changes made before the next commit, applied with or right after it
        self.deferred: dict[str, Any] = {}

    # ------------------------------------------------------------ extents

    def _set_extents(self, ext: list[list[Any]]) -> None:
        out: list[list[Any]] = []
        for ref, n in ext:
            if n <= 0:
                continue
            if ref is None and out and out[-1][0] is None:
                out[-1][1] += n
            else:
                out.append([ref, n])
        self.ext = out
        self._ra_index = -1  # extent whose readahead was started last
        self._dropped = 0  # extents before this one were dropped from the cache (read)
        self.offs: list[int] = []
        off = 0
        for _ref, n in out:
            self.offs.append(off)
            off += n
        self.base = off

    def refresh(self, info: dict[str, Any]) -> None:
        """Take a newer committed version from a file_chunks reply (only while
        nothing is written here); an unchanged one is not decoded again."""
        with self.mu:
            if self.modified or info["version"] == self.version:
                return
            self._set_extents([[c, n] for c, n in content_extents(info)])
            self.size = info["size"]
            self.version = info["version"]

    def _chunk_bytes(self, ref: Ref) -> Chunk:
        if type(ref) is bytes:
            return ref
        if isinstance(ref, Pending):
            data = ref.data
            if data is not None:
                return data
            ref.done.wait()
            if ref.cid is None:
                raise DfsError(errors.UNAVAILABLE, f"upload failed: {ref.error}")
            return self.fs.cache.get(ref.cid)
        return self.fs.cache.get(ref)

    # ------------------------------------------------------------ reading

    def read(self, off: int, n: int) -> bytes:
        out = bytearray(max(0, min(n, self.size - off)))
        got = self.read_into(off, n, memoryview(out))
        return bytes(out[:got])

    def read_into(self, off: int, n: int, dst: memoryview) -> int:
        """Copy bytes [off, off+n) into ``dst``; returns how many. When every chunk
        involved is cached this is a slice copy per chunk, straight into ``dst``."""
        with self.mu:
            end = min(self.size, off + n)
            if off >= end:
                return 0
            if not self._starts and end <= self.base:
                offs, ext, peek = self.offs, self.ext, self.fs.cache.peek
                i = bisect.bisect_right(offs, off) - 1
                first = i
                views = []
                pos = off
                while pos < end:
                    ref, length = ext[i]
                    s = offs[i]
                    tr = type(ref)
                    data = peek(ref) if tr is str else ref if tr is bytes else None
                    if data is None:
                        break
                    hi = min(end, s + length)
                    views.append((pos - off, memoryview(data)[pos - s : hi - s]))
                    pos = hi
                    i += 1
                if pos >= end:
                    if first != self._ra_index:
                        self._readahead(first, off)
                    self._last_read_end = end
                    for at, v in views:
                        dst[at : at + len(v)] = v
                    return end - off
        data = self._read_slow(off, n)
        dst[: len(data)] = data
        return len(data)

    def prefetch_head(self) -> None:
        """Start fetching the file's first chunks (opened for reading)."""
        with self.mu:
            head = [r for r, _n in self.ext[:OPEN_PREFETCH] if type(r) is str]
        if head:
            self.fs.cache.prefetch(head)

    def _readahead(self, i: int, off: int) -> None:
        """A sequential reader reached extent ``i``: start fetching the next ones."""
        self._ra_index = i
        if off > self._last_read_end + NEAR and off != 0:
            return  # a jump: not sequential (yet)
        ahead = [r for r, _n in self.ext[i + 1 : i + 1 + READAHEAD_CHUNKS] if type(r) is str]
        if ahead:
            self.fs.cache.prefetch(ahead)
        done = i - 1  # extents before this one are behind the reader (i-1 may straddle)
        if done > self._dropped:
            keep = set(ahead)
            keep.add(self.ext[i][0])
            behind = self.ext[max(self._dropped, done - 64) : done]
            self.fs.cache.drop([r for r, _n in behind if type(r) is str and r not in keep])
            self._dropped = done

    def _read_slow(self, off: int, n: int) -> bytes:
        with self.mu:
            end = min(self.size, off + n)
            if off >= end:
                return b""
            pieces: list[tuple[int, Ref, int, int]] = []  # (dst, ref, lo, hi)
            upto = min(end, self.base)
            i = max(0, bisect.bisect_right(self.offs, off) - 1)
            pos = off
            while pos < upto and i < len(self.ext):
                ref, length = self.ext[i]
                s = self.offs[i]
                hi = min(length, upto - s)
                if ref is not None:
                    pieces.append((pos - off, ref, pos - s, hi))
                pos = s + hi
                i += 1
            ahead: list[str] = []
            if off <= self._last_read_end <= off + n or off == 0:
                self._ra_index = i - 1
                for ref, _n in self.ext[i : i + READAHEAD_CHUNKS]:
                    if isinstance(ref, str):
                        ahead.append(ref)
            self._last_read_end = end
            overlay = self._dirty_overlay(off, end)
        cache = self.fs.cache
        cids = [r for _d, r, _l, _h in pieces if isinstance(r, str) and cache.peek(r) is None]
        if cids or ahead:
            cache.locate(cids + ahead)
        if ahead:
            cache.prefetch(ahead)
        out = bytearray(end - off)
        for dst, ref, lo, hi in pieces:
            data = self._chunk_bytes(ref)
            out[dst : dst + hi - lo] = memoryview(data)[lo:hi]
        for dst, data in overlay:
            out[dst : dst + len(data)] = data
        return bytes(out)

    def _dirty_overlay(self, off: int, end: int) -> list[tuple[int, bytes]]:
        out = []
        i = max(0, bisect.bisect_right(self._starts, off) - 1)
        while i < len(self._starts) and self._starts[i] < end:
            s, buf = self._starts[i], self._bufs[i]
            lo, hi = max(off, s), min(end, s + len(buf))
            if lo < hi:
                out.append((lo - off, bytes(buf[lo - s : hi - s])))
            i += 1
        return out

    # ------------------------------------------------------------ writing

    def write(self, off: int, data: bytes) -> int:
        if not data:
            return 0
        with self.mu:
            self._dirty_insert(off, data)
            end = off + len(data)
            if end > self.size:
                self.size = end
            self.modified = True
            self.mtime_ns = time.time_ns()
            self.deferred.pop("mtime", None)
            if self.dirty_bytes >= SEAL_BYTES:
                self._seal(final=False)
        return len(data)

    def _dirty_insert(self, off: int, data: bytes) -> None:
        starts, bufs = self._starts, self._bufs
        end = off + len(data)
        i = bisect.bisect_right(starts, off) - 1
        first = i if i >= 0 and starts[i] + len(bufs[i]) >= off else i + 1
        last = bisect.bisect_right(starts, end) - 1
        if first > last:
            starts.insert(first, off)
            bufs.insert(first, bytearray(data))
            self.dirty_bytes += len(data)
            return
        s0, b0 = starts[first], bufs[first]
        if first == last and s0 <= off:
            if off == s0 + len(b0):  # append to the interval (the sequential case)
                b0 += data
                self.dirty_bytes += len(data)
                return
            if end <= s0 + len(b0):  # rewrite inside it
                b0[off - s0 : end - s0] = data
                return
        new_start = min(s0, off)
        new_end = max(starts[last] + len(bufs[last]), end)
        buf = bytearray(new_end - new_start)
        for k in range(first, last + 1):
            s = starts[k] - new_start
            buf[s : s + len(bufs[k])] = bufs[k]
            self.dirty_bytes -= len(bufs[k])
        buf[off - new_start : end - new_start] = data
        starts[first : last + 1] = [new_start]
        bufs[first : last + 1] = [buf]
        self.dirty_bytes += len(buf)

    def truncate(self, size: int) -> None:
        with self.mu:
            if size < self.size:
                while self._starts and self._starts[-1] >= size:
                    self._starts.pop()
                    self.dirty_bytes -= len(self._bufs.pop())
                if self._starts:
                    s, buf = self._starts[-1], self._bufs[-1]
                    if s + len(buf) > size:
                        self.dirty_bytes -= s + len(buf) - size
                        del buf[size - s :]
                if size < self.base:
                    ext = []
                    left = size
                    for ref, n in self.ext:
                        if left <= 0:
                            break
                        ext.append([ref, min(n, left)])
                        left -= n
                    self._set_extents(ext)
            self.size = size
            self.modified = True
            self.mtime_ns = time.time_ns()

    # ------------------------------------------------------------ sealing

    def upload_early(self) -> None:
        """The writer of a small new file sets its times, owner or mode, as tar and
        cp -p do once the content is written: start its upload now, so it overlaps
        those calls instead of starting at close (which still waits for it). A
        later write just splices in another chunk."""
        with self.mu:
            if (
                self.new
                and not self._inline_ok()
                and len(self._starts) == 1
                and self._starts[0] == 0
                and self.dirty_bytes == self.size < SMALL_CHUNK
                and not self.base
            ):
                self._seal(final=True, background=True)

    def _seal(self, final: bool, background: bool = False) -> None:
        """Turn dirty intervals into (uploading) chunks in the extent list."""
        starts, bufs = self._starts, self._bufs
        self._starts, self._bufs = [], []
        self.dirty_bytes = 0
        small = final and len(starts) == 1
        for k, (a, buf) in enumerate(zip(starts, bufs)):
            at_eof = k == len(starts) - 1 and a + len(buf) >= self.size
            kept = self._splice(
                a, buf, holdback=at_eof and not final, small=small, background=background
            )
            if kept:
                self._starts.append(a + len(buf) - kept)
                # all kept: nothing views buf, keep it; else copy the tail out of
                # the buffer that the new chunks now view
                self._bufs.append(buf if kept == len(buf) else buf[len(buf) - kept :])
                self.dirty_bytes += kept

    def _splice(
        self, a: int, data: bytearray, holdback: bool, small: bool = False, background: bool = False
    ) -> int:
        """Replace bytes [a, a+len(data)) of the extents; returns bytes held back."""
        b = a + len(data)
        if a > self.base:
            self._set_extents([*self.ext, [None, a - self.base]])
        ext, offs = self.ext, self.offs
        i = bisect.bisect_right(offs, a) - 1 if a < self.base else len(ext)
        prefix = ext[:i]
        if i < len(ext) and a > offs[i]:
            prefix.append([ext[i][0], a - offs[i]])
        suffix: list[list[Any]] = []
        tail: bytes | memoryview = b""
        if b < self.base:
            j = bisect.bisect_right(offs, b) - 1
            ref, n = ext[j]
            s = offs[j]
            if b == s:
                suffix = ext[j:]
            elif ref is None:
                suffix = [[None, s + n - b], *ext[j + 1 :]]
            else:
                tail = memoryview(self._chunk_bytes(ref))[b - s : n]
                suffix = ext[j + 1 :]
        # the sealed buffer is no longer in the dirty set, so nothing changes it
        # again: chunks are views of it, not copies
        content = bytes(data) + bytes(tail) if tail else data
        cuts = list(split_buffer(content, self.fs.client.chunking))
        kept = 0
        if holdback and not tail and b >= self.base:
            if len(cuts) <= 1:
                return len(data)  # not even one whole chunk yet: keep it all dirty
            kept = len(cuts.pop())
        new = [Pending(c) for c in cuts]
        self._set_extents(prefix + [[p, p.length] for p in new] + suffix)
        if small and len(new) == 1 and new[0].length < SMALL_CHUNK:
            if background:
                self.fs.writeback.put_small_later(new[0], self.rep)
            else:
                self.fs.writeback.put_small(new[0], self.rep)  # the commit waits anyway
        else:
            self.fs.writeback.submit(new, self.rep)
        return kept

    # ------------------------------------------------------------ commit

    def _inline_ok(self) -> bool:
        """Whether this file's next commit may carry its content inline."""
        return inline.fits(self.size) and self.fs.client.inline_ok()

    def _whole(self) -> bytes:
        """The file's whole content (small: an inline commit's body)."""
        out = bytearray(self.size)
        for (ref, n), off in zip(self.ext, self.offs):
            k = min(n, self.size - off)
            if ref is not None and k > 0:
                out[off : off + k] = memoryview(self._chunk_bytes(ref))[:k]
        for a, buf in zip(self._starts, self._bufs):
            k = min(len(buf), self.size - a)
            if k > 0:
                out[a : a + k] = memoryview(buf)[:k]
        return bytes(out)

    def _upload_all(self) -> tuple[list[list[Any]], dict[str, list[str]]]:
        """Seal what is written, wait until every new chunk is stored, and return
        the extents to commit and where their new chunks went."""
        self._seal(final=True)
        if self.size > self.base:
            self._set_extents([*self.ext, [None, self.size - self.base]])
        was_inline = [(i, ref, n) for i, (ref, n) in enumerate(self.ext) if type(ref) is bytes]
        if was_inline:  # inline content, and the file outgrew it: it becomes a chunk
            for i, ref, n in was_inline:
                self.ext[i][0] = Pending(memoryview(ref)[:n])
            self.fs.writeback.submit([self.ext[i][0] for i, _r, _n in was_inline], self.rep)
        for attempt in range(2):
            failed = []
            for ref, _n in self.ext:
                if isinstance(ref, Pending):
                    ref.done.wait()
                    if ref.cid is None:
                        failed.append(ref)
            if not failed:
                break
            if attempt == 1:
                raise DfsError(errors.UNAVAILABLE, f"upload failed: {failed[0].error}")
            for p in failed:  # one more try: the pipeline picks new chunkservers
                p.error = None
                p.done.clear()
            self.fs.writeback.submit(failed, self.rep)
        extents = [[r.cid if isinstance(r, Pending) else r, n] for r, n in self.ext]
        stored = {r.cid: r.servers for r, _n in self.ext if isinstance(r, Pending) and r.servers}
        return extents, stored

    def commit(self, path: str | None) -> None:
        """Upload what is written and make it the file's content (flush/fsync)."""
        with self.mu:
            if not self.modified:
                return
            if path is None:  # unlinked while open: its content goes with it
                self.modified = False
                return
            body: bytes | None = None
            stored: dict[str, list[str]] = {}
            if self._inline_ok():
                body = self._whole()
                args: dict[str, Any] = {"path": path, "extents": [], "inline": inline.encode(body)}
            else:
                extents, stored = self._upload_all()
                args = {"path": path, "extents": extents}
            args.update(size=self.size, create=self.new)
            if self.new:  # lazy create: this commit makes the file, in one Raft step
                a = self.attrs
                args.update(mode=a["mode"] & 0o7777, uid=a["uid"], gid=a["gid"], expect_version=0)
            for k in ("atime", "mtime"):  # times set while writing (tar, cp -p) ride along
                if k in self.deferred:
                    args[k] = self.deferred[k]
            try:
                r = self._send_commit(path, args, stored)
            except DfsError as exc:
                if exc.code != "ENOSPC" or body is None:
                    raise
                log.warning("inline content budget spent: storing chunks for a while")
                self.fs.client.inline_spent()
                self.commit(path)
                return
            if r is None:
                return
            if body is not None:  # what was written is now the committed content
                self._starts, self._bufs, self.dirty_bytes = [], [], 0
                self._set_extents([[body, len(body)]])
            else:
                self._set_extents(args["extents"])
            self._committed(path, r["attrs"])

    def _send_commit(
        self, path: str, args: dict[str, Any], stored: dict[str, list[str]]
    ) -> dict[str, Any] | None:
        """md.commit; None when the file is gone (its content is dropped)."""
        meta = self.fs.client.meta
        try:
            try:
                return meta.call("md.commit", {"args": args, "stored": stored}, mutate=True)
            except DfsError as exc:
                if exc.code != "ESTALE" or not self.new:
                    raise
                if self.exclusive:  # made elsewhere since our O_EXCL create
                    raise DfsError("EEXIST", f"{path}: created elsewhere meanwhile") from None
                args["expect_version"] = None  # O_CREAT without O_EXCL: ours wins
                return meta.call("md.commit", {"args": args, "stored": stored}, mutate=True)
        except DfsError as exc:
            if exc.code != "ENOENT":
                raise
            log.info("commit %s: file is gone (%s); dropping its content", path, exc)
            self.modified = False
            return None

    def _committed(self, path: str, attrs: dict[str, Any]) -> None:
        """After a commit: the new version, then the attribute changes it did not carry."""
        self.version = attrs["version"]
        was_new, old_ino = self.new, self.ino
        self.new = False
        self.modified = False
        self.mtime_ns = None
        deferred, self.deferred = self.deferred, {}
        deferred.pop("atime", None)  # the commit set them
        deferred.pop("mtime", None)
        if was_new:
            for k in ("mode", "uid", "gid"):  # the commit set these already
                if deferred.get(k) == attrs[k] & (0o7777 if k == "mode" else -1):
                    deferred.pop(k)
        if deferred:
            try:
                attrs = self.fs.client.meta.ns("setattr", True, path=path, **deferred)["attrs"]
            except DfsError as exc:
                log.warning("setattr after commit of %s: %s", path, exc)
        self.attrs = attrs
        if was_new:
            self.fs.materialized(self, old_ino)

    def zero_range(self, off: int, length: int) -> None:
        """fallocate(PUNCH_HOLE / ZERO_RANGE) inside the file: write zeros."""
        end = min(self.size, off + length)
        step = 4 << 20
        while off < end:
            n = min(step, end - off)
            self.write(off, bytes(n))
            off += n
