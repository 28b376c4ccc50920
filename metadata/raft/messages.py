"""Raft value types and wire messages.

Everything here is a plain dataclass. Messages convert to and from lists of
msgpack-friendly types (int, bool, bytes, str, list) with ``to_wire`` /
``message_from_wire`` so that any transport (ZeroMQ + msgpack) can carry them
without knowing Raft.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import IntEnum
from operator import attrgetter
from typing import Any, ClassVar

NONE = 0  # "no node": node ids are positive ints


class EntryType(IntEnum):
    NORMAL = 0
    NOOP = 1  # appended by every new leader so it can commit in its own term
    CONF = 2  # data is an encoded ConfChange


class ConfChangeType(IntEnum):
    ADD = 0
    REMOVE = 1


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate wire size, used for the per-message byte budget."""
        return len(self.data) + 24

    def to_wire(self) -> list[Any]:
        return [self.index, self.term, int(self.type), self.data]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Entry:
        if type(w) is not list or len(w) != 4:
            raise ValueError("an entry is [index, term, type, data]")
        etype = _ENTRY_TYPES.get(w[2]) if type(w[2]) is int else None
        if etype is None:
            raise ValueError(f"unknown entry type {w[2]!r}")
        return cls(_int(w[0]), _int(w[1]), etype, _bytes(w[3]))


def _int(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"expected a non-negative int, got {type(v).__name__}")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, (bytes, bytearray, memoryview)):
        raise ValueError(f"expected bytes, got {type(v).__name__}")
    return bytes(v)


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-server membership change; carries the full resulting voter set
    so that a node can learn its configuration from the log alone."""

    op: ConfChangeType
    node_id: int
    voters: tuple[int, ...]

    def encode(self) -> bytes:
        return struct.pack(
            f"<BQI{len(self.voters)}Q", self.op, self.node_id, len(self.voters), *self.voters
        )

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        op, node_id, n = struct.unpack_from("<BQI", data)
        voters = struct.unpack_from(f"<{n}Q", data, 13)
        return cls(ConfChangeType(op), node_id, tuple(voters))


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message of the same Ready is sent."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the application may want to watch (who leads)."""

    leader_id: int
    role: Role


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State machine image at ``index``; ``voters`` is the configuration there."""

    index: int
    term: int
    voters: tuple[int, ...]
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied
    ``index`` (the core only hands these out when that holds)."""

    ctx: bytes
    index: int


@dataclass(slots=True)
class PersistentState:
    """What storage gives back on restart."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def apply_save(
        self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None
    ) -> None:
        """The semantics of one save, shared by every storage implementation:
        snapshot first (keeping the log suffix that follows a matching entry),
        then hard state, then entries (an entry at an index we already hold
        truncates the suffix from there)."""
        if snapshot is not None:
            self.apply_snapshot(snapshot)
        if hard_state is not None:
            self.hard_state = hard_state
        for e in entries:
            self.append_entry(e)

    def apply_snapshot(self, snap: Snapshot) -> None:
        if self.snapshot is not None and snap.index <= self.snapshot.index:
            return
        keep: list[Entry] = []
        for i, e in enumerate(self.entries):
            if e.index == snap.index:
                if e.term == snap.term:
                    keep = self.entries[i + 1 :]
                break
        self.entries = keep
        self.snapshot = snap

    def append_entry(self, e: Entry) -> None:
        base = self.snapshot.index if self.snapshot else 0
        if e.index <= base:
            return
        if self.entries:
            first = self.entries[0].index
            if e.index <= self.entries[-1].index:
                del self.entries[e.index - first :]
            elif e.index != self.entries[-1].index + 1:
                raise ValueError(f"gap in log: {self.entries[-1].index} then {e.index}")
        elif e.index != base + 1:
            raise ValueError(f"gap in log: snapshot {base} then {e.index}")
        self.entries.append(e)

    def copy(self) -> PersistentState:
        return PersistentState(self.hard_state, self.snapshot, list(self.entries))


# --------------------------------------------------------------------------- messages

_REGISTRY: dict[str, type[Message]] = {}


@dataclass(slots=True)
class Message:
    """Base of every Raft message. ``term`` is the sender's term (for pre-votes
    the term the sender would campaign in)."""

    KIND: ClassVar[str] = ""
    frm: int
    to: int
    term: int

    def to_wire(self) -> list[Any]:
        """``[kind, frm, to, term, *the other fields in declaration order]``:
        positional, so a message costs one list on the wire, not a map of names."""
        shape = _shape(type(self))
        out = [self.KIND, *shape.get(self)]
        if shape.entries_at:
            out[shape.entries_at] = [e.to_wire() for e in out[shape.entries_at]]
        return out

    @classmethod
    def from_wire(cls, w: list[Any]) -> Message:
        return message_from_wire(w)


@dataclass(frozen=True, slots=True)
class _Shape:
    """How one message class travels: its fields' getter and input checks."""

    cls: type[Message]
    get: Callable[[Message], tuple[Any, ...]]
    checks: tuple[Callable[[Any], Any], ...]
    ints: tuple[int, ...]  # positions (after the kind) of plain int fields
    others: tuple[int, ...]  # the other positions
    entries_at: int  # position of ``entries`` in the wire list (0: none)


