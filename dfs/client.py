"""The client library: ``dfs.connect(cluster)`` and the Python API of DESIGN.md.

Writes: the stream is cut into content-defined chunks, each SHA-256'd on a
thread pool; the metadata service says which chunks the cluster already has
(those are not sent again); the rest go to placed chunkservers as chained
puts, several in flight; when every chunk is fsync'd on its replicas, one
``commit`` makes the new content visible atomically. An error before the
commit leaves no visible file.

Reads: chunk locations come from the metadata service; chunks are fetched
several at a time, each verified against its SHA-256; a dead, slow or corrupt
replica makes the client try the next one (and report a corrupt one).

Small files (at most dfs.inline.INLINE_MAX bytes) may be kept inline: their
content rides in the commit itself (one Raft entry, no chunk put). Readers
always understand inline files; a Client writes them only when made with
``inline=True`` (the ``dfs`` command does, unless ``--no-inline``), and falls
back to chunks when the cluster's inline budget is spent.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import stat
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dfs import errors, inline, paths
from dfs.chunking import DEFAULT, Chunker, ChunkParams, split_buffer, split_stream
from dfs.config import ClusterConfig, resolve
from dfs.errors import DfsError
from dfs.rpc import RpcClient

Progress = Callable[[int], None]  # called with a number of bytes just done

UPLOAD_WINDOW_BYTES = 64 << 20  # chunk bytes in flight on upload
FANOUT_MAX = 256 << 10  # chunks up to this size go to all replicas at once, not chained
BATCH_CHUNKS = 16  # chunks per locate/place round trip
READ_AHEAD = 6  # chunks fetched ahead on sequential reads
META_DEADLINE = 30.0  # seconds a metadata call keeps retrying across leader changes
CHUNK_TIMEOUT = 5.0  # seconds for one chunk from one chunkserver
SUSPECT_FOR = 20.0  # seconds a chunkserver that timed out is tried last
LOCATE_WAIT = 20.0  # seconds a read waits for a new leader to relearn chunk locations
INLINE_RETRY = 60.0  # seconds without trying inline after the cluster's budget was spent
_MISSING = object()


@dataclass
class Stats:
    """Counters a caller (or a test) can read: what really crossed the wire."""

    chunks_sent: int = 0
    bytes_sent: int = 0
    chunks_deduped: int = 0
    chunks_fetched: int = 0
    bytes_fetched: int = 0
    bad_replicas: int = 0
    inline_files: int = 0  # files committed with their content inline
    inline_fallbacks: int = 0  # small files stored as chunks: the inline budget was spent


class Metadata:
    """Talks to the metadata service: finds the leader, retries, exactly-once."""

    def __init__(self, rpc: RpcClient, endpoints: list[str], timeout: float) -> None:
        self.rpc = rpc
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._leader: str | None = None
        self.deadline: float | None = None  # seconds a call keeps retrying (None: default)
        self._client_id = uuid.uuid4().hex
        self._by_thread: dict[int, tuple[str, list[int]]] = {}
        self._sessions = 0
        self._lock = threading.Lock()

    def _session(self) -> tuple[str, list[int]]:
        """One exactly-once session per thread, so each has strictly increasing seqs."""
        # keyed by thread id, not threading.local: FUSE's C threads get a fresh
        # threading.local on every callback (a new session per call otherwise)
        ident = threading.get_ident()
        s = self._by_thread.get(ident)
        if s is None:
            with self._lock:
                self._sessions += 1
                n = self._sessions
            s = (f"{self._client_id}-{n}", [0])
            self._by_thread[ident] = s
        return s

    def call(
        self,
        op: str,
        fields: dict[str, Any] | None = None,
        *,
        mutate: bool = False,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Call the leader, following redirects and surviving a leader change
        (retrying for ``deadline`` seconds, default the client's)."""
        fields = dict(fields or {})
        if mutate:
            client, seq = self._session()
            seq[0] += 1
            fields.update(client=client, seq=seq[0])  # a retry reuses the same seq
        deadline = time.monotonic() + (deadline or self.deadline or META_DEADLINE)
        tried: list[str] = []
        delay = 0.02
        last: DfsError | None = None
        while True:
            ep = self._leader or self._next_endpoint(tried)
            try:
                fields_back = self.rpc.call(ep, op, fields, timeout=self.timeout).fields
                self._leader = ep  # it answered: ask it first next time (not a dead node)
                return fields_back
            except DfsError as exc:
                last = exc
                if self.rpc.closed:  # the client was closed: nothing to wait for
                    raise
                if exc.code == errors.NOT_LEADER:
                    hint = exc.details.get("leader")
                    self._leader = hint if isinstance(hint, str) and hint != ep else None
                    if self._leader is None:
                        tried.append(ep)
                elif exc.code in (errors.TIMEOUT, errors.UNAVAILABLE):
                    self._leader = None
                    tried.append(ep)
                else:
                    self._leader = ep
                    raise
            if time.monotonic() > deadline:
                raise DfsError(
                    errors.UNAVAILABLE,
                    f"metadata service unavailable ({last.message if last else 'no reply'})",
                )
            if len(tried) >= len(self.endpoints):
                tried.clear()
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _next_endpoint(self, tried: list[str]) -> str:
        for ep in self.endpoints:
            if ep not in tried:
                return ep
        return self.endpoints[0]

    def ns(self, op: str, mutate: bool = False, **args: Any) -> dict[str, Any]:
        """A namespace operation: ``md.<op>`` with ``args``."""
        return self.call(f"md.{op}", {"args": args}, mutate=mutate)


