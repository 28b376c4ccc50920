"""The simulator: one seed -> one reproducible run of a whole Raft cluster.

Time is counted in *steps*; every node ticks about once per ``steps_per_tick``
steps with its own phase (clock skew) and its own rate (clock drift: up to
``clock_drift`` faster or slower; leader leases must cover it). Messages take
1..max_delay steps and may be dropped, duplicated, reordered or cut by a
partition. A node persists each Ready with a simulated disk latency and sends
its messages only once the write is durable; a crash loses the Ready in flight
(a random prefix of its records may survive, like a torn write) and the node
restarts from what was durable. Invariants are checked after every event; a
run ends with a liveness phase: heal everything and require a fresh write to
commit.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metadata.raft.core import NotLeader, RaftConfig, RaftError, RaftNode, Ready
from metadata.raft.messages import (
    NONE,
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    PersistentState,
    ReadState,
    Role,
    VoteResponse,
    message_from_wire,
)

from .app import KVApp, encode_write

REPLAY = (
    "DFS_SIM_SEED_START={seed} DFS_SIM_SEEDS=1 .venv/bin/python -m pytest tests/test_raft_sim.py"
    "   (trace: .venv/bin/python -m tests.raftsim {seed} --verbose)"
)
KEYS = ("a", "b", "c")


class Violation(AssertionError):
    """An invariant (or the liveness bound) was broken."""


@dataclass
class Params:
    """Everything random about a run, drawn from the seed."""

    n_nodes: int
    election_ticks: int
    heartbeat_ticks: int
    steps_per_tick: int
    max_append_bytes: int
    max_inflight: int
    snapshot_chunk_bytes: int
    check_quorum: bool
    pre_vote: bool
    p_drop: float
    p_dup: float
    p_reorder: float
    max_delay: int
    p_crash: float
    p_partition: float
    p_propose: float
    p_read: float
    p_read_anywhere: float  # a client read goes to a random node, not the hinted leader
    p_conf: float
    p_transfer: float
    compact_every: int
    disk_max_latency: int
    early_send: bool  # leader sends before its own fsync (metadata.raft.driver does)
    lazy_commit: bool  # a Ready that only moves the commit index is not fsync'd
    chaos_ticks: int
    liveness_ticks: int
    clock_drift: float  # each node's tick period is steps_per_tick * (1 +- up to this)
    lease_reads: bool
    lease_drift_ticks: int  # the smallest bound that covers clock_drift (see lease_bound)
    # a leader serves some reads on the spot (RaftNode.lease_read_index, as the
    # driver does); drawn from its own generator so older seeds keep their runs
    spot_reads: bool = False

    @classmethod
    def draw(cls, rng: random.Random) -> Params:
        spt = rng.randint(2, 4)
        et = rng.randint(5, 12)
        return cls(
            n_nodes=rng.choice((3, 3, 5)),
            election_ticks=et,
            heartbeat_ticks=rng.randint(1, 2),
            steps_per_tick=spt,
            max_append_bytes=rng.choice((1, 100, 4096)),
            max_inflight=rng.choice((1, 2, 8, 64)),
            snapshot_chunk_bytes=rng.choice((16, 64, 1024)),
            check_quorum=rng.random() < 0.8,
            pre_vote=rng.random() < 0.8,
            p_drop=rng.choice((0.0, 0.02, 0.1, 0.25)),
            p_dup=rng.choice((0.0, 0.02, 0.1)),
            p_reorder=rng.choice((0.0, 0.05, 0.3, 1.0)),
            max_delay=rng.randint(1, 3 * spt),
            p_crash=rng.choice((0.0, 0.005, 0.01, 0.03)),
            p_partition=rng.choice((0.0, 0.005, 0.02)),
            p_propose=rng.choice((0.1, 0.3, 1.0)),
            p_read=rng.choice((0.05, 0.2)),
            p_read_anywhere=0.2,
            p_conf=rng.choice((0.0, 0.005, 0.02)),
            p_transfer=rng.choice((0.0, 0.005, 0.02)),
            compact_every=rng.choice((0, 5, 20, 60)),
            disk_max_latency=rng.choice((0, 2, 6)),
            early_send=rng.random() < 0.5,
            lazy_commit=rng.random() < 0.5,
            chaos_ticks=rng.randint(250, 500),
            liveness_ticks=40 * et,
            clock_drift=(drift := rng.choice((0.0, 0.02, 0.05, 0.1))),
            lease_reads=rng.random() < 0.4,
            lease_drift_ticks=lease_bound(et, drift),
        )


def lease_bound(election_ticks: int, drift: float) -> int:
    """The smallest lease_drift_ticks d that is safe when tick periods differ by
    up to ``drift`` either way: (E - d) ticks of the fastest node must not
    outlast E - 1 ticks of the slowest, i.e. (E - d) * (1 + drift) <= (E - 1) * (1 - drift)."""
    e = election_ticks
    d = 1
    while (e - d) * (1 + drift) > (e - 1) * (1 - drift) + 1e-9:
        d += 1
    return d


@dataclass
class SimResult:
    seed: int
    ok: bool
    violation: str | None
    ticks: int
    stats: dict[str, int] = field(default_factory=dict)

    def replay(self) -> str:
        return REPLAY.format(seed=self.seed)


class SimStorage:
    """Durable state of one node; what a crash leaves behind."""

    def __init__(self) -> None:
        self.durable = PersistentState()
        self.synced_hs = self.durable.hard_state  # last hard state covered by an fsync

    def save(self, rd: Ready, lazy_commit: bool = False) -> None:
        old = self.durable.hard_state
        self.durable.apply_save(rd.hard_state, rd.entries, rd.snapshot)
        hs = rd.hard_state
        commit_only = (
            not rd.entries
            and rd.snapshot is None
            and hs is not None
            and (hs.term, hs.vote) == (old.term, old.vote)
        )
        if not (lazy_commit and commit_only):
            self.synced_hs = self.durable.hard_state

    def lose_unsynced(self, rng: random.Random) -> None:
        """A crash: a commit index written without fsync may be lost."""
        if self.durable.hard_state != self.synced_hs and rng.random() < 0.5:
            self.durable.hard_state = self.synced_hs

    def save_prefix(self, rd: Ready, n: int) -> None:
        """A crash mid-write: only the first n records reached the disk."""
        recs: list[tuple[str, Any]] = []
        if rd.snapshot is not None:
            recs.append(("snap", rd.snapshot))
        if rd.hard_state is not None:
            recs.append(("hs", rd.hard_state))
        recs.extend(("ent", e) for e in rd.entries)
        for kind, r in recs[:n]:
            if kind == "snap":
                self.durable.apply_snapshot(r)
            elif kind == "hs":
                self.durable.hard_state = r
            else:
                self.durable.append_entry(r)
        if n:
            self.synced_hs = self.durable.hard_state

    def n_records(self, rd: Ready) -> int:
        return (rd.snapshot is not None) + (rd.hard_state is not None) + len(rd.entries)


class SimNode:
    def __init__(self, node_id: int, phase: float, period: float) -> None:
        self.id = node_id
        self.period = period  # steps per tick: this node's clock rate
        self.next_tick = phase  # the node ticks in the first step at or after this
        self.storage = SimStorage()
        self.raft: RaftNode | None = None
        self.app = KVApp()
        self.alive = False
        self.shutdown = False  # removed from the cluster and stopped for good
        self.incarnation = 0
        self.writing: tuple[Ready, int] | None = None  # Ready being persisted, done at step
        self.sent_early = False
        self.restart_at = -1
        self.seen_commit = 0
        self.peers: tuple[int, ...] = ()


class Simulator:
    def __init__(
        self,
        seed: int,
        node_cls: Callable[..., RaftNode] = RaftNode,
        verbose: int = 0,
        log: Callable[[str], None] = print,
        **overrides: Any,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.p = Params.draw(self.rng)
        for k, v in overrides.items():
            setattr(self.p, k, v)
        if "lease_drift_ticks" not in overrides:  # derived: keep it safe for what was set
            self.p.lease_drift_ticks = lease_bound(self.p.election_ticks, self.p.clock_drift)
        if "spot_reads" not in overrides:
            self.p.spot_reads = random.Random(f"spot-{seed}").random() < 0.5
        self.node_cls = node_cls
        self.verbose = verbose
        self._log = log
        self.step_no = 0
        self.clock = 0  # event counter: orders acks and read starts
        self.net: list[tuple[int, int, Message]] = []
        self.net_seq = 0
        self.link_last: dict[tuple[int, int], int] = {}
        self.group: dict[int, int] = {}
        self.oneway: set[tuple[int, int]] = set()
        self.partition_until = -1
        self.healed = False
        self.nodes: dict[int, SimNode] = {}
        self.next_id = self.p.n_nodes + 1
        self.stats = {
            k: 0
            for k in (
                "msgs",
                "dropped",
                "crashes",
                "partitions",
                "writes_acked",
                "reads_served",
                "snap_installs",
                "conf_changes",
                "transfers",
                "compactions",
                "elections",
                "reads_at_once",
                "reads_on_the_spot",
            )
        }
        # checker state
        self.leader_of_term: dict[int, int] = {}
        self.votes_granted: dict[tuple[int, int], int] = {}
        self.entries_seen: dict[tuple[int, int], tuple[int, bytes, int | None]] = {}
        self.committed: dict[int, int] = {}  # index -> term
        self.commit_term: dict[int, int] = {}  # index -> a term at/after which it was committed
        self.max_commit = 0
        self.applied_global: dict[int, tuple[int, int, bytes]] = {}
        self.digest_at: dict[int, int] = {}
        self.leaders_checked: set[tuple[int, int]] = set()
        self.durable_hs: dict[int, tuple[int, int]] = {}
        # client state
        self.write_seq = 0
        self.pending_writes: dict[tuple[int, int, int], tuple[int, str, int]] = {}
        self.acked: dict[str, list[tuple[int, int]]] = {k: [] for k in KEYS}
        self.read_seq = 0
        self.pending_reads: dict[bytes, tuple[int, int, str, int, int]] = {}
        self.served_reads: set[bytes] = set()  # answered or abandoned (asker crashed)
        self.leader_hint = NONE
        self.markers: set[tuple[int, int, int]] = set()
        self.marker_at = -(10**9)
        self.live_ok = False

        peers = tuple(range(1, self.p.n_nodes + 1))
        for i in peers:
            self._add_node(i, peers)

    # ------------------------------------------------------------ plumbing
    def trace(self, msg: str) -> None:
        if self.verbose:
            self._log(f"[{self.step_no:6d} t{self.step_no // self.p.steps_per_tick:5d}] {msg}")

    def fail(self, msg: str) -> None:
        raise Violation(msg)

    def cfg(self, peers: tuple[int, ...]) -> RaftConfig:
        p = self.p
        return RaftConfig(
            peers=peers,
            election_ticks=p.election_ticks,
            heartbeat_ticks=p.heartbeat_ticks,
            max_append_bytes=p.max_append_bytes,
            max_inflight=p.max_inflight,
            snapshot_chunk_bytes=p.snapshot_chunk_bytes,
            check_quorum=p.check_quorum,
            pre_vote=p.pre_vote,
            lease_reads=p.lease_reads and p.check_quorum,
            lease_drift_ticks=p.lease_drift_ticks,
        )

    def _add_node(self, node_id: int, peers: tuple[int, ...]) -> SimNode:
        spt = self.p.steps_per_tick
        # the extremes are where leases break: most nodes run at one of them
        skew = self.rng.choice((-1.0, 1.0, self.rng.uniform(-1.0, 1.0)))
        rate = 1 + skew * self.p.clock_drift
        n = SimNode(node_id, self.step_no + self.rng.randrange(spt), spt * rate)
        n.peers = peers
        self.nodes[node_id] = n
        self.group[node_id] = 0
        self._start(n)
        return n

    def _start(self, n: SimNode) -> None:
        state = n.storage.durable.copy()
        n.incarnation += 1
        n.raft = self.node_cls(
            n.id, self.cfg(n.peers), state, random.Random(self.rng.getrandbits(64))
        )
        n.app = KVApp()
        if state.snapshot is not None:
            n.app.restore(state.snapshot.data)
            self._check_snapshot_digest(n, state.snapshot.index)
        n.alive = True
        n.writing = None
        n.seen_commit = n.raft.log.offset
        self.trace(
            f"n{n.id} start #{n.incarnation} term={n.raft.term} "
            f"last={n.raft.last_index} commit={n.raft.commit_index}"
        )
        self._observe(n)

    def alive_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    def leaders(self) -> list[SimNode]:
        return [n for n in self.alive_nodes() if n.raft.role == Role.LEADER]

    # ------------------------------------------------------------ network
    def send(self, m: Message) -> None:
        self.stats["msgs"] += 1
        if self.rng.random() < self.p.p_drop:
            self.stats["dropped"] += 1
            return
        # round-trip through the wire format, as a real transport would
        if self.rng.random() < 0.05:
            m = message_from_wire(m.to_wire())
        copies = 2 if self.rng.random() < self.p.p_dup else 1
        for _ in range(copies):
            t = self.step_no + self.rng.randint(1, self.p.max_delay)
            link = (m.frm, m.to)
            if self.rng.random() >= self.p.p_reorder:  # FIFO per link, like a TCP stream
                t = max(t, self.link_last.get(link, 0))
                self.link_last[link] = t
            self.net_seq += 1
            heapq.heappush(self.net, (t, self.net_seq, m))

    def can_deliver(self, m: Message) -> bool:
        if self.group.get(m.frm, 0) != self.group.get(m.to, 0):
            return False
        return (m.frm, m.to) not in self.oneway

    # ------------------------------------------------------------ node driver
    def process(self, n: SimNode) -> None:
        """Drive one node: take Readies, start their writes, finish instant ones."""
        while n.alive and n.writing is None and n.raft.has_ready():
            rd = n.raft.ready()
            self._check_ready(n, rd)
            n.sent_early = False
            if self.p.early_send and self._may_send_early(n, rd):
                self._send_all(rd)
                n.sent_early = True
                # as the driver does: what is committed (durable on a majority) is
                # applied and answered before the leader's own fsync completes
                self._apply_all(n, rd)
            lat = 0
            if self.p.disk_max_latency and rd.must_sync() and self.rng.random() < 0.6:
                lat = self.rng.randint(1, self.p.disk_max_latency)
            if lat == 0:
                self._complete(n, rd)
            else:
                n.writing = (rd, self.step_no + lat)
        if n.alive:
            self._observe(n)

    def _may_send_early(self, n: SimNode, rd: Ready) -> bool:
        """metadata.raft.driver's rule: a leader whose term and vote are already
        on disk may send before its own fsync (Raft thesis 10.2.1)."""
        if n.raft.role != Role.LEADER or rd.snapshot is not None:
            return False
        d = n.storage.durable.hard_state
        hs = rd.hard_state
        return hs is None or (hs.term, hs.vote) == (d.term, d.vote)

    def _send_all(self, rd: Ready) -> None:
        for m in rd.messages:
            if isinstance(m, VoteResponse) and m.granted and not m.pre_vote:
                prev = self.votes_granted.setdefault((m.frm, m.term), m.to)
                if prev != m.to:
                    self.fail(f"n{m.frm} voted for n{prev} and n{m.to} in term {m.term}")
            self.send(m)

    def _complete(self, n: SimNode, rd: Ready) -> None:
        n.writing = None
        n.storage.save(rd, self.p.lazy_commit)
        self._check_durable(n)
        if not n.sent_early:
            self._send_all(rd)
        if rd.soft_state is not None:
            self.trace(
                f"n{n.id} soft {rd.soft_state.role.name} leader={rd.soft_state.leader_id}"
                f" term={n.raft.term}"
            )
            if rd.soft_state.role == Role.LEADER:
                self.stats["elections"] += 1
        if not n.sent_early:
            self._apply_all(n, rd)
        n.raft.advance(rd)
        if n.app.applied != n.raft.applied:
            self.fail(f"n{n.id} app applied {n.app.applied} != raft applied {n.raft.applied}")
        ce = self.p.compact_every
        if ce and n.raft.applied - n.raft.log.offset >= ce and self.rng.random() < 0.5:
            n.raft.compact(n.raft.applied, n.app.snapshot())
            self.stats["compactions"] += 1

    def _apply_all(self, n: SimNode, rd: Ready) -> None:
        """Install a snapshot from the leader, apply committed entries, serve reads."""
        if rd.install_snapshot:
            assert rd.snapshot is not None
            n.app.restore(rd.snapshot.data)
            self.stats["snap_installs"] += 1
            self.trace(f"n{n.id} installed snapshot @{rd.snapshot.index}")
            self._check_snapshot_digest(n, rd.snapshot.index)
        for e in rd.committed_entries:
            self._apply(n, e)
        for rs in rd.read_states:
            self._serve_read(n, rs)

    def crash(self, n: SimNode) -> None:
        self.stats["crashes"] += 1
        if n.writing is not None:
            rd = n.writing[0]
            k = self.rng.randint(0, n.storage.n_records(rd))
            if k == 0:  # records after an unsynced one survive only if it did
                n.storage.lose_unsynced(self.rng)
            n.storage.save_prefix(rd, k)
            self.trace(f"n{n.id} CRASH (kept {k}/{n.storage.n_records(rd)} unsynced records)")
            self._check_durable(n)
        else:
            self.trace(f"n{n.id} CRASH")
            n.storage.lose_unsynced(self.rng)
        n.alive = False
        n.raft = None
        n.writing = None
        for k in [k for k in self.pending_writes if k[0] == n.id]:
            del self.pending_writes[k]
        for ctx in [c for c, r in self.pending_reads.items() if r[0] == n.id]:
            del self.pending_reads[ctx]
            self.served_reads.add(ctx)
        n.restart_at = self.step_no + self.rng.randint(5, 60) * self.p.steps_per_tick

    # ------------------------------------------------------------ checks
    def _check_ready(self, n: SimNode, rd: Ready) -> None:
        """Log matching: one (index, term) names one entry with one predecessor term."""
        for e in rd.entries:
            prev = n.raft.log.term(e.index - 1)
            key = (e.index, e.term)
            got = self.entries_seen.get(key)
            if got is None:
                self.entries_seen[key] = (e.type, e.data, prev)
            else:
                if got[0] != e.type or got[1] != e.data:
                    self.fail(f"log matching: two different entries at {key} (n{n.id})")
                if prev is not None and got[2] is not None and prev != got[2]:
                    self.fail(
                        f"log matching: entry {key} follows term {prev} on n{n.id}, "
                        f"term {got[2]} elsewhere"
                    )

    def _check_durable(self, n: SimNode) -> None:
        hs = n.storage.durable.hard_state
        old = self.durable_hs.get(n.id)
        if old is not None:
            if hs.term < old[0]:
                self.fail(f"n{n.id} durable term went back {old[0]} -> {hs.term}")
            if hs.term == old[0] and old[1] != NONE and hs.vote != old[1]:
                self.fail(f"n{n.id} durable vote changed in term {hs.term}: {old[1]} -> {hs.vote}")
        self.durable_hs[n.id] = (hs.term, hs.vote)

    def _check_snapshot_digest(self, n: SimNode, index: int) -> None:
        want = self.digest_at.get(index)
        if n.app.applied != index:
            self.fail(f"n{n.id} snapshot at {index} restored state of {n.app.applied}")
        if want is not None and want != n.app.digest:
            self.fail(f"n{n.id} snapshot at {index} differs from what others applied")
        self.digest_at.setdefault(index, n.app.digest)

    def _observe(self, n: SimNode) -> None:
        """Per-node invariants after every event touching it."""
        r = n.raft
        if r.role == Role.LEADER:
            who = self.leader_of_term.setdefault(r.term, n.id)
            if who != n.id:
                self.fail(f"two leaders in term {r.term}: n{who} and n{n.id}")
            if (n.id, r.term) not in self.leaders_checked:
                self.leaders_checked.add((n.id, r.term))
                self.leader_hint = n.id
                for i in range(r.log.offset + 1, self.max_commit + 1):
                    c = self.committed.get(i)
                    if c is not None and self.commit_term[i] < r.term and r.log.term(i) != c:
                        self.fail(
                            f"leader n{n.id} of term {r.term} lacks committed entry {i} (term {c})"
                        )
        if r.commit_index > n.seen_commit:
            leaders = [x for x in self.leaders() if x is not n]
            for i in range(max(n.seen_commit, r.log.offset) + 1, r.commit_index + 1):
                t = r.log.term(i)
                if t is None:
                    continue
                known = self.committed.get(i)
                if known is None:
                    self.committed[i] = t
                    self.commit_term[i] = r.term
                    for ld in leaders:
                        lt = ld.raft.log.term(i)
                        if ld.raft.term > r.term and i > ld.raft.log.offset and lt != t:
                            self.fail(
                                f"committed entry {i} (term {t}) missing from leader "
                                f"n{ld.id} of term {ld.raft.term}"
                            )
                elif known != t:
                    self.fail(f"n{n.id} has term {t} at committed index {i}, committed was {known}")
            n.seen_commit = r.commit_index
            if r.commit_index > self.max_commit:
                self.max_commit = r.commit_index

    def _apply(self, n: SimNode, e: Entry) -> None:
        """State machine safety: every node applies the same entry at each index."""
        want = self.applied_global.get(e.index)
        got = (e.term, int(e.type), e.data)
        if want is None:
            self.applied_global[e.index] = got
            c = self.committed.get(e.index)
            if c is not None and c != e.term:
                self.fail(f"n{n.id} applies {e.index} of term {e.term}, committed was {c}")
        elif want != got:
            self.fail(
                f"state machine safety: n{n.id} applied {got[:2]} at {e.index}, "
                f"another node applied {want[:2]}"
            )
        try:
            n.app.apply(e)
        except AssertionError as ex:
            self.fail(f"n{n.id}: {ex}")
        self.digest_at.setdefault(e.index, n.app.digest)
        if self.digest_at[e.index] != n.app.digest:
            self.fail(f"n{n.id} state after {e.index} differs from other nodes")
        if e.type == EntryType.NORMAL:
            w = self.pending_writes.pop((n.id, n.incarnation, e.index), None)
            if w is not None and w[0] == e.term:
                self.clock += 1
                self.acked[w[1]].append((w[2], self.clock))
                self.stats["writes_acked"] += 1
                if (n.id, n.incarnation, e.index) in self.markers:
                    self.live_ok = True
        elif e.type == EntryType.CONF:
            cc = ConfChange.decode(e.data)
            self.trace(f"n{n.id} applied conf {cc.op.name} n{cc.node_id} -> {cc.voters}")
            if cc.op == ConfChangeType.REMOVE:
                gone = self.nodes.get(cc.node_id)
                if gone is not None and not gone.shutdown:
                    gone.shutdown = True  # the operator stops it for good, a little later
                    gone.restart_at = self.step_no + 20 * self.p.steps_per_tick

    def _serve_read(self, n: SimNode, rs: ReadState) -> None:
        pr = self.pending_reads.pop(rs.ctx, None)
        if pr is None:
            if rs.ctx in self.served_reads:
                return  # duplicate, or asked before a crash: apps ignore unknown contexts
            self.fail(f"n{n.id} got an unknown read state {rs}")
        self.served_reads.add(rs.ctx)
        node_id, inc, key, start, commit_at_start = pr
        if (node_id, inc) != (n.id, n.incarnation):
            self.fail(f"read {rs.ctx!r} answered on n{n.id} but asked on n{node_id}")
        if n.app.applied < rs.index:
            self.fail(f"n{n.id} read state {rs} handed out before applying it")
        if rs.index < commit_at_start:
            self.fail(
                f"read {rs.ctx!r} index {rs.index} < commit {commit_at_start} seen "
                "before it started (stale read)"
            )
        val = set(n.app.read(key))
        for v, t in self.acked[key]:
            if t < start and v not in val:
                self.fail(f"read of {key} on n{n.id} misses write {v} acknowledged before it")
        self.stats["reads_served"] += 1

    # ------------------------------------------------------------ random events
    def _random_events(self, tick: int) -> None:
        p, rng = self.p, self.rng
        chaos = not self.healed
        if chaos and p.p_crash and rng.random() < p.p_crash:
            cand = self.alive_nodes()
            ls = self.leaders()
            if ls and rng.random() < 0.5:  # leaders are where the interesting bugs live
                cand = ls
            if cand:
                self.crash(rng.choice(cand))
        if chaos and p.p_partition and rng.random() < p.p_partition:
            self._partition()
        if self.partition_until >= 0 and self.step_no >= self.partition_until:
            self._heal_network()
        if chaos and rng.random() < p.p_propose and len(self.pending_writes) < 30:
            self._client_write()
        if rng.random() < p.p_read:
            self._client_read()
        if chaos and p.p_conf and rng.random() < p.p_conf:
            self._conf_change()
        if chaos and p.p_transfer and rng.random() < p.p_transfer:
            ls = self.leaders()
            if ls:
                ld = rng.choice(ls)
                others = [v for v in ld.raft.voters if v != ld.id]
                if others:
                    to = rng.choice(others)
                    self.trace(f"n{ld.id} transfer leadership -> n{to}")
                    self.stats["transfers"] += 1
                    ld.raft.transfer_leadership(to)
                    self.process(ld)

    def _partition(self) -> None:
        ids = [n.id for n in self.nodes.values() if not n.shutdown]
        kind = self.rng.random()
        self.oneway.clear()
        if kind < 0.6:
            for i in ids:
                self.group[i] = self.rng.randint(0, 1)
        elif kind < 0.8:
            ls = [n.id for n in self.leaders()]
            iso = self.rng.choice(ls if ls and self.rng.random() < 0.7 else ids)
            for i in ids:
                self.group[i] = 1 if i == iso else 0
        else:
            for _ in range(self.rng.randint(1, 3)):
                a, b = self.rng.sample(ids, 2)
                self.oneway.add((a, b))
        self.partition_until = self.step_no + self.rng.randint(10, 100) * self.p.steps_per_tick
        self.stats["partitions"] += 1
        self.trace(f"PARTITION groups={self.group} oneway={sorted(self.oneway)}")

    def _heal_network(self) -> None:
        for i in self.group:
            self.group[i] = 0
        self.oneway.clear()
        self.partition_until = -1
        self.trace("network healed")

    def _pick_client_node(self, p_anywhere: float = 0.2) -> SimNode | None:
        alive = self.alive_nodes()
        if not alive:
            return None
        hinted = self.nodes.get(self.leader_hint)
        if hinted is not None and hinted.alive and self.rng.random() >= p_anywhere:
            return hinted
        return self.rng.choice(alive)

    def _client_write(self) -> None:
        n = self._pick_client_node()
        if n is None:
            return
        key = self.rng.choice(KEYS)
        self.write_seq += 1
        try:
            idx, term = n.raft.propose(encode_write(key, self.write_seq))
        except NotLeader as e:
            if e.leader_hint:
                self.leader_hint = e.leader_hint
            return
        except RaftError:
            return
        self.pending_writes[(n.id, n.incarnation, idx)] = (term, key, self.write_seq)
        self.process(n)

    def _client_read(self) -> None:
        n = self._pick_client_node(self.p.p_read_anywhere)
        if n is None:
            return
        self.read_seq += 1
        ctx = b"r%d" % self.read_seq
        key = self.rng.choice(KEYS)
        if self.p.spot_reads and self.read_seq % 2 and self._spot_read(n, ctx, key):
            return
        try:
            n.raft.read_index(ctx)
        except RaftError:
            return
        self.clock += 1
        self.pending_reads[ctx] = (n.id, n.incarnation, key, self.clock, self.max_commit)
        self.process(n)
        if ctx not in self.pending_reads:  # no heartbeat round: a lease read
            self.stats["reads_at_once"] += 1

    def _spot_read(self, n: SimNode, ctx: bytes, key: str) -> bool:
        """A read served with no Ready, as metadata.raft.driver does under a lease."""
        index = n.raft.lease_read_index()
        if index is None or n.raft.applied < index:
            return False
        self.clock += 1
        self.pending_reads[ctx] = (n.id, n.incarnation, key, self.clock, self.max_commit)
        self._serve_read(n, ReadState(ctx, index))
        self.stats["reads_on_the_spot"] += 1
        return True

    def _conf_change(self) -> None:
        ls = self.leaders()
        if not ls:
            return
        ld = self.rng.choice(ls)
        voters = ld.raft.voters
        if len(voters) >= 5 or (len(voters) > 3 and self.rng.random() < 0.5):
            op, target = ConfChangeType.REMOVE, self.rng.choice(voters)
        else:
            op, target = ConfChangeType.ADD, self.next_id
        try:
            ld.raft.propose_conf_change(op, target)
        except (RaftError, ValueError):
            return
        self.stats["conf_changes"] += 1
        self.trace(f"n{ld.id} proposes conf {op.name} n{target}")
        if op == ConfChangeType.ADD:
            self.next_id += 1
            self._add_node(target, ())
        self.process(ld)

    # ------------------------------------------------------------ main loop
    def _restarts(self) -> None:
        for n in self.nodes.values():
            if n.restart_at >= 0 and self.step_no >= n.restart_at:
                n.restart_at = -1
                if n.shutdown:
                    if n.alive:
                        self.trace(f"n{n.id} shut down (removed)")
                        n.alive = False
                        n.raft = None
                        n.writing = None
                else:
                    self._start(n)

    def heal(self) -> None:
        """Start of the liveness phase: no more faults, everyone back up."""
        self.healed = True
        self._heal_network()
        self.p.p_drop = 0.0
        self.p.p_dup = 0.0
        for n in self.nodes.values():
            if not n.alive and not n.shutdown:
                n.restart_at = -1
                self._start(n)
        self.trace("HEAL: liveness phase starts")

    def liveness_budget(self) -> int:
        """Ticks allowed from heal to a committed fresh write: elections take
        ``liveness_ticks``; a backlog of uncommitted entries ahead of the write
        may cost a round trip (plus disk) each when appends carry one entry."""
        p = self.p
        last = max((n.raft.last_index for n in self.alive_nodes()), default=0)
        backlog = max(0, last - self.max_commit)
        per_entry = (2 * p.max_delay + 2 * p.disk_max_latency) // p.steps_per_tick + 1
        return p.liveness_ticks + backlog * per_entry

    def _liveness_marker(self) -> None:
        ls = self.leaders()
        if (
            not ls
            or self.step_no - self.marker_at < 2 * self.p.election_ticks * self.p.steps_per_tick
        ):
            return
        ld = max(ls, key=lambda x: x.raft.term)
        self.write_seq += 1
        try:
            idx, term = ld.raft.propose(encode_write("a", self.write_seq))
        except RaftError:
            return
        self.marker_at = self.step_no
        self.markers.add((ld.id, ld.incarnation, idx))
        self.pending_writes[(ld.id, ld.incarnation, idx)] = (term, "a", self.write_seq)
        self.process(ld)

    def step(self) -> None:
        p = self.p
        s = self.step_no
        if s % p.steps_per_tick == 0:
            self._random_events(s // p.steps_per_tick)
            if self.healed:
                self._liveness_marker()
        self._restarts()
        due: list[Message] = []
        while self.net and self.net[0][0] <= s:
            due.append(heapq.heappop(self.net)[2])
        self.rng.shuffle(due)
        for m in due:
            n = self.nodes.get(m.to)
            if n is None or not n.alive or not self.can_deliver(m):
                continue
            if self.verbose > 1:
                self.trace(f"  {m.frm}->{m.to} {m}")
            n.raft.step(m)
            self.process(n)
        for n in list(self.nodes.values()):
            if n.next_tick <= s:
                n.next_tick += n.period  # the clock runs while the node is down too
                if n.alive:
                    n.raft.tick()
                    self.process(n)
        for n in list(self.nodes.values()):
            if n.alive and n.writing is not None and n.writing[1] <= s:
                rd = n.writing[0]
                self._complete(n, rd)
                self.process(n)
        self.step_no += 1

    def run(self) -> SimResult:
        p = self.p
        chaos_steps = p.chaos_ticks * p.steps_per_tick
        try:
            while self.step_no < chaos_steps:
                self.step()
            self.heal()
            budget = self.liveness_budget()
            end = self.step_no + budget * p.steps_per_tick
            heal_step = self.step_no
            while not self.live_ok:
                if self.step_no >= end:
                    self.fail(
                        f"liveness: no write committed within {budget} ticks "
                        "after the network healed and all nodes restarted"
                    )
                self.step()
            self.stats["liveness_ticks"] = (self.step_no - heal_step) // p.steps_per_tick
        except Violation as v:
            if self.verbose:
                for n in self.nodes.values():
                    self.trace(f"final n{n.id}: " + (repr(n.raft.status()) if n.alive else "down"))
            return SimResult(self.seed, False, str(v), self.step_no // p.steps_per_tick, self.stats)
        return SimResult(self.seed, True, None, self.step_no // p.steps_per_tick, self.stats)


def run_seed(
    seed: int, node_cls: Callable[..., RaftNode] = RaftNode, verbose: int = 0, **overrides: Any
) -> SimResult:
    return Simulator(seed, node_cls=node_cls, verbose=verbose, **overrides).run()
