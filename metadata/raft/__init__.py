"""Raft for the dfs metadata service.

- ``core``      the pure protocol (``RaftNode``): no I/O, no clock, no threads.
- ``messages``  entries, hard state, snapshots and wire messages (``to_wire`` /
                ``message_from_wire``: msgpack-friendly lists).
- ``storage``   the durable write-ahead log + snapshot files (``RaftStorage``).
- ``driver``    runs a core with storage and the ZeroMQ transport.

How a driver must run the core
==============================

Inputs, in any order, on one thread::

    node.tick()                      every tick interval (e.g. 30 ms; election = 10 ticks)
    node.step(message_from_wire(d))  for every message from a peer
    node.propose(data)               -> (index, term), or NotLeader(leader_hint) /
                                        ProposalDropped (transfer or conf change underway)
    node.read_index(ctx)             linearizable read request (ctx: unique bytes)
    node.propose_conf_change("add" | "remove", node_id), node.transfer_leadership(to)

Then, while ``node.has_ready()``::

    rd = node.ready()
    # 1. persist, with ONE fsync for the whole Ready (group commit):
    storage.save(rd.hard_state, rd.entries, rd.snapshot, rd.install_snapshot)
    #    (entries may start below the last stored index: that truncates the
    #    stored suffix; a snapshot comes before the entries that follow it)
    # 2. only now send rd.messages (m.to_wire() to peer m.to); a vote or an
    #    append acknowledgement must never leave before it is on disk
    # 3. if rd.install_snapshot: state_machine.restore(rd.snapshot.data)
    # 4. apply rd.committed_entries in order (EntryType.NORMAL carries client
    #    data; NOOP and CONF entries advance the index but hold no command);
    #    a proposal (index, term) succeeded iff the entry at index has that term
    # 5. serve rd.read_states: each ctx may now read the state machine (the core
    #    hands a ReadState out only once its index is applied); ignore contexts
    #    you are not waiting for (a forwarded answer can be duplicated)
    # 6. node.advance(rd)

Only one Ready may be outstanding: ``advance`` it before the next ``ready``;
``tick``/``step``/``propose`` in between are fine (their output goes in the
next Ready). The leader counts its own entries toward commitment only after
``advance``, so a commit index is always "durable on a majority".

Allowed refinements (metadata.raft.driver uses them all; the simulator checks
them): a leader whose term and vote are already on disk may send its messages
before its own fsync (Raft thesis 10.2.1), and apply its committed entries and
serve its read states before that fsync too (they are durable on a majority);
a Ready that only moves the commit index need not be fsync'd; while
``lease_read_index()`` gives an index the node has applied, a read may be
served at once, without a Ready.

Lease reads (``RaftConfig(lease_reads=True)``): while the leader holds its
lease, ``read_index`` is answered in the next Ready without a heartbeat round.
The lease is counted in ticks, so the driver's ticks must follow real time: a
leader must not tick slower than real time (after a stalled loop, run the
ticks it missed before serving reads), a follower must not tick faster (never
catch up: it would cut short the votes it refuses). ``lease_drift_ticks``
covers the rest (see RaftConfig); metadata.raft.driver uses half an election
timeout.

Snapshots: after applying, call ``node.compact(applied_index,
state_machine.snapshot())`` now and then; the snapshot comes back in a later
Ready for storage (``install_snapshot`` False: do not restore it) and is kept
to send, in chunks, to followers that fall behind. On restart::

    state = storage.load()
    if state.snapshot: state_machine.restore(state.snapshot.data)
    node = RaftNode(my_id, RaftConfig(peers=(1, 2, 3)), state, random.Random(),
                    applied=state.snapshot.index if state.snapshot else 0)

Committed entries after the snapshot are handed out again for the in-memory
state machine to rebuild. A node that joins an existing cluster starts with
``RaftConfig(peers=())`` and learns its configuration from the leader.

Testing: tests/test_raft_core.py (scripted), tests/test_raft_sim.py (the
deterministic simulator, ``python -m tests.raftsim SEED --verbose``).
"""

from .core import NotLeader, ProposalDropped, RaftConfig, RaftError, RaftNode, Ready
from .messages import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Message,
    PersistentState,
    ReadState,
    Role,
    Snapshot,
    SoftState,
    message_from_wire,
)

__all__ = [
    "ConfChange",
    "ConfChangeType",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "NotLeader",
    "PersistentState",
    "ProposalDropped",
    "RaftConfig",
    "RaftError",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SoftState",
    "message_from_wire",
]