class Client:
    """A connection to one dfs cluster. Thread-safe."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        timeout: float = 10.0,
        chunking: ChunkParams = DEFAULT,
        workers: int = 4,
        inline: bool = False,
    ) -> None:
        """``inline``: write files of at most INLINE_MAX bytes inline (off by default
        for the library, so a caller that wants chunks everywhere gets them)."""
        self.config = config
        self.inline = inline
        self._inline_off_until = 0.0  # the budget was spent: chunks until then
        self.rpc = RpcClient(security=config.security(), timeout=timeout)
        self.meta = Metadata(self.rpc, config.metadata, timeout)
        self.chunking = chunking
        self.stats = Stats()
        self._suspects: dict[str, float] = {}  # chunkserver -> until when it is tried last
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dfs-client")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.rpc.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ namespace

    def stat(self, path: str) -> dict[str, Any]:
        return self.meta.ns("getattr", path=paths.normalize(path))["attrs"]

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except DfsError as exc:
            if exc.code == "ENOENT":
                return False
            raise

    def listdir(self, path: str = "/") -> list[str]:
        return [e["name"] for e in self.scandir(path)]

    def scandir(self, path: str = "/", page: int = 1000) -> Iterator[dict[str, Any]]:
        """Entries ``{"name", "attrs"}`` in name order, fetched a page at a time."""
        path, after = paths.normalize(path), None
        while True:
            r = self.meta.ns("readdir", path=path, after=after, limit=page)
            yield from r["entries"]
            if not r["more"] or not r["entries"]:
                return
            after = r["entries"][-1]["name"]

    def mkdir(self, path: str, parents: bool = False, mode: int = 0o755) -> dict[str, Any]:
        ids = _ids()
        return self.meta.ns(
            "mkdir", True, path=paths.normalize(path), parents=parents, mode=mode, **ids
        )

    def rename(self, src: str, dst: str) -> None:
        self.meta.ns("rename", True, src=paths.normalize(src), dst=paths.normalize(dst))

    def remove(self, path: str, recursive: bool = False) -> None:
        path = paths.normalize(path)
        attrs = self.stat(path)
        if attrs["type"] != "dir":
            self.meta.ns("unlink", True, path=path)
            return
        if not recursive:
            raise DfsError("EISDIR", f"{path}: is a directory (remove it recursively or rmdir)")
        for entry in list(self.scandir(path)):
            self.remove(paths.join(path, entry["name"]), recursive=True)
        if path != "/":
            self.rmdir(path)

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        self.meta.ns("rmdir", True, path=paths.normalize(path))

    def symlink(self, target: str, path: str) -> None:
        self.meta.ns("symlink", True, target=target, path=paths.normalize(path), **_ids())

    def readlink(self, path: str) -> str:
        return self.meta.ns("readlink", path=paths.normalize(path))["target"]

    def setrep(self, path: str, rep: int, recursive: bool = False) -> None:
        self.meta.ns("setrep", True, path=paths.normalize(path), rep=rep, recursive=recursive)

    def statfs(self) -> dict[str, Any]:
        return self.meta.ns("statfs")

    def status(self) -> dict[str, Any]:
        return self.meta.call("md.status")

    # ------------------------------------------------------------ whole files

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644) -> dict[str, Any]:
        return self.upload(data, path, mode=mode)

    def read_bytes(self, path: str) -> bytes:
        out = io.BytesIO()
        self.download(path, out)
        return out.getvalue()

    def put(
        self, local: str | os.PathLike[str], remote: str, progress: Progress | None = None
    ) -> dict[str, Any]:
        with open(local, "rb") as f:
            st = os.fstat(f.fileno())
            mode = st.st_mode & 0o7777
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                return self.upload(f, remote, mode=mode, progress=progress)
            if self.inline_ok() and inline.fits(st.st_size):
                return self.upload(f.read(), remote, mode=mode, progress=progress)
            # a regular file is cut in place: chunks are views of the mapping, no copies
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                return self.upload(mm, remote, mode=mode, progress=progress)
            finally:
                try:
                    mm.close()
                except BufferError:
                    pass  # a view is still referenced: the mapping goes with the last one

    def get(
        self, remote: str, local: str | os.PathLike[str], progress: Progress | None = None
    ) -> int:
        """Fetch to a temp file beside ``local`` and rename it into place at the end."""
        local = Path(local)
        tmp = local.with_name(f".{local.name}.dfs-part-{uuid.uuid4().hex[:12]}")
        try:
            with open(tmp, "wb") as f:
                n = self.download(remote, f, progress=progress, sparse=True)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return n

    def open(self, path: str, mode: str = "rb") -> FileReader | FileWriter:
        if mode in ("r", "rb"):
            return FileReader(self, path)
        if mode in ("w", "wb"):
            return FileWriter(self, path)
        raise ValueError(f"unsupported mode {mode!r} (use 'rb' or 'wb')")

    # ------------------------------------------------------------ write path

    def upload(
        self,
        source: BinaryIO | bytes | bytearray | memoryview | mmap.mmap,
        path: str,
        *,
        mode: int = 0o644,
        progress: Progress | None = None,
        expect_version: int | None = None,
    ) -> dict[str, Any]:
        """Chunk, dedup, upload and commit ``source`` (a stream, or a buffer cut in
        place) as ``path``; returns the new attrs. Small content goes inline when
        this client writes inline (see ``inline_ok``)."""
        path = paths.normalize(path)
        if self.inline_ok():
            if isinstance(source, (bytes, bytearray, memoryview, mmap.mmap)):
                head = source
            else:
                head = _read_upto(source, inline.INLINE_MAX + 1)
                source = _Prefixed(head, source)  # the stream again, should it not fit
            if inline.fits(len(head)):
                attrs = self.commit_inline(path, head, mode=mode, expect_version=expect_version)
                if attrs is not None:
                    if progress:
                        progress(len(head))
                    return attrs
        uploader = Uploader(self, None, progress, path=path)
        if isinstance(source, (bytes, bytearray, memoryview, mmap.mmap)):
            chunks: Iterable[bytes | memoryview] = split_buffer(source, self.chunking)
        else:
            chunks = split_stream(source, self.chunking)
        for chunk in chunks:
            uploader.add(chunk)
        extents = uploader.finish()
        return self.commit(
            path, extents, mode=mode, expect_version=expect_version, stored=uploader.stored
        )

    def commit(
        self,
        path: str,
        extents: list[list[Any]],
        *,
        mode: int = 0o644,
        expect_version: int | None = None,
        stored: dict[str, list[str]] | None = None,
    ) -> dict[str, Any]:
        """Make ``extents`` the file's content, atomically (creating it if needed).

        ``stored`` tells the leader where new chunks were just written, so a
        reader anywhere can find them the moment the commit returns."""
        size = sum(n for _, n in extents)
        args = commit_args(path, extents, size, mode, expect_version=expect_version)
        r = self.meta.call("md.commit", {"args": args, "stored": stored or {}}, mutate=True)
        return r["attrs"]

    def commit_inline(
        self,
        path: str,
        data: bytes | bytearray | memoryview | mmap.mmap,
        *,
        mode: int = 0o644,
        expect_version: int | None = None,
    ) -> dict[str, Any] | None:
        """Make ``data`` (at most INLINE_MAX bytes) the file's content, inline: one
        commit, no chunk. None when the cluster's inline budget is spent (ENOSPC):
        the caller stores chunks instead, as every small file will for a while."""
        args = commit_args(path, [], len(data), mode, expect_version=expect_version)
        args["inline"] = inline.encode(data)
        try:
            r = self.meta.call("md.commit", {"args": args, "stored": {}}, mutate=True)
        except DfsError as exc:
            if exc.code != "ENOSPC":
                raise
            self.inline_spent()
            return None
        self.stats.inline_files += 1 if data else 0  # an empty file holds nothing
        return r["attrs"]

    def inline_ok(self) -> bool:
        """Whether small files go inline now: this client writes inline and the
        cluster did not lately say its inline budget is spent."""
        return self.inline and time.monotonic() >= self._inline_off_until

    def inline_spent(self) -> None:
        """The cluster refused inline content (ENOSPC): store chunks for a while
        rather than pay a refused commit for every small file."""
        self._inline_off_until = time.monotonic() + INLINE_RETRY
        self.stats.inline_fallbacks += 1

    def locate(self, ids: list[str], dedup: bool = False) -> dict[str, list[str]]:
        """Readable copies of chunks. ``dedup``: for a writer deciding what to skip;
        chunks no file references are not offered (GC may be deleting them)."""
        if not ids:
            return {}
        fields: dict[str, Any] = {"ids": ids}
        if dedup:
            fields["dedup"] = True
        return self.meta.call("md.locate", fields)["locations"]

    def place(
        self, count: int, rep: int, exclude: Iterable[str] = (), deadline: float | None = None
    ) -> list[list[str]]:
        fields = {"count": count, "rep": rep, "exclude": list(exclude)}
        return self.meta.call("md.place", fields, deadline=deadline)["chains"]

    def report_bad(self, chunk: str, server: str) -> None:
        try:
            self.meta.call("md.report_bad", {"id": chunk, "server": server})
        except DfsError:
            pass  # best effort: the scrubber will find it too

    # ------------------------------------------------------------ read path

    def download(
        self, path: str, out: BinaryIO, progress: Progress | None = None, sparse: bool = False
    ) -> int:
        """Write the file to ``out``. ``sparse``: ``out`` is a fresh local file, so
        the zeros past an inline file's content become a hole (truncate), unwritten."""
        info = self.meta.ns("file_chunks", path=paths.normalize(path))
        if sparse and info.get("inline") is not None:
            data = inline.head(info["inline"], info["size"])
            out.write(data)
            out.truncate(info["size"])
            if progress:
                progress(info["size"])
            return info["size"]
        total = 0
        for data in self.iter_content(info):
            out.write(data)
            total += len(data)
            if progress:
                progress(len(data))
        return total

    def iter_content(self, info: dict[str, Any]) -> Iterator[bytes | memoryview]:
        """A file's content from its ``file_chunks`` reply: inline content (then
        zeros up to its size, a step at a time: a small file truncated up to a
        terabyte is legal) or its chunks, several fetched ahead."""
        if info.get("inline") is not None:
            return inline.iter_content(info["inline"], info["size"])
        return self.iter_extents(info["extents"], locations=info.get("locations"))

    def files_chunks(
        self, names: list[str], content: bool = True
    ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        """``file_chunks`` of many files in few calls: (replies in order, chunk
        locations). A reply leaves out inline content past its byte budget
        (inline_omitted); those files are asked for again, until none is left.
        ``content=False``: inline files say only their inline_bytes (no blobs)."""
        if not content:
            r = self.meta.call("md.files_chunks", {"args": {"paths": names, "content": False}})
            return r["files"], dict(r.get("locations") or {})
        r = self.meta.call("md.files_chunks", {"args": {"paths": names}})
        files: list[dict[str, Any]] = r["files"]
        locations: dict[str, list[str]] = dict(r.get("locations") or {})
        todo = [i for i, f in enumerate(files) if f.get("inline_omitted")]
        while todo:
            r = self.meta.call("md.files_chunks", {"args": {"paths": [names[i] for i in todo]}})
            locations.update(r.get("locations") or {})
            for i, f in zip(todo, r["files"]):
                files[i] = f
            left = [i for i, f in zip(todo, r["files"]) if f.get("inline_omitted")]
            if len(left) == len(todo):  # no progress (a reply budget under one blob)
                for i in left:
                    files[i] = self.meta.ns("file_chunks", path=names[i])
                    locations.update(files[i].get("locations") or {})
                left = []
            todo = left
        return files, locations

    def iter_extents(
        self,
        extents: list[list[Any]],
        ahead: int = READ_AHEAD,
        locations: dict[str, list[str]] | None = None,
    ) -> Iterator[bytes | memoryview]:
        """The content of a file's extents in order, several chunks fetched ahead.
        ``locations`` (from ``file_chunks``) saves asking for them again."""
        if locations is None:
            ids = sorted({cid for cid, _ in extents if cid})
            locations = {}
            for i in range(0, len(ids), 1000):
                locations.update(self.locate(ids[i : i + 1000]))
        window: deque[tuple[Future | None, int]] = deque()
        it = iter(extents)
        for cid, length in it:
            window.append(self._fetch_async(cid, length, locations))
            if len(window) >= ahead:
                break
        while window:
            fut, length = window.popleft()
            nxt = next(it, None)
            if nxt is not None:
                window.append(self._fetch_async(nxt[0], nxt[1], locations))
            if fut is None:
                yield bytes(length)  # a hole reads as zeros
            else:
                data = fut.result()
                yield memoryview(data)[:length] if len(data) > length else data

    def _fetch_async(
        self, cid: str | None, length: int, locations: dict[str, list[str]]
    ) -> tuple[Future | None, int]:
        if cid is None:
            return None, length
        return self._pool.submit(self.fetch_chunk, cid, spread(locations.get(cid), cid)), length

    def suspect(self, endpoint: str) -> None:
        """A chunkserver timed out or was unreachable: try it last for a while."""
        self._suspects[endpoint] = time.monotonic() + SUSPECT_FOR

    def suspects(self) -> list[str]:
        """Chunkservers that failed us lately (to leave out of new placements)."""
        now = time.monotonic()
        return [ep for ep, until in self._suspects.items() if until > now]

    def healthy_first(self, replicas: list[str]) -> list[str]:
        """Replicas in the given order, except that servers which just timed out go
        last: one dead chunkserver then costs one timeout, not one per chunk."""
        now = time.monotonic()
        return sorted(replicas, key=lambda ep: self._suspects.get(ep, 0.0) > now)

    def fetch_chunk(self, cid: str, replicas: list[str] | None = None) -> bytes:
        """One chunk, verified: try each replica until one returns the right bytes."""
        if replicas is None:
            replicas = self.locate([cid]).get(cid, [])
        tried: list[str] = []
        deadline = time.monotonic() + LOCATE_WAIT
        while True:
            for ep in self.healthy_first(replicas):
                if ep in tried:
                    continue
                tried.append(ep)
                try:
                    reply = self.rpc.call(ep, "cs.get", {"id": cid}, timeout=CHUNK_TIMEOUT)
                except DfsError as exc:
                    if exc.code == errors.CORRUPT:
                        self.stats.bad_replicas += 1
                        self.report_bad(cid, ep)
                    elif exc.code in (errors.TIMEOUT, errors.UNAVAILABLE):
                        self.suspect(ep)
                    continue
                data = reply.frames[0]
                if hashlib.sha256(data).hexdigest() != cid:
                    self.stats.bad_replicas += 1
                    self.report_bad(cid, ep)
                    continue
                self.stats.chunks_fetched += 1
                self.stats.bytes_fetched += len(data)
                return data
            # locations may be stale, or a new leader may still be collecting them
            # from the chunkservers' reports: ask again (waiting only in that case)
            r = self.meta.call("md.locate", {"ids": [cid]})
            replicas = [ep for ep in r["locations"].get(cid, []) if ep not in tried]
            if not replicas and (r.get("complete", True) or time.monotonic() > deadline):
                break
            if not replicas:
                time.sleep(0.2)
        raise DfsError(
            errors.UNAVAILABLE,
            f"chunk {cid[:16]}...: no replica could serve it (tried {len(tried)})",
        )


def spread(replicas: list[str] | None, cid: str) -> list[str] | None:
    """The replicas rotated by the chunk id, so a file's chunks are read from all
    their servers at once rather than all from the first one listed."""
    if not replicas or len(replicas) < 2:
        return replicas
    k = int(cid[:8], 16) % len(replicas)
    return replicas[k:] + replicas[:k]


def transfer_timeout(nbytes: int, hops: int = 1) -> float:
    """Seconds to wait for a chunk transfer: CHUNK_TIMEOUT per server in the chain
    (each hop waits that long for the next) plus the bytes at a slow 20 MB/s, so
    a dead server costs seconds, not a fixed half minute."""
    return CHUNK_TIMEOUT * hops + nbytes / 20e6


class Uploader:
    """Hashes chunks on a pool and sends the missing ones, a window in flight."""

    def __init__(
        self,
        client: Client,
        rep: int | None = None,
        progress: Progress | None = None,
        path: str | None = None,
    ) -> None:
        """``rep`` copies per chunk, or (None) what the metadata service says a file
        at ``path`` gets (its own or its directory's replication)."""
        self.client = client
        self.rep = rep
        self.path = path
        self.progress = progress
        self.extents: list[list[Any]] = []
        self.stored: dict[str, list[str]] = {}  # chunk -> servers that acknowledged it
        self._batch: list[tuple[Future, bytes]] = []
        self._inflight: deque[tuple[list[Future], str, bytes, list[str]]] = deque()
        self._inflight_bytes = 0

    @property
    def empty(self) -> bool:
        """Whether no chunk was given to this uploader yet."""
        return not self._batch and not self.extents

    def add(self, chunk: bytes | memoryview) -> None:
        self._batch.append((self.client._pool.submit(_sha256_hex, chunk), chunk))
        if len(self._batch) >= BATCH_CHUNKS:
            self._flush_batch()

    def finish(self) -> list[list[Any]]:
        self._flush_batch()
        while self._inflight:
            self._wait_one()
        return self.extents

    def _flush_batch(self) -> None:
        if not self._batch:
            return
        batch = [(f.result(), c) for f, c in self._batch]
        self._batch = []
        self.extents.extend([cid, len(c)] for cid, c in batch)
        unique = dict(batch)
        # one round trip: which chunks the cluster has (dedup) and where the rest go
        fields: dict[str, Any] = {"ids": list(unique), "rep": self.rep, "path": self.path}
        fields["exclude"] = self.client.suspects()  # servers that just failed us
        r = self.client.meta.call("md.place", fields)
        self.rep = r["rep"]
        missing = [(cid, unique[cid]) for cid in r["missing"]]
        deduped = sum(len(c) for cid, c in batch if cid in r["have"])
        self.client.stats.chunks_deduped += len(unique) - len(missing)
        if self.progress and deduped:
            self.progress(deduped)
        rpc = self.client.rpc
        for (cid, data), chain in zip(missing, r["chains"]):
            # asynchronous: many chunks in flight on one connection, no thread each
            if len(data) <= FANOUT_MAX:  # small: to every replica at once, one hop
                futs = self._put_each(cid, data, chain)
            else:  # big: once over our link, then down the chain of servers
                futs = [
                    rpc.call_async(
                        chain[0],
                        "cs.put",
                        {"id": cid, "forward": chain[1:]},
                        [data],
                        timeout=transfer_timeout(len(data), hops=2),  # a hop waits for the next
                    )
                ]
            self._inflight.append((futs, cid, data, chain))
            self._inflight_bytes += len(data)
            while self._inflight_bytes > UPLOAD_WINDOW_BYTES:
                self._wait_one()

    def _wait_one(self) -> None:
        """Wait for the oldest chunk; it counts only once ``rep`` servers have it
        fsync'd (DESIGN.md's durability contract), else the missing copies are
        placed again, and the upload fails if they cannot be made."""
        futs, cid, data, chain = self._inflight.popleft()
        self._inflight_bytes -= len(data)
        ok: list[str] = []
        failed: list[str] = []
        last: DfsError | None = None
        for i, fut in enumerate(futs):
            try:
                ok.extend(RpcClient.wait(fut).fields["stored"])
            except DfsError as exc:
                if exc.code == errors.HASH_MISMATCH:
                    raise
                last = exc
                got = [ep for ep in exc.details.get("stored") or () if isinstance(ep, str)]
                ok.extend(got)  # a chain that broke part-way: these have it
                if len(futs) > 1:
                    failed.append(chain[i])
                else:
                    failed.append(chain[min(len(got), len(chain) - 1)])
                if exc.code in (errors.TIMEOUT, errors.UNAVAILABLE):
                    self.client.suspect(failed[-1])
        ok = list(dict.fromkeys(ok))
        if len(ok) < (self.rep or 1):
            ok = self.complete(cid, data, ok, failed, last)
        self.client.stats.chunks_sent += 1
        self.client.stats.bytes_sent += len(data)
        self.stored[cid] = ok
        if self.progress:
            self.progress(len(data))

    def _put_each(self, cid: str, data: Any, servers: list[str]) -> list[Future]:
        """The chunk sent to each of ``servers`` at once (no forwarding)."""
        wait = transfer_timeout(len(data))
        rpc = self.client.rpc
        return [rpc.call_async(ep, "cs.put", {"id": cid}, [data], timeout=wait) for ep in servers]

    def complete(
        self, cid: str, data: Any, ok: list[str], failed: list[str], last: DfsError | None
    ) -> list[str]:
        """Put the copies still missing on new servers (avoiding those that failed)."""
        rep = self.rep or 1
        for attempt in range(4):
            need = rep - len(ok)
            try:
                # a short deadline: "no server left" is an answer, not an outage
                targets = self.client.place(1, need, exclude=ok + failed, deadline=2.0)[0]
            except (DfsError, IndexError) as exc:
                last = exc if isinstance(exc, DfsError) else last
                targets = []
            futs = self._put_each(cid, data, targets)
            for ep, fut in zip(targets, futs):
                try:
                    ok.extend(RpcClient.wait(fut).fields["stored"])
                except DfsError as exc:
                    if exc.code == errors.HASH_MISMATCH:
                        raise
                    last = exc
                    failed.append(ep)
            ok = list(dict.fromkeys(ok))
            if len(ok) >= rep:
                return ok
            time.sleep(0.2 * (attempt + 1))
            if attempt == 1:
                failed.clear()  # a server may have failed only for a moment
        why = last.message if last else "not enough chunkservers"
        raise DfsError(
            errors.UNAVAILABLE,
            f"chunk {cid[:16]}... is on {len(ok)} of the {rep} servers it needs: {why}",
        )


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ids() -> dict[str, int]:
    return {"uid": os.getuid(), "gid": os.getgid()}


def commit_args(
    path: str, extents: list[list[Any]], size: int, mode: int, **more: Any
) -> dict[str, Any]:
    """The arguments of one ``commit`` (alone, or as one op of a ``batch``)."""
    return {"path": path, "extents": extents, "size": size, "mode": mode, **more, **_ids()}


def _read_upto(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes of a stream (a pipe returns less per read than asked)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were already read: ``head``, then the rest."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._head: bytes | memoryview = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:  # everything left
            out, self._head = bytes(self._head) + self._rest.read(), b""
            return out
        if self._head:
            out, self._head = bytes(self._head[:n]), self._head[n:]
            return out
        return self._rest.read(n)


class FileReader(io.RawIOBase):
    """A seekable, read-only view of one version of a file, chunk-cached."""

    def __init__(self, client: Client, path: str, cache_chunks: int = 8) -> None:
        super().__init__()
        self.client = client
        info = client.meta.ns("file_chunks", path=paths.normalize(path))
        self.size: int = info["size"]
        self.version: int = info["version"]
        # an inline file's content (zeros follow it up to size, never materialized)
        blob = info.get("inline")
        self._inline: bytes | None = None if blob is None else inline.head(blob, self.size)
        self._extents: list[tuple[int, str | None, int]] = []
        off = 0
        for cid, n in info["extents"]:
            self._extents.append((off, cid, n))
            off += n
        self._pos = 0
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_chunks = cache_chunks

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: Any) -> int:
        data = self.pread(self._pos, len(b))
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self.size - self._pos)
        data = self.pread(self._pos, n)
        self._pos += len(data)
        return data

    def pread(self, offset: int, n: int) -> bytes:
        """Bytes [offset, offset+n) clipped to the file's size."""
        end = min(self.size, offset + n)
        if self._inline is not None:
            data = self._inline[offset:end]
            return data + bytes(max(0, end - max(offset, len(self._inline))))
        out = bytearray()
        i = self._index(offset)
        while offset < end and i < len(self._extents):
            start, _cid, length = self._extents[i]
            piece = self._extent(i)
            lo = offset - start
            hi = min(length, end - start)
            out += piece[lo:hi]
            offset = start + hi
            i += 1
        return bytes(out)

    def _index(self, offset: int) -> int:
        lo, hi = 0, len(self._extents)
        while lo < hi:
            mid = (lo + hi) // 2
            start, _, length = self._extents[mid]
            if start + length <= offset:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _extent(self, i: int) -> bytes:
        cached = self._cache.get(i, _MISSING)
        if cached is not _MISSING:
            self._cache.move_to_end(i)
            return cached  # type: ignore[return-value]
        _, cid, length = self._extents[i]
        data = bytes(length) if cid is None else self.client.fetch_chunk(cid)
        self._cache[i] = data
        while len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)
        return data


