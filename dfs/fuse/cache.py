"""The mount's chunk cache: bounded LRU of verified chunks, readahead, replica health.

Chunks are immutable (their id is their SHA-256), so a cached chunk never goes
stale: the cache needs no invalidation, only a byte budget. Fetches of one
chunk by several threads share one request; readahead fetches on a small pool.
A replica that timed out is tried last for a while, so a dead chunkserver
costs one timeout, not one per chunk.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from dfs import errors
from dfs.client import Client, spread
from dfs.errors import DfsError

log = logging.getLogger("dfs.fuse.cache")

FETCH_TIMEOUT = 4.0  # seconds one replica gets to answer a chunk get
LOCATION_TTL = 30.0  # seconds chunk locations are reused

Chunk = bytes | memoryview  # a chunk's bytes (a view of the received frame: no copy)


class ChunkCache:
    """Verified chunk bytes by id, least recently used out first."""

    def __init__(self, client: Client, capacity: int, workers: int = 8) -> None:
        self.client = client
        self.capacity = max(capacity, 8 << 20)
        self._mu = threading.Lock()
        self._data: OrderedDict[str, Chunk] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[str, Future] = {}
        self._loc: dict[str, tuple[float, list[str]]] = {}
        self._servers: tuple[float, list[str]] | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dfs-readahead")
        self.hits = 0
        self.misses = 0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ cache

    def peek(self, cid: str) -> Chunk | None:
        """The chunk if it is in memory, else None: the read fast path (no lock:
        a dict lookup is atomic, and a stale LRU position only costs an early eviction)."""
        return self._data.get(cid)

    def put(self, cid: str, data: Chunk) -> None:
        """Remember a chunk we already hold (e.g. one just uploaded)."""
        with self._mu:
            self._insert(cid, data)

    def _insert(self, cid: str, data: Chunk) -> None:
        if cid in self._data:
            self._data.move_to_end(cid)
            return
        if len(data) > self.capacity // 4:
            return
        self._data[cid] = data
        self._bytes += len(data)
        while self._bytes > self.capacity and self._data:
            _, old = self._data.popitem(last=False)
            self._bytes -= len(old)

    def drop(self, cids: Iterable[str]) -> None:
        """Forget chunks a sequential reader is done with: the kernel keeps the pages
        it wants, and freed buffers get reused instead of fresh memory (page faults)."""
        with self._mu:
            for cid in cids:
                data = self._data.pop(cid, None)
                if data is not None:
                    self._bytes -= len(data)

    def get(self, cid: str) -> Chunk:
        """The chunk's bytes: from memory, or fetched (and verified) now."""
        with self._mu:
            data = self._data.get(cid)
            if data is not None:
                self._data.move_to_end(cid)
                self.hits += 1
                return data
            fut = self._inflight.get(cid)
            mine = fut is None
            if mine:
                fut = self._inflight[cid] = Future()
                self.misses += 1
        if mine:
            self._run_fetch(cid, fut)
        return fut.result()

    def prefetch(self, cids: Iterable[str]) -> None:
        """Start fetching chunks not cached yet, in the background."""
        todo = []
        with self._mu:
            for cid in cids:
                if cid in self._data or cid in self._inflight:
                    continue
                fut: Future = Future()
                self._inflight[cid] = fut
                todo.append((cid, fut))
        for cid, fut in todo:
            try:
                self._pool.submit(self._run_fetch, cid, fut)
            except RuntimeError:  # shutting down
                with self._mu:
                    self._inflight.pop(cid, None)
                fut.set_exception(DfsError(errors.UNAVAILABLE, "mount is closing"))

    def _run_fetch(self, cid: str, fut: Future) -> None:
        try:
            data = self.fetch(cid)
        except BaseException as exc:
            with self._mu:
                self._inflight.pop(cid, None)
            fut.set_exception(exc)
            return
        with self._mu:
            self._inflight.pop(cid, None)
            self._insert(cid, data)
        fut.set_result(data)

    # ------------------------------------------------------------ locations

    def learn(self, locations: dict[str, list[str]]) -> None:
        """Locations the metadata service sent along (file_chunks at open)."""
        now = time.monotonic()
        with self._mu:
            for cid, eps in locations.items():
                if eps:
                    self._loc[cid] = (now, list(eps))
            if len(self._loc) > 200_000:
                self._loc.clear()

    def locate(self, cids: Iterable[str]) -> None:
        """Learn the replicas of these chunks in one round trip (the unknown ones)."""
        now = time.monotonic()
        with self._mu:
            want = sorted({c for c in cids if c and not self._fresh(c, now)})
        for i in range(0, len(want), 1000):
            got = self.client.locate(want[i : i + 1000])
            with self._mu:
                for cid in want[i : i + 1000]:
                    self._loc[cid] = (now, list(got.get(cid) or []))
                if len(self._loc) > 200_000:
                    self._loc.clear()

    def _fresh(self, cid: str, now: float) -> bool:
        got = self._loc.get(cid)
        return got is not None and now - got[0] < LOCATION_TTL and bool(got[1])

    def _replicas(self, cid: str, refresh: bool = False) -> list[str]:
        now = time.monotonic()
        with self._mu:
            fresh = not refresh and self._fresh(cid, now)
        if not fresh:
            got = self.client.locate([cid]).get(cid) or []
            with self._mu:
                self._loc[cid] = (now, list(got))
        with self._mu:
            reps = list(self._loc[cid][1])
        if not refresh:  # spread a file's chunks over their replicas
            reps = spread(reps, cid) or []
        else:  # locations are soft state and lag new uploads: ask every server too
            reps += [ep for ep in self._all_servers() if ep not in reps]
        return self.client.healthy_first(reps)

    def _all_servers(self) -> list[str]:
        now = time.monotonic()
        if self._servers is None or self._servers[0] < now:
            try:
                st = self.client.status()
                eps = [
                    s["endpoint"] for s in st.get("chunkservers", []) if s.get("state") == "alive"
                ]
            except DfsError:
                eps = []
            self._servers = (now + 5.0, eps)
        return list(self._servers[1])

    # ------------------------------------------------------------ fetching

    def fetch(self, cid: str) -> Chunk:
        """One chunk from the first replica that returns the right bytes."""
        tried: set[str] = set()
        last: DfsError | None = None
        for attempt in range(3):
            for ep in self._replicas(cid, refresh=attempt > 0):
                if ep in tried:
                    continue
                tried.add(ep)
                try:
                    reply = self.client.rpc.call(ep, "cs.get", {"id": cid}, timeout=FETCH_TIMEOUT)
                except DfsError as exc:
                    last = exc
                    if exc.code == errors.CORRUPT:
                        self.client.stats.bad_replicas += 1
                        self.client.report_bad(cid, ep)
                    elif exc.code in (errors.TIMEOUT, errors.UNAVAILABLE):
                        self.client.suspect(ep)
                    continue
                data = reply.frames[0]  # bytes, or a view of the zmq frame (kept, not copied)
                if hashlib.sha256(data).hexdigest() != cid:
                    self.client.stats.bad_replicas += 1
                    self.client.report_bad(cid, ep)
                    continue
                self.client.stats.chunks_fetched += 1
                self.client.stats.bytes_fetched += len(data)
                return data
            if attempt == 1:
                time.sleep(0.5)
        raise DfsError(
            errors.UNAVAILABLE,
            f"chunk {cid[:16]}...: no replica could serve it"
            f" ({last.message if last else 'no locations'})",
        )
