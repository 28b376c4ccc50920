"""Background scrubbing: re-read every stored chunk at a bounded rate and check it.

Each pass walks the store in id order, page by page, and runs the store's full
check on every chunk (header, xxh3 of the stored bytes, SHA-256 of the content).
A bad copy is quarantined by the store (moved aside, never deleted) and handed
to ``on_corrupt``, so the next heartbeat reports it and the metadata leader has
it re-copied from a good replica. The read rate is bounded by a token bucket
(bytes per second of stored data), so scrubbing never starves client I/O.

Passes repeat every ``interval`` seconds; ``start_now()`` (op ``cs.scrub``)
begins one at once. Progress (percent of the current pass, end of the last
full pass) goes into the chunkserver's stat, and from there into heartbeats
and ``dfs-admin status``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from chunkserver.store import ChunkStore
from dfs.errors import DfsError

log = logging.getLogger("dfs.chunkserver.scrub")

DEFAULT_RATE = 16 << 20  # bytes per second
DEFAULT_INTERVAL = 24 * 3600.0  # seconds between the starts of automatic passes
PAGE = 1000


class Scrubber:
    """A daemon thread that scrubs one ChunkStore."""

    def __init__(
        self,
        store: ChunkStore,
        on_corrupt: Callable[[str], None],
        rate: float = DEFAULT_RATE,
        interval: float = DEFAULT_INTERVAL,
        first_delay: float | None = None,
    ) -> None:
        self.store = store
        self.on_corrupt = on_corrupt
        self.rate = float(rate)  # bytes/s; 0 = no automatic passes, on-demand ones unlimited
        self.interval = float(interval)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        # progress, read by stat() from other threads
        self.running = False
        self.passes = 0
        self.pass_started = 0.0  # wall clock
        self.last_pass_end = 0.0  # wall clock of the last completed pass (0: never)
        self.last_pass_seconds = 0.0
        self.pass_total = 0  # chunks when the pass began
        self.pass_done = 0
        self.bytes_read = 0
        self.corrupt_found = 0
        self.requested = 0  # on-demand passes asked for
        delay = min(self.interval, 300.0) if first_delay is None else first_delay
        self._next = time.monotonic() + delay
        self._thread = threading.Thread(target=self._run, name="scrub", daemon=True)

    def start(self) -> Scrubber:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def start_now(self) -> bool:
        """Begin a pass at once (False if one is already running: it continues)."""
        with self._lock:
            self.requested += 1
            was = self.running
        self._wake.set()
        return not was

    def progress(self) -> dict[str, Any]:
        with self._lock:
            pct = 100.0 * self.pass_done / self.pass_total if self.pass_total else 100.0
            return {
                "running": self.running,
                "pct": round(min(pct, 100.0), 1) if self.running else None,
                "passes": self.passes,
                "last_pass_end": self.last_pass_end,
                "last_pass_seconds": round(self.last_pass_seconds, 3),
                "corrupt_found": self.corrupt_found,
                "bytes_read": self.bytes_read,
                "rate": self.rate,
            }

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                on_demand = self.requested > 0
                self.requested = 0
            due = self.rate > 0 and time.monotonic() >= self._next
            if on_demand or due:
                try:
                    self._pass(limited=self.rate > 0)
                except Exception:  # never let one bad pass kill the thread
                    log.exception("scrub pass failed")
                    with self._lock:
                        self.running = False
                self._next = time.monotonic() + self.interval
                continue
            wait = max(0.05, min(self._next - time.monotonic(), 60.0)) if self.rate > 0 else 60.0
            self._wake.wait(wait)
            self._wake.clear()

    def _pass(self, limited: bool) -> None:
        with self._lock:
            self.running = True
            self.pass_started = time.time()
            self.pass_total = max(1, int(self.store.stat()["chunks"]))
            self.pass_done = 0
        t0 = time.monotonic()
        bucket = _Bucket(self.rate) if limited else None
        after = None
        bad = 0
        while not self._stop.is_set():
            ids, more = self.store.list_ids(after, PAGE)
            for cid in ids:
                if self._stop.is_set():
                    return
                size = self._size(cid)
                if bucket is not None:
                    bucket.take(size, self._stop)
                if not self._check(cid):
                    bad += 1
                with self._lock:
                    self.pass_done += 1
                    self.bytes_read += size
            if not more or not ids:
                break
            after = ids[-1]
        with self._lock:
            self.running = False
            self.passes += 1
            self.last_pass_end = time.time()
            self.last_pass_seconds = time.monotonic() - t0
            self.pass_total = self.pass_done
        log.info(
            "scrub pass %d done: %d chunks in %.1fs, %d corrupt",
            self.passes,
            self.pass_done,
            self.last_pass_seconds,
            bad,
        )

    def _size(self, cid: str) -> int:
        try:
            return os.stat(self.store._path(cid)).st_size
        except OSError:
            return 0

    def _check(self, cid: str) -> bool:
        try:
            ok = self.store.verify(cid)
        except DfsError as exc:  # deleted meanwhile, or unreadable: not ours to judge
            log.debug("scrub: %s: %s", cid[:12], exc.message)
            return True
        except OSError as exc:
            log.warning("scrub: cannot read %s: %s", cid[:12], exc)
            return True
        if not ok:
            with self._lock:
                self.corrupt_found += 1
            log.warning("scrub: chunk %s is corrupt: quarantined, reporting it", cid)
            self.on_corrupt(cid)
        return ok


class _Bucket:
    """A token bucket of ``rate`` bytes per second with one second of burst."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.last = time.monotonic()

    def take(self, n: int, stop: threading.Event) -> None:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            stop.wait(-self.tokens / self.rate)
