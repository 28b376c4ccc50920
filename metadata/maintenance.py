"""The leader's background work: re-replication, decommission, rebalance,
trimming, corrupt-copy handling and garbage collection.

Runs on the metadata driver thread (it owns the namespace and the registry),
a round every few seconds, only on the leader and only once every live
chunkserver has finished its chunk report (soft state is complete). Copies and
deletes go out as asynchronous RPCs to the chunkservers; their completions come
back through the driver's queue, so the registry is only touched on the driver.

Safety rules, in one place:

- Copies are chunkserver to chunkserver (``cs.replicate``), most endangered
  chunks first, at most ``per_server`` in flight per server and, with a
  bandwidth limit, no new copy from or to a server that is over its budget.
- A copy is removed only while at least R other live good copies remain
  (trims, the second half of a rebalance move, corrupt copies).
- A copy reported bad by a reader is first re-checked by its server
  (``cs.verify``): a client's word alone never drops a good copy.
- GC fails closed: a chunk is deleted only after the namespace, through Raft,
  declared it unreferenced for a whole grace period (``gc_expire``); chunks
  the chunkservers hold that no file references are first marked (``gc_mark``)
  so they expire only after the upload grace period (an upload not yet
  committed); and the chunkservers keep any copy written or re-put within the
  GC grace (``unless_newer``), so a writer racing GC keeps its chunk. A writer
  must commit within the GC grace period of its puts and dedup look-ups
  (``md.locate`` with ``dedup`` offers no unreferenced chunk).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dfs import errors
from dfs.errors import DfsError
from dfs.rpc import RpcClient
from metadata import repair
from metadata.placement import CHUNK_ESTIMATE
from metadata.registry import ALIVE, DECOMMISSIONING, RETIRED, chunk_key

if TYPE_CHECKING:
    from metadata.server import MetadataNode

log = logging.getLogger("dfs.metadata.maintenance")

GC_BATCH = 10_000  # chunks expired per gc_expire proposal
FAST_TICK = 0.1  # seconds between budget refills / dispatches
PLAN_PER_SERVER = 512  # copies per server a round may queue (dispatch keeps per_server busy)


@dataclass
class _Job:
    """A planned copy waiting for free slots on its servers."""

    chunk: str
    source: str
    targets: list[str]
    then: Callable[[int | None], None] | None = None
    budget: _Budget | None = None
    kind: str = "repair"


@dataclass
class MaintenanceConfig:
    interval: float = 2.0  # seconds between rounds
    gc_grace: float = 600.0  # seconds a chunk stays unreferenced before deletion
    upload_grace: float = 3600.0  # for chunks no file references yet: uploads in progress
    per_server: int = 4  # concurrent copies per chunkserver
    max_copies: int = 1000  # copies planned (queued) per round
    bandwidth: float = 0.0  # bytes/s per server for repair copies (0: unlimited)
    copy_timeout: float = 60.0


@dataclass
class Progress:
    copies_done: int = 0
    copies_failed: int = 0
    bytes_copied: int = 0
    deletes_sent: int = 0
    gc_deleted: int = 0
    gc_kept: int = 0
    corrupt_confirmed: int = 0
    corrupt_rejected: int = 0
    last_round: float = 0.0
    missing: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Rebalance:
    """An admin-requested rebalance in progress (soft state: a new leader drops it;
    re-running ``dfs-admin rebalance`` resumes)."""

    threshold: float
    bandwidth: float  # bytes/s per server, 0: unlimited
    started: float = field(default_factory=time.time)
    moves_done: int = 0
    moves_failed: int = 0
    bytes_moved: int = 0
    inflight: int = 0
    planned_last: int = 0
    idle_rounds: int = 0
    done: bool = False
    finished: float = 0.0
    initial_excess: float = 0.0  # bytes above the band when it began
    excess: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Budget:
    """Per-server byte budgets refilled at ``rate`` (a token bucket that may go into
    debt: a copy is charged when it starts, corrected by its real size later)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.level: dict[str, float] = {}
        self.last = time.monotonic()

    def refill(self, now: float) -> None:
        dt, self.last = max(0.0, now - self.last), now
        for ep, lv in self.level.items():
            self.level[ep] = min(self.rate, lv + dt * self.rate)

    def charge(self, ep: str, n: float) -> None:
        self.level[ep] = self.level.get(ep, self.rate) - n

    def over(self) -> set[str]:
        return {ep for ep, lv in self.level.items() if lv < 0}


