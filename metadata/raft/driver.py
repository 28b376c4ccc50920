"""Runs the pure Raft core in a process: storage, ZeroMQ transport, a state machine.

The driver lives on the node's RPC event loop (dfs.rpc.RpcServer): request
handlers, Raft messages from peers, ticks and the Ready processing all run
on that one thread, so the core, the log storage and the state machine need
no lock and no request pays for a hand-off between threads. After each poll
of the sockets the loop runs every Ready in the order the core demands:
persist (one fsync for all that arrived meanwhile: group commit), send,
restore/apply, serve reads, advance. A leader whose term and vote are on disk
sends its new entries first and applies what is already committed before its
own fsync (see ``_process_ready``). The WAL fsync is the one disk write on
every operation's critical path, so it runs inline; requests that arrive
during it are queued by ZeroMQ and share the next fsync. Reads under the
leader's lease are served on the spot, without a Ready. Other threads hand
work to the loop with ``call_soon``.

Raft messages travel as one-way ``raft.msg`` requests, batched per peer per
Ready: on framed TCP (dfs.stream) once a peer has told its port, as every
message does when the cluster has no key; on ZeroMQ otherwise.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dfs import errors, rpc
from dfs.errors import DfsError

from .core import NotLeader, ProposalDropped, RaftConfig, RaftNode
from .messages import ConfChange, EntryType, Message, Role
from .storage import RaftStorage

log = logging.getLogger("dfs.raft")

Done = Callable[[Any], None]  # receives a result, or a DfsError
READ_ROUND_PATIENCE = 0.2  # seconds before another ReadIndex round may overlap a slow one
# entry bytes in one raft.msg: a Ready's appends to one peer may together pass the
# wire's 4 MiB header limit (entries of small files' inline content reach 1 MiB)
RAFT_MSG_BYTES = 2 << 20


class StateMachine(Protocol):
    def apply(self, data: bytes) -> Any: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


@dataclass
class _Waiting:
    term: int
    done: Done


class _LoopQueue:
    """``put(("call", fn))`` runs fn on the loop: the shape maintenance code uses."""

    def __init__(self, server: rpc.RpcServer) -> None:
        self.server = server

    def put(self, item: tuple[str, Callable[[], None]]) -> None:
        self.server.call_soon(item[1])


class RaftDriver:
    def __init__(
        self,
        node_id: int,
        peers: dict[int, str],
        data_dir: Path,
        server: rpc.RpcServer,
        sm: StateMachine,
        *,
        tick: float = 0.03,
        election_ticks: int = 10,
        snapshot_every: int = 20_000,
        join: bool = False,
    ) -> None:
        self.id = node_id
        self.static_peers = dict(peers)  # --peers: a fallback directory of endpoints
        self.learned: dict[int, str] = {}  # endpoints senders of raft.msg gave
        self.sm = sm
        self.sender = rpc.Sender(server.security, server.ctx, server)  # used on the loop only
        self.tick_interval = tick
        self.snapshot_every = snapshot_every
        self.storage = RaftStorage(data_dir)
        state = self.storage.load()
        applied = 0
        if state.snapshot is not None and state.snapshot.data:
            sm.restore(state.snapshot.data)
            applied = state.snapshot.index
        self.bootstrap = _bootstrap_voters(Path(data_dir), self.static_peers, join)
        # Lease reads: the leader answers reads without a heartbeat round for
        # half an election timeout after a heartbeat a quorum acknowledged;
        # followers refuse votes for a whole one. The other half covers tick
        # granularity and the leader's tick count lagging real time between a
        # timer and a read (loop work, an fsync); _tick keeps the leader's
        # ticks caught up with time.monotonic across longer stalls.
        cfg = RaftConfig(
            peers=self.bootstrap,
            election_ticks=election_ticks,
            lease_reads=True,
            lease_drift_ticks=election_ticks - election_ticks // 2,
        )
        self.raft = RaftNode(node_id, cfg, state, random.Random(os.urandom(8)), applied=applied)
        self.last_snapshot = applied
        self._persisted_tv = (state.hard_state.term, state.hard_state.vote)
        self.server = server
        self.inbox = _LoopQueue(server)  # for code that queues ("call", fn) work
        self.waiting: dict[int, _Waiting] = {}  # log index -> who proposed it here
        self.reads: dict[bytes, list[tuple[Callable[[], Any], Done]]] = {}
        self._read_batch: list[tuple[Callable[[], Any], Done]] = []
        self._read_ctx = 0
        self._read_started = 0.0
        self._tick_clock = time.monotonic()  # the time the core's tick count stands for
        self.tick_hooks: list[Callable[[float], None]] = []
        self.role_hooks: list[Callable[[Role], None]] = []
        server.route("raft.msg", self._on_raft_msg)

    # ------------------------------------------------------------ entry points

    def propose(self, data: bytes, done: Done) -> None:
        """Replicate ``data``; ``done`` gets the state machine's result (on the loop)."""
        self._on_loop(lambda: self._propose(data, done))

    def read(self, fn: Callable[[], Any], done: Done) -> None:
        """Run ``fn`` linearizably (under the leader's lease, else after a ReadIndex
        round) and pass its result to ``done``."""

        if self.server.on_loop():
            self._queue_read(fn, done)
        else:
            self.server.call_soon(lambda: self._queue_read(fn, done))

    def _queue_read(self, fn: Callable[[], Any], done: Done) -> None:
        if self.raft.role != Role.LEADER:
            done(self.not_leader())
        elif not self._read_now(fn, done):
            self._read_batch.append((fn, done))

    def _read_now(self, fn: Callable[[], Any], done: Done) -> bool:
        """Serve a read on the spot when the core would answer its ReadIndex in the
        next Ready anyway (a lease read) and the state machine is current: no
        batch, no Ready. The lease is counted in ticks, so only while the tick
        count is fresh (< 2 ticks behind real time: within the drift margin that
        RaftConfig.lease_drift_ticks leaves); else the read waits for the loop's
        timers like any other."""
        if time.monotonic() - self._tick_clock >= 2 * self.tick_interval:
            return False
        index = self.raft.lease_read_index()
        if index is None or self.raft.applied < index:
            return False
        try:
            result = fn()
        except DfsError as exc:
            result = exc
        done(result)
        return True

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread (where the state machine may be touched)."""
        self.server.call_soon(fn)

    def _on_loop(self, fn: Callable[[], None]) -> None:
        if self.server.on_loop():
            fn()
        else:
            self.server.call_soon(fn)

    def _on_raft_msg(self, call: rpc.Call) -> Any:
        ep, frm = call.fields.get("ep"), call.fields["from"]
        if ep is not None and self.learned.get(frm) != ep:
            self.learned[frm] = ep  # a node that joins learns its leader's address here
        sp, st, src = call.fields.get("sp"), call.fields.get("st"), ep or self.endpoint_of(frm)
        if sp is not None and st is not None and src is not None:
            self.sender.learn(src, sp, st.encode())  # framed TCP to that node from now on
        for m in call.fields["msgs"]:
            try:
                msg = Message.from_wire(m)
            except Exception as exc:
                log.warning("dropped a malformed Raft message: %s", exc)
                continue
            self.raft.step(msg)
        return rpc.DEFERRED  # one-way: nothing is sent back

    @property
    def is_leader(self) -> bool:
        return self.raft.role == Role.LEADER

    def endpoint_of(self, node_id: int) -> str | None:
        """The replicated peers map first, then --peers, then what the node told us."""
        replicated = getattr(self.sm, "peers", None) or {}
        return (
            replicated.get(node_id) or self.static_peers.get(node_id) or self.learned.get(node_id)
        )

    @property
    def peers(self) -> dict[int, str]:
        """Every metadata node we know an endpoint for (voters or not)."""
        replicated = getattr(self.sm, "peers", None) or {}
        return {**self.learned, **self.static_peers, **replicated}

    def voters(self) -> dict[int, str | None]:
        """The current voter set (the last configuration in the log) with endpoints."""
        return {v: self.endpoint_of(v) for v in self.raft.voters}

    def propose_conf_change(self, op: str, node_id: int, done: Done) -> None:
        """Add or remove one voter; ``done`` gets {"voters": [...], "index": i} once
        the change is committed, or a DfsError (on the loop)."""

        def go() -> None:
            try:
                index, term = self.raft.propose_conf_change(op, node_id)
            except NotLeader:
                done(self.not_leader())
                return
            except ProposalDropped as exc:
                done(DfsError(errors.UNAVAILABLE, f"membership change refused for now: {exc}"))
                return
            except ValueError as exc:
                done(DfsError("EINVAL", str(exc)))
                return
            self.waiting[index] = _Waiting(term, done)

        self._on_loop(go)

    def leader_endpoint(self) -> str | None:
        return self.endpoint_of(self.raft.leader_id)

    def not_leader(self, why: str = "not the metadata leader") -> DfsError:
        return DfsError(errors.NOT_LEADER, why, leader=self.leader_endpoint())

    def start(self) -> RaftDriver:
        """Hook into the RPC loop (call before the server starts)."""
        self.server.every(self.tick_interval, self._tick)
        self.server.after_poll.append(self._flush)
        return self

    def stop(self) -> None:
        """After the server's loop has stopped."""
        self.sender.close()
        self.storage.close()

    # ------------------------------------------------------------ on the loop

    def _tick(self) -> None:
        now = time.monotonic()
        n = 1
        if self.raft.role == Role.LEADER:
            # The lease is counted in the leader's ticks, so they must not fall
            # behind real time when the loop stalls: run the ticks we missed
            # (at most an election timeout's worth: by then any lease is over).
            # A follower ticks once per timer, late if anything: it refuses
            # votes a little longer, never shorter, than the leader assumes.
            n = int((now - self._tick_clock) / self.tick_interval)
            if n > self.raft.cfg.election_ticks:
                n = self.raft.cfg.election_ticks
                self._tick_clock = now
            else:
                self._tick_clock += n * self.tick_interval
            n = max(n, 1)
        else:
            self._tick_clock = now
        for _ in range(n):
            self.raft.tick()
            if self.raft.role != Role.LEADER:
                break  # stepped down (check-quorum): a follower does not catch up
        for hook in self.tick_hooks:
            try:
                hook(now)
            except Exception:
                log.exception("tick hook failed")

    def _flush(self) -> None:
        """After each poll: start batched reads, then run every Ready."""
        self._start_reads()
        while self.raft.has_ready():
            self._process_ready()

    def _propose(self, data: bytes, done: Done) -> None:
        try:
            index, term = self.raft.propose(data)
        except NotLeader:
            done(self.not_leader())
            return
        except ProposalDropped as exc:
            done(DfsError(errors.NOT_LEADER, f"leader busy: {exc}", leader=None))
            return
        self.waiting[index] = _Waiting(term, done)

    def _start_reads(self) -> None:
        """One ReadIndex round serves every read that arrived meanwhile: while a round
        is in flight, new reads wait for the next one, so under load the cost of a
        round (a heartbeat to every follower) is shared by many reads."""
        if not self._read_batch:
            return
        now = time.monotonic()
        if self.reads and now - self._read_started < READ_ROUND_PATIENCE:
            return
        self._read_started = now
        self._read_ctx += 1
        ctx = self._read_ctx.to_bytes(8, "big")
        self.reads[ctx], self._read_batch = self._read_batch, []
        try:
            self.raft.read_index(ctx)
        except NotLeader:
            for _, done in self.reads.pop(ctx):
                done(self.not_leader())

    def _process_ready(self) -> None:
        rd = self.raft.ready()
        hs = rd.hard_state
        # a commit index alone need not be fsync'd (it is recomputed after a
        # crash); entries, snapshots, term and vote must (etcd's MustSync). Nothing
        # depends on it being on disk, so it is written after clients are answered.
        sync = (
            bool(rd.entries)
            or rd.snapshot is not None
            or (hs is not None and (hs.term, hs.vote) != self._persisted_tv)
        )
        if self._may_send_before_persist(rd):
            # a leader: its new entries go out while its own fsync runs (Raft thesis
            # 10.2.1), and what is already committed (durable on a majority) is
            # applied and answered before that fsync, not after it; its other
            # messages (commit index, heartbeats) wait until clients are answered
            if rd.entries:
                self._send(rd.messages)
            self._apply_ready(rd)
            if sync:
                self._save(rd)
            if not rd.entries:
                self._send(rd.messages)
        else:
            if sync:
                self._save(rd)
            self._send(rd.messages)  # must follow persistence (votes, a follower's acks)
            self._apply_ready(rd)
        if hs is not None and not sync:
            self.storage.save(hs, [], None, sync=False)
        if rd.soft_state is not None:
            self._role_changed(rd.soft_state.role)
        self.raft.advance(rd)
        self._maybe_snapshot()

    def _save(self, rd: Any) -> None:
        """Persist a Ready's hard state, entries and snapshot with one fsync."""
        hs = rd.hard_state
        self.storage.save(hs, rd.entries, rd.snapshot, rd.install_snapshot)
        if hs is not None:
            self._persisted_tv = (hs.term, hs.vote)

    def _apply_ready(self, rd: Any) -> None:
        """Restore a snapshot from the leader, apply committed entries, serve reads."""
        if rd.install_snapshot and rd.snapshot is not None:
            self.sm.restore(rd.snapshot.data)
            self.last_snapshot = rd.snapshot.index
        for entry in rd.committed_entries:
            self._apply(entry)
        for rs in rd.read_states:
            for fn, done in self.reads.pop(rs.ctx, []):
                try:
                    done(fn())
                except DfsError as exc:
                    done(exc)

    def _may_send_before_persist(self, rd: Any) -> bool:
        """True when nothing in this Ready's messages depends on unsaved state: we
        lead in a term (and vote) already on disk, and no snapshot is pending. The
        core counts the leader's own entries toward commit only once persisted."""
        if self.raft.role != Role.LEADER or rd.snapshot is not None:
            return False
        hs = rd.hard_state
        return hs is None or (hs.term, hs.vote) == self._persisted_tv

    def _send(self, messages: list[Message]) -> None:
        """Each peer's messages in as few raft.msg requests as RAFT_MSG_BYTES allows."""
        by_peer: dict[int, list[list[Any]]] = defaultdict(lambda: [[]])
        held: dict[int, int] = defaultdict(int)  # entry bytes in the peer's last group
        for m in messages:
            n = _payload_bytes(m)
            groups = by_peer[m.to]
            if groups[-1] and held[m.to] + n > RAFT_MSG_BYTES:
                groups.append([])
                held[m.to] = 0
            groups[-1].append(m.to_wire())
            held[m.to] += n
        me = self.endpoint_of(self.id)
        sender: dict[str, Any] = {"from": self.id}  # who we are, in every message
        if me is not None:
            sender["ep"] = me
        if self.server.stream_port is not None:
            sender["sp"] = self.server.stream_port
            sender["st"] = self.server.stream_token.decode()
        for peer, groups in by_peer.items():
            ep = self.endpoint_of(peer)
            if ep is None:
                continue
            for msgs in groups:  # one-way: Raft has its own acknowledgements and retries
                self.sender.send(ep, "raft.msg", {**sender, "msgs": msgs})

    def _apply(self, entry: Any) -> None:
        waiting = self.waiting.pop(entry.index, None)
        if entry.type == EntryType.CONF and waiting is not None and waiting.term == entry.term:
            cc = ConfChange.decode(entry.data)
            log.info("membership change committed at %d: voters %s", entry.index, cc.voters)
            waiting.done({"ok": True, "index": entry.index, "voters": list(cc.voters)})
            return
        if entry.type != EntryType.NORMAL or not entry.data:
            if waiting is not None:
                waiting.done(self.not_leader("leadership changed"))
            return
        try:
            result = self.sm.apply(entry.data)
        except Exception as exc:  # state machines validate input; this is a bug
            log.exception("apply failed at index %d", entry.index)
            result = DfsError("EIO", f"apply failed: {exc}")
        if waiting is None:
            return
        if waiting.term != entry.term:  # another leader's entry took our index
            waiting.done(self.not_leader("leadership changed"))
        else:
            waiting.done(result)

    def _role_changed(self, role: Role) -> None:
        if role != Role.LEADER:
            for w in self.waiting.values():
                w.done(self.not_leader("leadership changed"))
            self.waiting.clear()
            for calls in self.reads.values():
                for _, done in calls:
                    done(self.not_leader("leadership changed"))
            self.reads.clear()
        else:
            log.info("node %d is the leader (term %d)", self.id, self.raft.term)
        for hook in self.role_hooks:
            hook(role)

    def _maybe_snapshot(self) -> None:
        if self.raft.applied - self.last_snapshot < self.snapshot_every:
            return
        index = self.raft.applied
        self.raft.compact(index, self.sm.snapshot())
        self.last_snapshot = index

    def status(self) -> dict[str, Any]:
        """Raft status with enums as names, so msgpack can carry it."""
        st = {
            k: (v.name.lower() if hasattr(v, "name") else v)
            for k, v in self.raft.status().items()
            if isinstance(v, (int, str, float, bool)) or hasattr(v, "name")
        }
        st["voters"] = list(self.raft.voters)
        # how this node's messages reach each peer now: "stream" (framed TCP), "zmq",
        # or "none" (not one sent yet)
        st["transport"] = {
            str(peer): self.sender.transport(ep)
            for peer in self.raft.voters
            if peer != self.id and (ep := self.endpoint_of(peer)) is not None
        }
        return st


def _payload_bytes(m: Message) -> int:
    """About how many bytes a message's entries (or snapshot chunk) take."""
    entries = getattr(m, "entries", None) or ()
    return sum(len(e.data) for e in entries) + len(getattr(m, "data", b"") or b"")


BOOTSTRAP_FILE = "bootstrap.json"


def _bootstrap_voters(data_dir: Path, peers: dict[int, str], join: bool) -> tuple[int, ...]:
    """The founding voter set, fixed on a node's first start and kept in
    ``bootstrap.json``: later starts ignore --peers for it, so a restart with
    today's (longer) --peers never gives the core a wrong base configuration.
    A node that joins (``join``) has none: it learns the configuration from
    the leader. Data written before the file existed uses --peers, as it did."""
    import json

    path = data_dir / BOOTSTRAP_FILE
    try:
        return tuple(sorted(int(v) for v in json.loads(path.read_text())["voters"]))
    except FileNotFoundError:
        pass
    voters = () if join else tuple(sorted(peers))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"voters": list(voters)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return voters