class FileWriter(io.RawIOBase):
    """Write a new version of a file; it becomes visible, whole, at close()."""

    def __init__(self, client: Client, path: str, mode: int = 0o644) -> None:
        super().__init__()
        self.client = client
        self.path = paths.normalize(path)
        self.mode = mode
        self._chunker = Chunker(client.chunking)
        self._uploader = Uploader(client, path=self.path)
        self.attrs: dict[str, Any] | None = None

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed file")
        for chunk in self._chunker.feed(b):
            self._uploader.add(chunk)
        return len(b)

    def close(self) -> None:
        if self.closed:
            return
        try:
            tail = self._chunker.finish()
            small = self._uploader.empty and inline.fits(sum(map(len, tail)))
            if small and self.client.inline_ok():
                data = b"".join(tail)
                self.attrs = self.client.commit_inline(self.path, data, mode=self.mode)
                if self.attrs is not None:
                    return
            for chunk in tail:
                self._uploader.add(chunk)
            extents = self._uploader.finish()
            self.attrs = self.client.commit(
                self.path, extents, mode=self.mode, stored=self._uploader.stored
            )
        finally:
            super().close()

    def abort(self) -> None:
        """Drop what was written: nothing becomes visible."""
        super().close()

    def __del__(self) -> None:
        # a writer dropped without close() (an error, no ``with``) must not commit
        # a partial file when it is collected: IOBase's finalizer would call close()
        if not self.closed:
            self.abort()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()  # an error inside ``with``: do not commit a partial file
        else:
            self.close()


def connect(cluster: str | ClusterConfig | None = None, **kwargs: Any) -> Client:
    """Connect to a cluster: endpoints, a cluster.toml path, or ``$DFS_CLUSTER``."""
    config = cluster if isinstance(cluster, ClusterConfig) else resolve(cluster)
    return Client(config, **kwargs)
