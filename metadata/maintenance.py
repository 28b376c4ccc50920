"""The leader's background work: re-replication, trimming, garbage collection.

Runs on the metadata driver thread (it owns the namespace and the registry),
a round every few seconds, only on the leader and only once every live
chunkserver has finished its chunk report (soft state is complete). Copies and
deletes go out as asynchronous RPCs to the chunkservers; their completions come
back through the driver's queue, so the registry is only touched on the driver.

GC fails closed: a chunk is deleted only after the namespace, through Raft,
declared it unreferenced for a whole grace period (``gc_expire``); chunks the
chunkservers hold that no file references are first marked (``gc_mark``) and
only expire a grace period later, so an upload not yet committed is safe.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dfs.errors import DfsError
from dfs.rpc import RpcClient
from metadata import repair
from metadata.registry import chunk_key

if TYPE_CHECKING:
    from metadata.server import MetadataNode

log = logging.getLogger("dfs.metadata.maintenance")


@dataclass
class MaintenanceConfig:
    interval: float = 2.0  # seconds between rounds
    gc_grace: float = 60.0  # seconds a chunk stays unreferenced before deletion
    orphan_grace: float = 3600.0  # for chunks no file ever referenced: uploads in progress
    per_server: int = 4  # concurrent copies per chunkserver
    max_copies: int = 200  # copies planned per round
    rebalance_threshold: float | None = None  # set by `dfs-admin rebalance`


@dataclass
class Progress:
    copies_done: int = 0
    copies_failed: int = 0
    bytes_copied: int = 0
    deletes_sent: int = 0
    gc_deleted: int = 0
    moves_done: int = 0
    last_round: float = 0.0
    last_fsck: dict[str, Any] = field(default_factory=dict)


class Maintenance:
    def __init__(self, node: MetadataNode, config: MaintenanceConfig | None = None) -> None:
        self.node = node
        self.cfg = config or MaintenanceConfig()
        self.busy: Counter[str] = Counter()  # copies in flight per server
        self.inflight: set[str] = set()  # chunks with a copy in flight
        self.progress = Progress()
        self._next = 0.0
        self._gc_pending = False
        self.moves: list[repair.Move] = []  # an admin-requested rebalance plan, in progress

    @property
    def rpc(self) -> RpcClient:
        return self.node.peer_rpc

    def wanted(self) -> list[tuple[str, int]]:
        """Every referenced chunk with the replication it needs."""
        refs = self.node.ns.refs
        return [(c.hex(), refs.rep_needed(c)) for c in refs.iter_referenced()]

    def tick(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + self.cfg.interval
        reg = self.node.registry
        if not reg.reports_complete(now):
            return
        wanted = self.wanted()
        self.progress.last_round = time.time()
        self._repair(wanted)
        if not self.inflight:
            self._trim(wanted)
            self._collect_garbage()

    # ------------------------------------------------------------ repair

    def _repair(self, wanted: list[tuple[str, int]]) -> None:
        reg = self.node.registry
        todo = [(c, r) for c, r in wanted if c not in self.inflight]
        plan = repair.plan_repairs(
            reg, todo, repair.Limits(self.cfg.per_server, self.cfg.max_copies), busy=self.busy
        )
        if plan.missing:
            log.warning("%d chunks have no live copy", len(plan.missing))
        for copy in plan:
            self.copy(copy.chunk, copy.source, list(copy.targets))

    def copy(
        self,
        chunk: str,
        source: str,
        targets: list[str],
        then: Callable[[bool], None] | None = None,
    ) -> None:
        """Chunkserver-to-chunkserver copy; the registry learns of it on success."""
        self.inflight.add(chunk)
        for ep in (source, *targets):
            self.busy[ep] += 1
        fut = self.rpc.call_async(source, "cs.replicate", {"id": chunk, "to": targets}, timeout=60)

        def done(ok: bool) -> None:
            self.inflight.discard(chunk)
            for ep in (source, *targets):
                self.busy[ep] -= 1
                if self.busy[ep] <= 0:
                    del self.busy[ep]
            if ok:
                self.progress.copies_done += 1
                for t in targets:
                    self.node.registry.add_replica(chunk, t)
            else:
                self.progress.copies_failed += 1
            if then is not None:
                then(ok)

        self._on_done(fut, done)

    def _on_done(self, fut: Future, fn: Callable[[bool], None]) -> None:
        """Run ``fn(ok)`` on the driver thread when the RPC finishes."""

        def callback(f: Future) -> None:
            try:
                RpcClient.wait(f)
                ok = True
            except DfsError as exc:
                log.info("maintenance RPC failed: %s", exc.message)
                ok = False
            self.node.inbox.put(("call", lambda: fn(ok)))

        fut.add_done_callback(callback)

    # ------------------------------------------------------------ trim

    def _trim(self, wanted: list[tuple[str, int]]) -> None:
        reg = self.node.registry
        for rm in repair.plan_trims(reg, wanted, max_total=self.cfg.max_copies):
            self.delete_replica(rm.chunk, rm.server)

    def delete_replica(self, chunk: str, server: str) -> None:
        self.node.registry.remove_replica(chunk, server)
        self.progress.deletes_sent += 1
        self._on_done(self.rpc.call_async(server, "cs.delete", {"ids": [chunk]}), lambda ok: None)

    # ------------------------------------------------------------ garbage collection

    def _collect_garbage(self) -> None:
        if self._gc_pending:
            return
        ns, reg = self.node.ns, self.node.registry
        orphans = [
            c
            for c in reg.iter_chunks()
            if not ns.refs.is_referenced(chunk_key(c)) and chunk_key(c) not in ns.refs.garbage
        ]
        if orphans:  # stamped in the future, so they expire only after orphan_grace
            later = time.time_ns() + int((self.cfg.orphan_grace - self.cfg.gc_grace) * 1e9)
            self.node.propose_internal(
                {"op": "gc_mark", "args": {"chunk_ids": orphans[:10_000], "ts": max(0, later)}}
            )
        before = time.time_ns() - int(self.cfg.gc_grace * 1e9)
        if not any(ts < before for ts in ns.refs.garbage.values()):
            return
        self._gc_pending = True

        def expired(result: dict[str, Any]) -> None:
            self._gc_pending = False
            if not result.get("ok"):
                log.warning("gc_expire failed: %s", result.get("msg"))
                return
            self._delete_everywhere(result.get("chunks", []))

        self.node.propose_internal(
            {"op": "gc_expire", "args": {"before_ts": before}}, on_result=expired
        )

    def _delete_everywhere(self, chunks: list[str]) -> None:
        """Delete expired chunks from every server that has (or had) a copy."""
        reg = self.node.registry
        per_server: dict[str, list[str]] = {}
        for c in chunks:
            for ep in set(reg.all_replicas(c)) | set(reg.corrupt_replicas(c)):
                per_server.setdefault(ep, []).append(c)
                reg.remove_replica(c, ep)
        for ep, ids in per_server.items():
            for i in range(0, len(ids), 10_000):
                self.progress.deletes_sent += 1
                self._on_done(
                    self.rpc.call_async(ep, "cs.delete", {"ids": ids[i : i + 10_000]}),
                    lambda ok: None,
                )
        self.progress.gc_deleted += len(chunks)
        if chunks:
            log.info("garbage collection: deleted %d chunks", len(chunks))

    # ------------------------------------------------------------ status

    def fsck(self) -> dict[str, Any]:
        return repair.fsck(self.node.registry, self.wanted())
