"""The chunkserver's side of the registry: register, full report, heartbeats.

On (re)registration the server sends its whole chunk list in pages; after
that each heartbeat carries what was added and removed since the last one.
A leader that does not know us (it just took over) answers a heartbeat with
``known: false``, and we register again: chunk locations are soft state on
the leader, rebuilt from these reports.
"""

from __future__ import annotations

import logging
import socket
import threading

from dfs.client import Metadata
from dfs.config import resolve
from dfs.errors import DfsError
from dfs.rpc import RpcClient

log = logging.getLogger("dfs.chunkserver.heartbeat")

INTERVAL = 1.0  # seconds between heartbeats
REPORT_PAGE = 10_000


class ChunkLog:
    """Chunks added/removed since the last heartbeat (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.added: set[str] = set()
        self.removed: set[str] = set()
        self.corrupt: set[str] = set()  # found bad (quarantined), not yet reported

    def add(self, cid: str) -> None:
        with self._lock:
            self.removed.discard(cid)
            self.added.add(cid)

    def remove(self, cid: str) -> None:
        with self._lock:
            self.added.discard(cid)
            self.removed.add(cid)

    def bad(self, cid: str) -> None:
        with self._lock:
            self.added.discard(cid)
            self.corrupt.add(cid)

    def take_corrupt(self) -> list[str]:
        with self._lock:
            out = sorted(self.corrupt)
            self.corrupt.clear()
        return out

    def put_back_corrupt(self, ids: list[str]) -> None:
        with self._lock:
            self.corrupt.update(ids)

    def take(self) -> tuple[list[str], list[str]]:
        with self._lock:
            added, removed = sorted(self.added), sorted(self.removed)
            self.added.clear()
            self.removed.clear()
        return added, removed

    def put_back(self, added: list[str], removed: list[str]) -> None:
        with self._lock:
            self.added.update(a for a in added if a not in self.removed)
            self.removed.update(r for r in removed if r not in self.added)


class Heartbeat:
    """A thread that keeps this chunkserver registered with the metadata leader."""

    def __init__(
        self,
        server,
        cluster: str,
        key_file: str | None = None,
        labels: dict[str, str] | None = None,
        interval: float = INTERVAL,
    ) -> None:
        self.server = server
        cfg = resolve(cluster, key_file)
        # short timeouts: after a leader dies, find the new one (and re-register) quickly
        self.rpc = RpcClient(security=cfg.security(), timeout=1.0)
        self.meta = Metadata(self.rpc, cfg.metadata, timeout=1.0)
        self.labels = labels or {}
        self.interval = interval
        self.node = f"{socket.gethostname()}:{server.endpoint.rsplit(':', 1)[-1]}"
        self._stop = threading.Event()
        self._registered = False
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.rpc.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._registered:
                    self._register()
                else:
                    self._beat()
            except DfsError as exc:
                log.warning("metadata service: %s", exc.message)
                self._registered = False
            except Exception:  # never let the thread die: a silent server is declared dead
                log.exception("heartbeat failed; registering again")
                self._registered = False
            self._stop.wait(self.interval)

    def _register(self) -> None:
        self.server.chunk_log.take()  # the full report below covers these
        ep = self.server.endpoint
        self.meta.call(
            "md.register",
            {"endpoint": ep, "node": self.node, "stat": self.server.stat(), "labels": self.labels},
        )
        after = None
        while True:
            ids, more = self.server.store.list_ids(after, REPORT_PAGE)
            self.meta.call("md.report", {"endpoint": ep, "ids": ids, "done": not more})
            if not more:
                break
            after = ids[-1]
        self._registered = True
        log.info(
            "registered with the metadata service (%d chunks reported)",
            self.server.store.stat()["chunks"],
        )

    def _beat(self) -> None:
        added, removed = self.server.chunk_log.take()
        corrupt = self.server.chunk_log.take_corrupt()
        try:
            r = self.meta.call(
                "md.heartbeat",
                {
                    "endpoint": self.server.endpoint,
                    "node": self.node,
                    "stat": self.server.stat(),
                    "added": added,
                    "removed": removed,
                    "corrupt": corrupt,
                },
            )
        except DfsError:
            self.server.chunk_log.put_back(added, removed)
            self.server.chunk_log.put_back_corrupt(corrupt)
            raise
        if not r.get("known", True):
            self._registered = False
            return
        for cmd in r.get("commands", []):
            self.server.run_command(cmd)