class Maintenance:
    def __init__(self, node: MetadataNode, config: MaintenanceConfig | None = None) -> None:
        self.node = node
        self.cfg = config or MaintenanceConfig()
        self.busy: Counter[str] = Counter()  # copies in flight per server
        self.inflight: set[str] = set()  # chunks with a copy in flight
        self.queue: deque[_Job] = deque()  # planned copies, dispatched as slots free
        self.progress = Progress()
        self._next = 0.0
        self._next_fast = 0.0
        self._gc_pending = False
        self._mark_pending = False
        self._verifying: set[tuple[str, str]] = set()
        self.budget = _Budget(self.cfg.bandwidth) if self.cfg.bandwidth > 0 else None
        self.rebalance: Rebalance | None = None
        self.rebalance_budget: _Budget | None = None
        self.pending_states: dict[str, str] = {}  # admin states to push to chunkservers
        self._pushing: set[str] = set()
        self.sizes: dict[str, int] = {}  # chunk sizes for rebalance planning

    @property
    def rpc(self) -> RpcClient:
        return self.node.peer_rpc

    def wanted(self) -> list[tuple[str, int]]:
        """Every referenced chunk with the replication it needs."""
        refs = self.node.ns.refs
        return [(c.hex(), refs.rep_needed(c)) for c in refs.iter_referenced()]

    def tick(self, now: float) -> None:
        if now >= self._next_fast:  # budgets refill: queued copies may go
            self._next_fast = now + FAST_TICK
            for b in (self.budget, self.rebalance_budget):
                if b is not None:
                    b.refill(now)
            self._dispatch()
        if now < self._next:
            return
        self._next = now + self.cfg.interval
        self._push_states()
        reg = self.node.registry
        if not reg.reports_complete(now):
            return
        wanted = self.wanted()
        self.progress.last_round = time.time()
        self._repair(wanted)
        self._decommission(wanted)
        if self.rebalance is not None and not self.rebalance.done:
            self._rebalance(wanted)
        if not self.inflight:
            self._trim(wanted)
            self._collect_garbage()

    # ------------------------------------------------------------ repair

    def _over_budget(self, ep: str, budget: _Budget | None) -> bool:
        return any(b is not None and b.level.get(ep, 0) < 0 for b in (self.budget, budget))

    def _repair(self, wanted: list[tuple[str, int]]) -> None:
        """Re-plan every round (drops stale jobs), most endangered first; the queue is
        worked off as copies finish, within per-server concurrency and bandwidth."""
        reg = self.node.registry
        todo = [(c, r) for c, r in wanted if c not in self.inflight]
        plan = repair.plan_repairs(
            reg, todo, repair.Limits(PLAN_PER_SERVER, self.cfg.max_copies), busy=self.busy
        )
        self.progress.missing = len(plan.missing)
        if plan.missing:
            log.warning("%d chunks have no live copy", len(plan.missing))
        moves = [j for j in self.queue if j.kind != "repair"]
        self.queue = deque(_Job(cp.chunk, cp.source, list(cp.targets)) for cp in plan)
        self.queue.extend(moves)
        self._dispatch()

    def _dispatch(self) -> None:
        """Start queued copies whose servers have a free slot and budget."""
        if not self.queue:
            return
        limit = self.cfg.per_server
        full = {ep for ep, n in self.busy.items() if n >= limit}
        keep: deque[_Job] = deque()
        while self.queue:
            job = self.queue.popleft()
            eps = (job.source, *job.targets)
            if job.chunk in self.inflight:
                if job.kind != "repair":  # a move waits; a repair is re-planned if still needed
                    keep.append(job)
                continue
            if any(ep in full or self._over_budget(ep, job.budget) for ep in eps):
                keep.append(job)
                continue
            self.copy(job.chunk, job.source, job.targets, job.then, job.budget)
            full |= {ep for ep in eps if self.busy[ep] >= limit}
        self.queue = keep

    def copy(
        self,
        chunk: str,
        source: str,
        targets: list[str],
        then: Callable[[int | None], None] | None = None,
        budget: _Budget | None = None,
    ) -> None:
        """Chunkserver-to-chunkserver copy; the registry learns of it on success.
        ``then`` gets the chunk's size, or None if the copy failed."""
        self.inflight.add(chunk)
        eps = (source, *targets)
        for ep in eps:
            self.busy[ep] += 1
        budgets = [b for b in (self.budget, budget) if b is not None]
        for b in budgets:
            for ep in eps:
                b.charge(ep, CHUNK_ESTIMATE)
        fut = self.rpc.call_async(
            source, "cs.replicate", {"id": chunk, "to": targets}, timeout=self.cfg.copy_timeout
        )

        def done(reply: Any, exc: DfsError | None) -> None:
            self.inflight.discard(chunk)
            for ep in eps:
                self.busy[ep] -= 1
                if self.busy[ep] <= 0:
                    del self.busy[ep]
            ok = exc is None
            size = int(reply.fields.get("bytes", CHUNK_ESTIMATE)) if ok else CHUNK_ESTIMATE
            for b in budgets:
                for ep in eps:
                    b.charge(ep, size - CHUNK_ESTIMATE)
            if ok:
                self.progress.copies_done += 1
                self.progress.bytes_copied += size * len(targets)
                for t in targets:
                    self.node.registry.add_replica(chunk, t)
            else:
                self.progress.copies_failed += 1
                if exc is not None and exc.code in (errors.CORRUPT, "ENOENT"):
                    self.node.registry.mark_corrupt(chunk, source)
            if then is not None:
                then(size if ok else None)
            self._dispatch()
            if not self.queue:  # the batch is done: plan the next one soon, not in a round
                self._next = min(self._next, time.monotonic() + FAST_TICK)

        self._on_reply(fut, done)

    def _on_reply(self, fut: Future, fn: Callable[[Any, DfsError | None], None]) -> None:
        """Run ``fn(reply, error)`` on the driver thread when the RPC finishes."""

        def callback(f: Future) -> None:
            try:
                reply, exc = RpcClient.wait(f), None
            except DfsError as e:
                log.info("maintenance RPC failed: %s", e.message)
                reply, exc = None, e
            except Exception as e:  # cancelled at shutdown
                reply, exc = None, DfsError(errors.UNAVAILABLE, str(e))
            self.node.inbox.put(("call", lambda: fn(reply, exc)))

        fut.add_done_callback(callback)

    # ------------------------------------------------------------ corrupt copies

    def verify_reported(self, chunk: str, server: str) -> None:
        """A reader says the copy on ``server`` is bad: ask the server to re-check it
        (the server quarantines it if so); only a confirmed bad copy is dropped."""
        key = (chunk, server)
        if key in self._verifying or self.node.registry.state(server) is None:
            return
        self._verifying.add(key)
        fut = self.rpc.call_async(server, "cs.verify", {"id": chunk}, timeout=30)

        def done(reply: Any, exc: DfsError | None) -> None:
            self._verifying.discard(key)
            bad = (exc is not None and exc.code in (errors.CORRUPT, "ENOENT")) or (
                exc is None and not reply.fields.get("ok", True)
            )
            if bad:
                self.progress.corrupt_confirmed += 1
                if self.node.registry.mark_corrupt(chunk, server):
                    log.warning("copy of %s on %s is corrupt: re-replicating", chunk[:12], server)
            elif exc is None:
                self.progress.corrupt_rejected += 1
                log.info("copy of %s on %s re-checked fine", chunk[:12], server)

        self._on_reply(fut, done)

    # ------------------------------------------------------------ decommission

    def _decommission(self, wanted: list[tuple[str, int]]) -> None:
        """Copies of a decommissioning server's chunks are made by ``_repair`` (its
        copies no longer count as live); retire it once nothing needs it."""
        reg = self.node.registry
        for s in reg.servers():
            if s.state != DECOMMISSIONING:
                continue
            if repair.decommission_done(reg, s.endpoint, wanted):
                log.info("chunkserver %s is drained: retired", s.endpoint)
                reg.set_state(s.endpoint, RETIRED)
                self.pending_states[s.endpoint] = RETIRED
                self._push_states()

    def set_admin_state(self, endpoint: str, state: str) -> None:
        """decommission / retire / recommission a server (pushed to it, so the state
        survives its restarts and a new metadata leader)."""
        reg = self.node.registry
        reg.set_state(endpoint, ALIVE if state == "active" else state)
        self.pending_states[endpoint] = state
        self._push_states()

    def _push_states(self) -> None:
        for ep, state in list(self.pending_states.items()):
            if ep in self._pushing:
                continue
            self._pushing.add(ep)
            fut = self.rpc.call_async(ep, "cs.admin_state", {"state": state}, timeout=5)

            def done(reply: Any, exc: DfsError | None, ep: str = ep, state: str = state) -> None:
                self._pushing.discard(ep)
                if exc is None and self.pending_states.get(ep) == state:
                    del self.pending_states[ep]

            self._on_reply(fut, done)

    def adopt_state(self, endpoint: str, reported: str | None) -> None:
        """A server's own admin state (from its stat) wins unless one is being pushed."""
        if endpoint in self.pending_states or reported not in ("active", DECOMMISSIONING, RETIRED):
            return
        reg = self.node.registry
        info = reg._info(endpoint)
        if info is not None and info.admin != reported:
            reg.set_state(endpoint, ALIVE if reported == "active" else reported)

    # ------------------------------------------------------------ rebalance

    def start_rebalance(
        self, threshold: float, bandwidth: float, sizes: dict[str, int] | None = None
    ) -> Rebalance:
        self.rebalance = Rebalance(threshold, bandwidth)
        self.sizes = sizes or {}
        self.rebalance_budget = _Budget(bandwidth) if bandwidth > 0 else None
        self.rebalance.initial_excess = self.rebalance.excess = self.excess(threshold)
        return self.rebalance

    def excess(self, threshold: float) -> float:
        """Bytes that must move for every alive server to be within the band."""
        servers = [s for s in self.node.registry.servers() if s.state == ALIVE and s.capacity]
        cap = sum(s.capacity for s in servers)
        if not cap:
            return 0.0
        mean = sum(s.used for s in servers) / cap
        over = sum(max(0.0, s.used - (mean + threshold / 100) * s.capacity) for s in servers)
        under = sum(max(0.0, (mean - threshold / 100) * s.capacity - s.used) for s in servers)
        return max(over, under)

    def _rebalance(self, wanted: list[tuple[str, int]]) -> None:
        """Plan a batch of moves once the previous batch is finished (the planner
        models the use of every server as it goes, so a batch may be large)."""
        rb = self.rebalance
        assert rb is not None
        rb.excess = self.excess(rb.threshold)
        if rb.inflight:
            return
        moves = repair.plan_rebalance(
            self.node.registry,
            [(c, r) for c, r in wanted if c not in self.inflight],
            rb.threshold,
            repair.Limits(PLAN_PER_SERVER, self.cfg.max_copies),
            sizes=self.sizes,
            busy=self.busy,
        )
        rb.planned_last = len(moves)
        if not moves:
            rb.idle_rounds += 1
            # stats lag the moves by a heartbeat: finish after two quiet rounds
            if rb.idle_rounds >= 2:
                rb.done, rb.finished = True, time.time()
                log.info("rebalance done: %d moves, %d bytes", rb.moves_done, rb.bytes_moved)
            return
        rb.idle_rounds = 0
        rep_of = dict(wanted)
        for mv in moves:
            self._move(mv, rep_of.get(mv.chunk, 3), rb)
        self._dispatch()

    def _move(self, mv: repair.Move, rep: int, rb: Rebalance) -> None:
        """Queue a copy to the target; once it is there, remove the source copy if R
        other live copies remain."""
        rb.inflight += 1

        def then(size: int | None) -> None:
            rb.inflight -= 1
            if size is None:
                rb.moves_failed += 1
                return
            reg = self.node.registry
            if repair.safe_to_remove(reg, mv.chunk, mv.source, rep):
                self.delete_replica(mv.chunk, mv.source)
                self._account_move(mv.source, mv.target, size)
            rb.moves_done += 1
            rb.bytes_moved += size

        self.queue.append(
            _Job(mv.chunk, mv.source, [mv.target], then, self.rebalance_budget, kind="move")
        )

    def _account_move(self, src: str, dst: str, size: int) -> None:
        """Adjust the used bytes the registry holds until the next heartbeats, so the
        next round does not plan moves the last one already made."""
        reg = self.node.registry
        for ep, delta in ((src, -size), (dst, size)):
            info = reg._info(ep)
            if info is not None and "used" in info.stat:
                info.stat["used"] = max(0, int(info.stat["used"]) + delta)
                info.stat["free"] = max(0, int(info.stat.get("free", 0)) - delta)

    # ------------------------------------------------------------ trim

    def _trim(self, wanted: list[tuple[str, int]]) -> None:
        reg = self.node.registry
        for rm in repair.plan_trims(reg, wanted, max_total=self.cfg.max_copies):
            self.delete_replica(rm.chunk, rm.server)

    def delete_replica(self, chunk: str, server: str) -> None:
        self.node.registry.remove_replica(chunk, server)
        self.progress.deletes_sent += 1
        fut = self.rpc.call_async(server, "cs.delete", {"ids": [chunk]})
        self._on_reply(fut, lambda reply, exc: None)

    # ------------------------------------------------------------ garbage collection

    def _collect_garbage(self) -> None:
        if self._gc_pending:
            return
        ns, reg = self.node.ns, self.node.registry
        refs = ns.refs
        if not self._mark_pending:
            orphans = []
            for c in reg.iter_chunks():
                k = chunk_key(c)
                if k not in refs.garbage and not refs.is_referenced(k):
                    orphans.append(c)
                    if len(orphans) >= GC_BATCH:
                        break
            if orphans:  # stamped in the future, so they expire only after upload_grace
                later = time.time_ns() + int((self.cfg.upload_grace - self.cfg.gc_grace) * 1e9)
                self._mark_pending = True

                def marked(result: dict[str, Any]) -> None:
                    self._mark_pending = False

                self.node.propose_internal(
                    {"op": "gc_mark", "args": {"chunk_ids": orphans, "ts": max(0, later)}},
                    on_result=marked,
                )
        before = time.time_ns() - int(self.cfg.gc_grace * 1e9)
        if not any(ts < before for ts in refs.garbage.values()):
            return
        self._gc_pending = True

        def expired(result: dict[str, Any]) -> None:
            self._gc_pending = False
            if not result.get("ok"):
                log.warning("gc_expire failed: %s", result.get("msg"))
                return
            # applied in log order: a chunk referenced again since is not among them
            chunks = [c for c in result.get("chunks", []) if not refs_now(c)]
            self._delete_everywhere(chunks)

        def refs_now(c: str) -> bool:
            return self.node.ns.refs.is_referenced(chunk_key(c))

        self.node.propose_internal(
            {"op": "gc_expire", "args": {"before_ts": before, "limit": GC_BATCH}},
            on_result=expired,
        )

    def _delete_everywhere(self, chunks: list[str]) -> None:
        """Delete expired chunks from every server that has (or had) a copy; copies a
        server keeps (re-put within the upload grace) become orphans again."""
        reg = self.node.registry
        per_server: dict[str, list[str]] = {}
        for c in chunks:
            for ep in set(reg.all_replicas(c)) | set(reg.corrupt_replicas(c)):
                per_server.setdefault(ep, []).append(c)
                reg.remove_replica(c, ep)
        for ep, ids in per_server.items():
            for i in range(0, len(ids), GC_BATCH):
                self.progress.deletes_sent += 1
                fut = self.rpc.call_async(
                    ep,
                    "cs.delete",
                    {"ids": ids[i : i + GC_BATCH], "unless_newer": max(1, int(self.cfg.gc_grace))},
                )
                self._on_reply(fut, lambda reply, exc, ep=ep: self._gc_deleted(ep, reply, exc))
        if chunks:
            log.info("garbage collection: deleting %d chunks", len(chunks))

    def _gc_deleted(self, ep: str, reply: Any, exc: DfsError | None) -> None:
        if exc is not None:
            return  # the server is down: its copies come back as orphans when it returns
        kept = reply.fields.get("kept") or []
        self.progress.gc_deleted += int(reply.fields.get("deleted", 0))
        self.progress.gc_kept += len(kept)
        for c in kept:
            self.node.registry.add_replica(c, ep)

    # ------------------------------------------------------------ status

    def fsck(self) -> dict[str, Any]:
        return repair.fsck(self.node.registry, self.wanted())

    def status(self) -> dict[str, Any]:
        return {
            "progress": self.progress.to_dict(),
            "copies_inflight": len(self.inflight),
            "rebalance": self.rebalance.to_dict() if self.rebalance else None,
            "pending_states": dict(self.pending_states),
            "config": {
                "gc_grace": self.cfg.gc_grace,
                "upload_grace": self.cfg.upload_grace,
                "per_server": self.cfg.per_server,
                "bandwidth": self.cfg.bandwidth,
            },
        }