_SHAPES: dict[type, _Shape] = {}
_ENTRY_TYPES = {int(t): t for t in EntryType}


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise ValueError(f"expected a bool, got {type(v).__name__}")
    return v


def _entries(v: Any) -> list[Entry]:
    if type(v) is not list:
        raise ValueError("entries must be a list")
    return [Entry.from_wire(e) for e in v]


def _voters(v: Any) -> tuple[int, ...]:
    if type(v) is not list and type(v) is not tuple:
        raise ValueError("voters must be a list")
    return tuple(_int(x) for x in v)


def _shape(cls: type) -> _Shape:
    """Computed once per class: ``dataclasses.fields`` is too slow per message."""
    got = _SHAPES.get(cls)
    if got is None:
        names = [f.name for f in fields(cls)]
        by_type = {"int": _int, "bool": _bool, "bytes": _bytes}
        checks = tuple(
            _entries if n == "entries" else _voters if n == "voters" else by_type[f.type]
            for n, f in zip(names, fields(cls), strict=True)
        )
        ints = tuple(i for i, c in enumerate(checks) if c is _int)
        others = tuple(i for i, c in enumerate(checks) if c is not _int)
        entries_at = names.index("entries") + 1 if "entries" in names else 0
        got = _SHAPES[cls] = _Shape(cls, attrgetter(*names), checks, ints, others, entries_at)
    return got


def message_from_wire(w: list[Any]) -> Message:
    """Rebuild a message from its wire list; raises ValueError on bad input."""
    if type(w) is not list or not w or type(w[0]) is not str:
        raise ValueError("malformed raft message: not [kind, ...]")
    cls = _REGISTRY.get(w[0])
    if cls is None:
        raise ValueError(f"malformed raft message: unknown kind {w[0][:20]!r}")
    shape = _shape(cls)
    if len(w) != len(shape.checks) + 1:
        raise ValueError(f"malformed raft message: {w[0]} with {len(w) - 1} fields")
    args = w[1:]
    for i in shape.ints:  # most fields: checked inline, no call per field
        v = args[i]
        if type(v) is not int or v < 0:
            _int(v)
    for i in shape.others:
        args[i] = shape.checks[i](args[i])
    return cls(*args)


@dataclass(slots=True)
class VoteRequest(Message):
    KIND: ClassVar[str] = "vote"
    last_index: int = 0
    last_term: int = 0
    pre_vote: bool = False
    transfer: bool = False  # leadership transfer: voters skip the leader-lease check


@dataclass(slots=True)
class VoteResponse(Message):
    KIND: ClassVar[str] = "vote_resp"
    granted: bool = False
    pre_vote: bool = False


@dataclass(slots=True)
class AppendEntries(Message):
    KIND: ClassVar[str] = "append"
    prev_index: int = 0
    prev_term: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0


@dataclass(slots=True)
class AppendResponse(Message):
    """On success ``index`` is the last index known to match the leader; on
    reject it is the rejected prev_index and (hint_index, hint_term) let the
    leader skip a whole term of conflicting entries at once."""

    KIND: ClassVar[str] = "append_resp"
    index: int = 0
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(slots=True)
class Heartbeat(Message):
    KIND: ClassVar[str] = "hb"
    commit: int = 0
    read_seq: int = 0  # confirms leadership for ReadIndex requests up to this seq
    sent_tick: int = 0  # the leader's tick count when it sent this (lease reads)


@dataclass(slots=True)
class HeartbeatResponse(Message):
    KIND: ClassVar[str] = "hb_resp"
    read_seq: int = 0
    sent_tick: int = 0  # echoed from the heartbeat: starts the leader's lease


@dataclass(slots=True)
class InstallSnapshot(Message):
    """One chunk of a snapshot; the follower reassembles chunks in order."""

    KIND: ClassVar[str] = "snap"
    index: int = 0
    snap_term: int = 0
    voters: tuple[int, ...] = ()
    offset: int = 0
    data: bytes = b""
    done: bool = False


@dataclass(slots=True)
class SnapshotResponse(Message):
    """Ack of a chunk: ``offset`` is how many bytes the follower holds; with
    ``reject`` the chunk did not fit and the leader resends from ``offset``."""

    KIND: ClassVar[str] = "snap_resp"
    index: int = 0
    offset: int = 0
    reject: bool = False


@dataclass(slots=True)
class TimeoutNow(Message):
    KIND: ClassVar[str] = "timeout_now"


@dataclass(slots=True)
class ReadIndexRequest(Message):
    KIND: ClassVar[str] = "read_req"
    ctx: bytes = b""


@dataclass(slots=True)
class ReadIndexResponse(Message):
    KIND: ClassVar[str] = "read_resp"
    ctx: bytes = b""
    index: int = 0


for _cls in (
    VoteRequest,
    VoteResponse,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
):
    _REGISTRY[_cls.KIND] = _cls
