"""A pure Raft core in the shape of etcd-io/raft: ``tick`` / ``step`` in,
``ready`` / ``advance`` out. No sockets, no clock, no disk, no threads; all
randomness comes from the ``random.Random`` given to the node. That makes the
whole protocol replayable in a deterministic simulator (tests/raftsim).

Public API::

    node = RaftNode(node_id, RaftConfig(peers=(1, 2, 3)), storage.load(), random.Random(x))
    node.tick()                                  # one logical clock tick
    node.step(msg)                               # a Message from a peer
    node.propose(data) -> (index, term)          # raises NotLeader / ProposalDropped
    node.propose_conf_change(op, node_id) -> (index, term)   # op: "add" | "remove"
    node.transfer_leadership(to)
    node.read_index(ctx)                         # answer comes as a ReadState in a Ready
    node.compact(index, snapshot_data)           # index <= node.applied
    node.has_ready() -> bool
    rd = node.ready(); ...persist, send, apply...; node.advance(rd)
    node.leader_id, node.role, node.term, node.commit_index, node.applied, node.voters

Protocol features: pre-vote, check-quorum (with the leader-lease check on
votes), randomized election timeouts in [election_ticks, 2*election_ticks),
pipelined + batched replication with flow control and conflict-term back-off,
a no-op entry per term, chunked InstallSnapshot, single-server membership
changes (effective when appended, one at a time), leadership transfer
(TimeoutNow), ReadIndex reads and, optionally, leader-lease reads
(``RaftConfig.lease_reads``: no heartbeat round while the lease holds). The
leader counts its own log entries toward the commit quorum only once they are
durable (after ``advance``), so a commit index anywhere always means "on disk
on a majority".

See ``metadata/raft/__init__.py`` for how a driver loop must use Ready.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from .log import RaftLog
from .messages import (
    NONE,
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    PersistentState,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Role,
    Snapshot,
    SnapshotResponse,
    SoftState,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from .progress import Progress, ProgressState


class RaftError(Exception):
    """Base of the errors the core raises at its callers."""


class NotLeader(RaftError):
    """This node cannot serve the request; ``leader_hint`` is who may (or None)."""

    def __init__(self, leader_hint: int | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint})")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """The leader refuses the proposal for now (transfer or conf change underway)."""


@dataclass(frozen=True)
class RaftConfig:
    """Tunables. ``peers`` is the bootstrap voter set: the same on every
    founding member, empty on a node that joins an existing cluster (it learns
    its configuration from the leader)."""

    peers: tuple[int, ...] = ()
    election_ticks: int = 10  # randomized per election in [n, 2n)
    heartbeat_ticks: int = 1
    max_append_bytes: int = 1 << 20  # per AppendEntries (at least one entry)
    max_inflight: int = 64  # unacknowledged appends (or snapshot chunks) per follower
    snapshot_chunk_bytes: int = 1 << 20
    check_quorum: bool = True
    pre_vote: bool = True
    # Leader-lease reads (needs check_quorum, and the same setting on every node):
    # read_index() is answered at once while the leader holds a lease, which
    # lasts election_ticks - lease_drift_ticks of the leader's ticks from the
    # send of a heartbeat that a quorum acknowledged. Safe while that span never
    # takes longer in real time than election_ticks - 1 ticks of any follower
    # (followers refuse votes for election_ticks after hearing from the leader):
    # 1 tick covers tick granularity, the rest clock-rate drift over the lease
    # (d >= 1 + drift * (election_ticks - d)) and the leader's ticks lagging
    # real time (a stalled loop must catch its ticks up before serving reads).
    lease_reads: bool = False
    lease_drift_ticks: int = 2

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.lease_reads:
            if not self.check_quorum:
                raise ValueError("lease_reads needs check_quorum (followers honour the lease)")
            if not 1 <= self.lease_drift_ticks < self.election_ticks:
                raise ValueError("need 1 <= lease_drift_ticks < election_ticks")
        if self.max_inflight < 1 or self.snapshot_chunk_bytes < 1:
            raise ValueError("max_inflight and snapshot_chunk_bytes must be positive")


@dataclass
class Ready:
    """A batch of work for the driver. Order matters: persist ``hard_state``,
    ``snapshot`` and ``entries`` with one fsync, then send ``messages``, then
    (if ``install_snapshot``) load ``snapshot`` into the state machine, apply
    ``committed_entries``, serve ``read_states``, and call ``advance``."""

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    install_snapshot: bool = False  # snapshot came from the leader: restore the state machine
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    soft_state: SoftState | None = None
    applied_to: int = 0  # applied index once committed_entries are applied

    def must_sync(self) -> bool:
        return self.hard_state is not None or bool(self.entries) or self.snapshot is not None


class _PendingRead(NamedTuple):
    seq: int
    ctx: bytes
    index: int
    frm: int


_WON, _LOST, _PENDING = 1, 2, 3
_FOREVER = 1 << 62  # a tick count no node reaches
STALL_HEARTBEATS = 3


class RaftNode:
    def __init__(
        self,
        node_id: int,
        config: RaftConfig,
        state: PersistentState | None = None,
        rng: random.Random | None = None,
        applied: int = 0,
    ) -> None:
        if node_id <= 0:
            raise ValueError("node ids are positive ints")
        self.id = node_id
        self.cfg = config
        self.rng = rng if rng is not None else random.Random(node_id)
        st = state if state is not None else PersistentState()
        self.log = RaftLog(st.snapshot, st.entries)
        hs = st.hard_state
        self.term = hs.term
        self.vote = hs.vote
        # A commit index on disk may lag (it need not be fsync'd); entries the
        # application already applied were committed, so they count too.
        known = max(hs.commit, applied)
        self.log.commit = max(self.log.offset, min(known, self.log.last_index()))
        self.applied = min(max(applied, self.log.offset), self.log.commit)
        self._apply_handed = self.applied
        self.prev_hs = hs
        self.prev_soft = SoftState(NONE, Role.FOLLOWER)

        self.conf_indexes = [e.index for e in self.log.ents if e.type == EntryType.CONF]
        self.voters: tuple[int, ...] = ()

        self.role = Role.FOLLOWER
        self.leader_id = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_ticks
        self.votes: dict[int, bool] = {}
        self.progress: dict[int, Progress] = {}
        self.lead_transferee = NONE
        self.term_start = 0  # index of this leader's no-op
        self.ticks = 0  # ticks since this node started: the lease clock
        self.lease_forfeit = False  # sent TimeoutNow this term: no lease until the next
        self._lease_end: int | None = None  # memo of _lease_end_tick(); None: recompute

        self.read_seq = 0
        self.pending_reads: deque[_PendingRead] = deque()
        self.reads_waiting_commit: list[tuple[bytes, int]] = []
        self.read_states: list[ReadState] = []  # confirmed, waiting for apply

        self.snap_recv: tuple[tuple[int, int, int, int], bytearray] | None = None
        self.pending_snapshot: Snapshot | None = None
        self.pending_install = False

        self.msgs: list[Message] = []
        self._pending_bcast = False
        self._pending_read_hb = False
        self._outstanding: Ready | None = None

        self._update_voters()
        self._become_follower(self.term, NONE)

    # ------------------------------------------------------------ properties
    @property
    def commit_index(self) -> int:
        return self.log.commit

    @property
    def last_index(self) -> int:
        return self.log.last_index()

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.commit)

    def status(self) -> dict[str, object]:
        """A snapshot of the node's view, for logs and admin tools."""
        return {
            "id": self.id,
            "role": self.role.name.lower(),
            "term": self.term,
            "leader": self.leader_id,
            "commit": self.log.commit,
            "applied": self.applied,
            "first_index": self.log.first_index(),
            "last_index": self.log.last_index(),
            "voters": list(self.voters),
            "progress": {k: repr(v) for k, v in self.progress.items()},
        }

    # ------------------------------------------------------------ public API
    def tick(self) -> None:
        self.ticks += 1
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if self._promotable() and self.election_elapsed >= self.randomized_timeout:
                self.election_elapsed = 0
                self._hup(transfer=False)

    def campaign(self) -> None:
        """Start an election now (tests and operators; normally ticks do it)."""
        self._hup(transfer=False)

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append a command; returns (index, term). It is committed when an entry
        at that index with that term shows up in ``committed_entries``."""
        return self._propose(EntryType.NORMAL, bytes(data))

    def propose_conf_change(self, op: ConfChangeType | str, node_id: int) -> tuple[int, int]:
        """Add or remove one voter. Refused while another change is uncommitted
        or before this leader committed its first entry (the Raft single-server
        change rules, including the fix from the raft-dev list, 2015)."""
        if isinstance(op, str):
            op = ConfChangeType[op.upper()]
        self._check_can_propose()
        if self.log.commit < self.term_start:
            raise ProposalDropped("leader has not committed an entry of its term yet")
        if self.conf_indexes and self.conf_indexes[-1] > self.log.commit:
            raise ProposalDropped("a configuration change is still uncommitted")
        voters = set(self.voters)
        if op == ConfChangeType.ADD:
            if node_id in voters:
                raise ValueError(f"node {node_id} is already a voter")
            voters.add(node_id)
        else:
            if node_id not in voters:
                raise ValueError(f"node {node_id} is not a voter")
            voters.discard(node_id)
            if not voters:
                raise ValueError("cannot remove the last voter")
        cc = ConfChange(op, node_id, tuple(sorted(voters)))
        return self._propose(EntryType.CONF, cc.encode())

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to ``to``: catch it up, then tell it to campaign at
        once (TimeoutNow). Proposals are refused meanwhile; aborted after an
        election timeout."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader_id or None)
        if to == self.id:
            return
        if to not in self.progress:
            raise ValueError(f"node {to} is not a voter")
        if to != self.lead_transferee:  # a repeated call only nudges (a lost TimeoutNow)
            self.lead_transferee = to
            self.election_elapsed = 0
        pr = self.progress[to]
        if pr.match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read. ``ReadState(ctx, index)`` comes back in a
        later Ready once the leadership is confirmed by a quorum and this node
        has applied ``index`` (with ``lease_reads``, a leader holding its lease
        answers at once). A follower forwards to its leader; if the leader
        fails meanwhile the read is silently lost, so callers use a timeout."""
        if self.role == Role.LEADER:
            self._leader_read(ctx, self.id)
        elif self.leader_id != NONE:
            self._send(ReadIndexRequest(self.id, self.leader_id, self.term, ctx))
        else:
            raise NotLeader(None)

    def lease_read_index(self) -> int | None:
        """The index a read may be served at right now with no heartbeat round and
        no Ready: the commit index, while this node leads, has committed an entry
        of its term and holds its lease; else None. The caller serves the read
        once it has applied that index: what ``read_index`` would answer in the
        next Ready, minus the round trip through it."""
        if self.role != Role.LEADER or self.log.commit < self.term_start:
            return None
        if self.voters == (self.id,) or self._in_lease():
            return self.log.commit
        return None

    def compact(self, index: int, data: bytes) -> None:
        """The state machine at applied ``index`` serialized to ``data``: drop
        the log up to there. The snapshot is handed back in the next Ready for
        storage (and kept in memory to send to followers that fall behind)."""
        if index <= self.log.offset:
            return
        if index > self.applied:
            raise ValueError(f"cannot compact to {index} beyond applied {self.applied}")
        snap = Snapshot(index, self.log.term(index) or 0, self._voters_at(index), bytes(data))
        self.log.compact(snap)
        self.conf_indexes = [i for i in self.conf_indexes if i > index]
        self.pending_snapshot = snap
        self.pending_install = False

    def step(self, m: Message) -> None:
        """Feed one message received from a peer."""
        if m.to != self.id:
            return
        if m.term > self.term:
            if isinstance(m, VoteRequest):
                et = self.cfg.election_ticks
                in_lease = self.cfg.check_quorum and (
                    (self.leader_id != NONE and self.election_elapsed < et)
                    # after a restart we may have acknowledged a leader's
                    # heartbeat just before: honour its lease from now on
                    or (self.cfg.lease_reads and self.ticks < et)
                )
                if in_lease and not m.transfer:
                    return  # we heard from a live leader recently: do not be disrupted
            if isinstance(m, VoteRequest) and m.pre_vote:
                pass  # a pre-vote never changes our term
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # granted pre-votes carry the future term
            elif isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and isinstance(
                m, (AppendEntries, Heartbeat)
            ):
                # A stale leader (e.g. one that was partitioned) learns our term.
                self._send(AppendResponse(self.id, m.frm, self.term))
            elif isinstance(m, VoteRequest) and m.pre_vote:
                self._send(VoteResponse(self.id, m.frm, self.term, granted=False, pre_vote=True))
            return

        if isinstance(m, VoteRequest):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        if self.msgs or self._pending_bcast or self._pending_read_hb:
            return True
        if self.pending_snapshot is not None or self.log.stable < self.log.last_index():
            return True
        if self.hard_state() != self.prev_hs:
            return True
        ss = self.prev_soft  # field by field: no SoftState built per call
        if self.leader_id != ss.leader_id or self.role != ss.role:
            return True
        limit = min(self.log.commit, self.log.last_index())
        if self._apply_handed < limit:
            return True
        return any(rs.index <= self._apply_handed for rs in self.read_states)

    def ready(self) -> Ready:
        """Collect pending work. Only one Ready may be outstanding: call
        ``advance`` before the next ``ready`` (``step``/``tick`` in between are fine)."""
        if self._outstanding is not None:
            raise RuntimeError("advance() the previous Ready first")
        self._flush()
        rd = Ready()
        hs = self.hard_state()
        if hs != self.prev_hs:
            rd.hard_state = hs
            self.prev_hs = hs
        ss = SoftState(self.leader_id, self.role)
        if ss != self.prev_soft:
            rd.soft_state = ss
            self.prev_soft = ss
        if self.pending_snapshot is not None:
            rd.snapshot = self.pending_snapshot
            rd.install_snapshot = self.pending_install
            if self.pending_install:
                self._apply_handed = max(self._apply_handed, self.pending_snapshot.index)
            self.pending_snapshot = None
            self.pending_install = False
        rd.entries = self.log.unstable()
        rd.messages = self.msgs
        self.msgs = []
        hi = min(self.log.commit, self.log.last_index())
        if hi > self._apply_handed:
            rd.committed_entries = self.log.slice(self._apply_handed + 1, hi)
            self._apply_handed = hi
        rd.applied_to = self._apply_handed
        if self.read_states:
            keep = []
            for rs in self.read_states:
                (rd.read_states if rs.index <= rd.applied_to else keep).append(rs)
            self.read_states = keep
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied ``rd``."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() with a Ready that is not the outstanding one")
        self._outstanding = None
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        self.applied = max(self.applied, rd.applied_to)
        if self.role == Role.LEADER and self._maybe_commit():
            self._on_commit_advanced()

    # ------------------------------------------------------------ role changes
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.leader_id = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        n = self.cfg.election_ticks
        self.randomized_timeout = self.rng.randrange(n, 2 * n)
        self.votes = {}
        self.progress = {}
        self._lease_end = None
        self.lead_transferee = NONE
        self.pending_reads.clear()
        self.reads_waiting_commit.clear()
        self._pending_bcast = False
        self._pending_read_hb = False

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.leader_id = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        n = self.cfg.election_ticks
        self.randomized_timeout = self.rng.randrange(n, 2 * n)
        self.votes = {}
        self.leader_id = NONE
        self.progress = {}
        self._lease_end = None
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.leader_id = self.id
        self.role = Role.LEADER
        self.read_seq = 0
        self.lease_forfeit = False
        self._sync_progress()
        for pr in self.progress.values():
            pr.recent_active = False
        noop = Entry(self.log.last_index() + 1, self.term, EntryType.NOOP)
        self.log.append([noop])
        self.term_start = noop.index
        self._bcast_append(send_if_empty=True)

    def _promotable(self) -> bool:
        return self.id in self.voters

    def _hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER or not self._promotable():
            return
        if self.cfg.pre_vote and not transfer:
            self._become_pre_candidate()
            if self._poll(self.id, True) == _WON:
                self._campaign(transfer=False)
                return
            for v in self.voters:
                if v != self.id:
                    self._send(
                        VoteRequest(
                            self.id,
                            v,
                            self.term + 1,
                            self.log.last_index(),
                            self.log.last_term(),
                            pre_vote=True,
                        )
                    )
        else:
            self._campaign(transfer)

    def _campaign(self, transfer: bool) -> None:
        self._become_candidate()
        if self._poll(self.id, True) == _WON:
            self._become_leader()
            return
        for v in self.voters:
            if v != self.id:
                self._send(
                    VoteRequest(
                        self.id,
                        v,
                        self.term,
                        self.log.last_index(),
                        self.log.last_term(),
                        pre_vote=False,
                        transfer=transfer,
                    )
                )

    def _poll(self, frm: int, granted: bool) -> int:
        if frm in self.voters and frm not in self.votes:
            self.votes[frm] = granted
        q = len(self.voters) // 2 + 1
        yes = sum(1 for v in self.votes.values() if v)
        if yes >= q:
            return _WON
        if len(self.votes) - yes >= len(self.voters) - q + 1:
            return _LOST
        return _PENDING

    # ------------------------------------------------------------ ticking
    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                if not self._quorum_active():
                    self._become_follower(self.term, NONE)
                    return
                for pr in self.progress.values():
                    pr.recent_active = False
            self.lead_transferee = NONE  # a transfer that did not finish in time is abandoned
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = sum(1 for v in self.voters if v == self.id or self.progress[v].recent_active)
        return active >= len(self.voters) // 2 + 1

    # ------------------------------------------------------------ voting
    def _handle_vote_request(self, m: VoteRequest) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.leader_id == NONE)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):
            self._send(VoteResponse(self.id, m.frm, m.term, granted=True, pre_vote=m.pre_vote))
            if not m.pre_vote:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(VoteResponse(self.id, m.frm, self.term, granted=False, pre_vote=m.pre_vote))

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif isinstance(m, VoteResponse):
            if m.pre_vote != (self.role == Role.PRE_CANDIDATE):
                return
            res = self._poll(m.frm, m.granted)
            if res == _WON:
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(transfer=False)
                else:
                    self._become_leader()
            elif res == _LOST:
                self._become_follower(self.term, NONE)

    # ------------------------------------------------------------ follower
    def _step_follower(self, m: Message) -> None:
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            self.election_elapsed = 0
            self.leader_id = m.frm
            if isinstance(m, AppendEntries):
                self._handle_append(m)
            elif isinstance(m, Heartbeat):
                self.log.commit_to(m.commit)
                self._send(
                    HeartbeatResponse(
                        self.id, m.frm, self.term, read_seq=m.read_seq, sent_tick=m.sent_tick
                    )
                )
            else:
                self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow):
            self._hup(transfer=True)
        elif isinstance(m, ReadIndexResponse):
            self.read_states.append(ReadState(m.ctx, m.index))

    def _handle_append(self, m: AppendEntries) -> None:
        log = self.log
        if m.prev_index < log.commit:
            self._send(AppendResponse(self.id, m.frm, self.term, index=log.commit))
            return
        if log.match_term(m.prev_index, m.prev_term):
            last_new = m.prev_index + len(m.entries)
            truncated = log.maybe_append(m.prev_index, m.entries)
            if truncated is not None:
                self._note_truncated(truncated)
            self._note_appended(m.entries)
            log.commit_to(min(m.commit, last_new))
            self._send(AppendResponse(self.id, m.frm, self.term, index=last_new))
        else:
            hint_index, hint_term = log.find_conflict_by_term(
                min(m.prev_index, log.last_index()), m.prev_term
            )
            self._send(
                AppendResponse(
                    self.id,
                    m.frm,
                    self.term,
                    index=m.prev_index,
                    reject=True,
                    hint_index=hint_index,
                    hint_term=hint_term,
                )
            )

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        if m.index <= self.log.commit:
            self.snap_recv = None
            self._send(AppendResponse(self.id, m.frm, self.term, index=self.log.commit))
            return
        key = (m.frm, m.term, m.index, m.snap_term)
        if m.offset == 0:
            self.snap_recv = (key, bytearray())
        have = len(self.snap_recv[1]) if self.snap_recv and self.snap_recv[0] == key else 0
        if self.snap_recv is None or self.snap_recv[0] != key or m.offset > have:
            self._send(SnapshotResponse(self.id, m.frm, self.term, m.index, have, reject=True))
            return
        if m.offset < have:  # a duplicate: just tell where we are
            self._send(SnapshotResponse(self.id, m.frm, self.term, m.index, have))
            return
        buf = self.snap_recv[1]
        buf += m.data
        if not m.done:
            self._send(SnapshotResponse(self.id, m.frm, self.term, m.index, len(buf)))
            return
        self.snap_recv = None
        snap = Snapshot(m.index, m.snap_term, tuple(m.voters), bytes(buf))
        if self._restore(snap):
            self._send(AppendResponse(self.id, m.frm, self.term, index=self.log.last_index()))
        else:
            self._send(AppendResponse(self.id, m.frm, self.term, index=self.log.commit))

    def _restore(self, snap: Snapshot) -> bool:
        if snap.index <= self.log.commit:
            return False
        if self.log.match_term(snap.index, snap.term):
            self.log.commit_to(snap.index)  # we already hold the entries: just commit
            return False
        self.log.restore(snap)
        self.conf_indexes = []
        self.pending_snapshot = snap
        self.pending_install = True
        self._update_voters()
        return True

    # ------------------------------------------------------------ leader
    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.frm)
        if isinstance(m, ReadIndexRequest):
            self._leader_read(m.ctx, m.frm)
            return
        if pr is None:
            return
        pr.recent_active = True
        if isinstance(m, AppendResponse):
            self._handle_append_response(m, pr)
        elif isinstance(m, HeartbeatResponse):
            self._heartbeat_response_flow(m.frm, pr)
            if m.sent_tick > pr.lease_ack:
                pr.lease_ack = m.sent_tick
                self._lease_end = None
            if m.read_seq > pr.read_ack:
                pr.read_ack = m.read_seq
                self._check_reads()
        elif isinstance(m, SnapshotResponse):
            pr.stall = 0
            if pr.state != ProgressState.SNAPSHOT or m.index != pr.pending_snapshot:
                return
            k = m.offset // self.cfg.snapshot_chunk_bytes
            if m.reject:
                pr.snap_acked = pr.snap_sent = k
            elif k > pr.snap_acked:
                pr.snap_acked = k
            self._send_snapshot_chunks(m.frm)

    def _heartbeat_response_flow(self, to: int, pr: Progress) -> None:
        """Heartbeat answers are our retransmission timer. Answers to appends
        (or snapshot chunks) may still be on their way, so only after
        STALL_HEARTBEATS rounds without one do we assume they were lost and
        resend; a probe that got no answer is simply retried."""
        pr.stall += 1
        stalled = pr.stall >= STALL_HEARTBEATS
        if pr.state == ProgressState.SNAPSHOT:
            if stalled:
                pr.stall = 0
                pr.snap_sent = pr.snap_acked
                self._send_snapshot_chunks(to)
        elif pr.state == ProgressState.PROBE:
            pr.paused = False
            if pr.match < self.log.last_index():
                self._send_append(to)
        elif pr.inflight:
            if stalled:
                pr.stall = 0
                pr.become_probe()
                self._send_append(to)
        elif pr.match < self.log.last_index():
            pr.next = pr.match + 1
            self._send_all(to, send_if_empty=False)

    def _handle_append_response(self, m: AppendResponse, pr: Progress) -> None:
        pr.stall = 0
        if m.reject:
            next_probe = m.hint_index
            if m.hint_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.free_inflight_le(m.index)
        if self._maybe_commit():
            self._on_commit_advanced()
        else:
            self._send_all(m.frm, send_if_empty=False)
        if (
            self.role == Role.LEADER
            and m.frm == self.lead_transferee
            and pr.match == self.log.last_index()
        ):
            self._send_timeout_now(m.frm)

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader_id or None)
        if self.lead_transferee != NONE:
            raise ProposalDropped("leadership transfer in progress")

    def _propose(self, etype: EntryType, data: bytes) -> tuple[int, int]:
        self._check_can_propose()
        e = Entry(self.log.last_index() + 1, self.term, etype, data)
        self.log.append([e])
        self._pending_bcast = True
        if etype == EntryType.CONF:
            self._note_appended([e])
        return e.index, e.term

    def _match_of(self, v: int) -> int:
        return self.log.stable if v == self.id else self.progress[v].match

    def _commit_allowed(self, index: int) -> bool:
        """Raft's commit rule: only an entry of the current term is committed by
        counting replicas (older ones are committed with it)."""
        return self.log.term(index) == self.term

    def _maybe_commit(self) -> bool:
        if not self.voters:
            return False
        matches = sorted((self._match_of(v) for v in self.voters), reverse=True)
        idx = matches[len(matches) // 2]
        if idx > self.log.commit and self._commit_allowed(idx):
            self.log.commit_to(idx)
            return True
        return False

    def _on_commit_advanced(self) -> None:
        """After the leader's commit index moved: send followers what waits for
        them (an empty append only to carry the commit index would cost every
        node a message, a Ready and an answer per commit: the next append or
        heartbeat carries it), release reads that waited for this term's first
        commit, retire if we were removed."""
        self._bcast_append(send_if_empty=False)
        if self.reads_waiting_commit and self.log.commit >= self.term_start:
            waiting, self.reads_waiting_commit = self.reads_waiting_commit, []
            for ctx, frm in waiting:
                self._leader_read(ctx, frm)
        if self.id not in self.voters and (
            not self.conf_indexes or self.log.commit >= self.conf_indexes[-1]
        ):
            best = max(self.progress, key=lambda v: self.progress[v].match, default=NONE)
            if best != NONE and self.progress[best].match == self.log.last_index():
                self._send_timeout_now(best)
            self._become_follower(self.term, NONE)

    def _send_all(self, to: int, send_if_empty: bool) -> None:
        sent = False
        while self._send_append(to, send_if_empty=send_if_empty and not sent):
            sent = True

    def _bcast_append(self, send_if_empty: bool) -> None:
        for to in self.progress:
            self._send_all(to, send_if_empty)

    def _bcast_heartbeat(self) -> None:
        for to, pr in self.progress.items():
            self._send(
                Heartbeat(
                    self.id,
                    to,
                    self.term,
                    commit=min(pr.match, self.log.commit),
                    read_seq=self.read_seq,
                    sent_tick=self.ticks,
                )
            )

    def _flush(self) -> None:
        """Deferred broadcasts: one append per follower for all proposals made
        since the last Ready, one heartbeat round for all new reads."""
        if self.role == Role.LEADER:
            if self._pending_bcast:
                self._bcast_append(send_if_empty=False)
            if self._pending_read_hb:
                self._bcast_heartbeat()
        self._pending_bcast = False
        self._pending_read_hb = False

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            if prev < self.log.offset:
                pr.become_snapshot(self.log.offset)
                self._send_snapshot_chunks(to)
                return True
            pr.next = self.log.last_index() + 1  # should not happen: clamp and retry
            prev = pr.next - 1
            prev_term = self.log.term(prev) or 0
        ents = self.log.slice(pr.next, self.log.last_index(), self.cfg.max_append_bytes)
        if not ents and not send_if_empty:
            return False
        self._send(AppendEntries(self.id, to, self.term, prev, prev_term, ents, self.log.commit))
        if ents:
            pr.sent_entries(ents[-1].index)
        elif pr.state == ProgressState.PROBE:
            pr.paused = True
        return True

    def _send_snapshot_chunks(self, to: int) -> None:
        pr = self.progress[to]
        snap = self.log.snapshot
        if snap is None:
            return
        if snap.index != pr.pending_snapshot:  # compacted again meanwhile: send the new one
            pr.become_snapshot(snap.index)
        cs = self.cfg.snapshot_chunk_bytes
        n_chunks = max(1, -(-len(snap.data) // cs))
        while pr.snap_sent < n_chunks and pr.snap_sent - pr.snap_acked < pr.max_inflight:
            k = pr.snap_sent
            self._send(
                InstallSnapshot(
                    self.id,
                    to,
                    self.term,
                    snap.index,
                    snap.term,
                    snap.voters,
                    k * cs,
                    snap.data[k * cs : (k + 1) * cs],
                    done=(k == n_chunks - 1),
                )
            )
            pr.snap_sent += 1

    # ------------------------------------------------------------ reads
    def _leader_read(self, ctx: bytes, frm: int) -> None:
        if self.log.commit < self.term_start:
            # Our commit index may lag the true one until this term's no-op commits.
            self.reads_waiting_commit.append((ctx, frm))
            return
        if self.voters == (self.id,) or self._in_lease():
            self._read_ready(ctx, self.log.commit, frm)
            return
        self.read_seq += 1
        self.pending_reads.append(_PendingRead(self.read_seq, ctx, self.log.commit, frm))
        self._pending_read_hb = True

    def _in_lease(self) -> bool:
        """A quorum acknowledged a heartbeat we sent at tick T, so none of them
        votes for another leader before T + election_ticks of its own ticks
        (the lease check in ``step``); we trust that until T + election_ticks -
        lease_drift_ticks of ours. A leadership transfer bypasses that check,
        so once TimeoutNow may be out, no lease for the rest of the term."""
        cfg = self.cfg
        if not cfg.lease_reads or self.lead_transferee != NONE or self.lease_forfeit:
            return False
        end = self._lease_end
        if end is None:  # acks or voters changed: every read between asks again
            end = self._lease_end = self._lease_end_tick()
        return self.ticks < end

    def _lease_end_tick(self) -> int:
        """The tick our lease runs to: the quorum's latest acknowledged heartbeat
        (our own entry is now, later than any ack, so it counts as forever) plus
        election_ticks - lease_drift_ticks; -1 while no quorum acknowledged one."""
        cfg = self.cfg
        acks = sorted(
            (_FOREVER if v == self.id else self.progress[v].lease_ack for v in self.voters),
            reverse=True,
        )
        start = acks[len(acks) // 2]
        if start < 0:
            return -1
        return _FOREVER if start == _FOREVER else start + cfg.election_ticks - cfg.lease_drift_ticks

    def _send_timeout_now(self, to: int) -> None:
        self.lease_forfeit = True
        self._send(TimeoutNow(self.id, to, self.term))

    def _check_reads(self) -> None:
        if not self.pending_reads or not self.voters:
            return
        acks = sorted(
            (self.read_seq if v == self.id else self.progress[v].read_ack for v in self.voters),
            reverse=True,
        )
        confirmed = acks[len(acks) // 2]
        while self.pending_reads and self.pending_reads[0].seq <= confirmed:
            r = self.pending_reads.popleft()
            self._read_ready(r.ctx, r.index, r.frm)

    def _read_ready(self, ctx: bytes, index: int, frm: int) -> None:
        if frm == self.id:
            self.read_states.append(ReadState(ctx, index))
        else:
            self._send(ReadIndexResponse(self.id, frm, self.term, ctx, index))

    # ------------------------------------------------------------ configuration
    def _base_voters(self) -> tuple[int, ...]:
        if self.log.snapshot is not None:
            return tuple(self.log.snapshot.voters)
        return tuple(sorted(self.cfg.peers))

    def _voters_at(self, index: int) -> tuple[int, ...]:
        for i in reversed(self.conf_indexes):
            if i <= index:
                return ConfChange.decode(self.log.entry(i).data).voters
        return self._base_voters()

    def _note_appended(self, entries: list[Entry]) -> None:
        changed = False
        for e in entries:
            if e.type == EntryType.CONF and (
                not self.conf_indexes or e.index > self.conf_indexes[-1]
            ):
                self.conf_indexes.append(e.index)
                changed = True
        if changed:
            self._update_voters()

    def _note_truncated(self, frm: int) -> None:
        changed = False
        while self.conf_indexes and self.conf_indexes[-1] >= frm:
            self.conf_indexes.pop()
            changed = True
        if changed:
            self._update_voters()

    def _update_voters(self) -> None:
        """The configuration is the last one in the log, committed or not."""
        self._lease_end = None
        if self.conf_indexes:
            self.voters = ConfChange.decode(self.log.entry(self.conf_indexes[-1]).data).voters
        else:
            self.voters = self._base_voters()
        if self.role == Role.LEADER:
            self._sync_progress()
            if self._maybe_commit():
                self._on_commit_advanced()
            self._check_reads()

    def _sync_progress(self) -> None:
        self._lease_end = None
        for v in self.voters:
            if v != self.id and v not in self.progress:
                pr = Progress(self.log.last_index() + 1, self.cfg.max_inflight)
                pr.recent_active = True
                self.progress[v] = pr
        for v in list(self.progress):
            if v not in self.voters:
                del self.progress[v]
                if self.lead_transferee == v:
                    self.lead_transferee = NONE

    def _send(self, m: Message) -> None:
        self.msgs.append(m)
