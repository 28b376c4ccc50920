"""Focused, scripted tests of the pure Raft core (metadata.raft.core)."""

from __future__ import annotations

import dataclasses
import random

import msgpack
import pytest

from metadata.raft.core import NotLeader, ProposalDropped, RaftConfig, RaftNode
from metadata.raft.messages import (
    AppendEntries,
    AppendResponse,
    ConfChangeType,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    Role,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    message_from_wire,
)
from tests.raftsim.broken import CommitOldTermNode
from tests.raftsim.cluster import Cluster


def settle(c: Cluster, ticks: int = 100) -> RaftNode:
    for _ in range(ticks):
        c.tick()
        ld = c.leader()
        if ld is not None and all(c.nodes[v].leader_id == ld.id for v in ld.voters if v in c.nodes):
            return ld
    raise AssertionError("no stable leader")


# ---------------------------------------------------------------- elections


def test_election_by_timeout_and_noop_commit() -> None:
    c = Cluster((1, 2, 3))
    ld = settle(c)
    leaders = [n for n in c.nodes.values() if n.role == Role.LEADER]
    assert leaders == [ld]
    c.tick(times=2)
    for i, n in c.nodes.items():
        assert n.term == ld.term and n.commit_index == 1
        assert [e.type for e in c.applied[i]] == [EntryType.NOOP]


def test_election_timeout_is_randomized_in_range() -> None:
    cfg = RaftConfig(peers=(1, 2, 3), election_ticks=10)
    seen = set()
    for seed in range(50):
        n = RaftNode(1, cfg, None, random.Random(seed))
        assert 10 <= n.randomized_timeout < 20
        seen.add(n.randomized_timeout)
    assert len(seen) > 3


def test_vote_is_persisted_before_the_response_is_sent() -> None:
    n = RaftNode(2, RaftConfig(peers=(1, 2, 3)), None, random.Random(1))
    n.step(VoteRequest(1, 2, 5, last_index=0, last_term=0))
    rd = n.ready()
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (5, 1)
    assert [type(m) for m in rd.messages] == [VoteResponse] and rd.messages[0].granted
    n.advance(rd)
    n.step(VoteRequest(3, 2, 5, last_index=0, last_term=0))  # same term, other candidate
    assert not n.ready().messages[0].granted


def test_pre_vote_keeps_a_rejoining_node_from_disrupting() -> None:
    c = Cluster((1, 2, 3), RaftConfig(peers=(1, 2, 3), pre_vote=True, check_quorum=True))
    ld = c.elect(1)
    term = ld.term
    c.isolate(3)
    c.tick(times=100)
    assert c.nodes[3].term == term  # pre-votes failed: no term inflation
    assert c.nodes[3].role == Role.PRE_CANDIDATE
    c.heal()
    c.tick(times=5)
    assert c.leader() is ld and ld.term == term
    assert c.nodes[3].leader_id == 1


def test_without_pre_vote_a_rejoining_node_disrupts() -> None:
    """The contrast to the test above: what pre-vote is for."""
    c = Cluster((1, 2, 3), RaftConfig(peers=(1, 2, 3), pre_vote=False, check_quorum=False))
    ld = c.elect(1)
    term = ld.term
    c.isolate(3)
    c.tick(times=100)
    assert c.nodes[3].term > term + 2
    c.heal()
    c.tick(times=30)
    assert c.nodes[1].term > term  # the old leader was deposed by the higher term


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    c = Cluster((1, 2, 3))
    ld = c.elect(1)
    c.isolate(1)
    c.tick([1], times=2 * c.cfg.election_ticks)
    assert ld.role == Role.FOLLOWER
    c.tick([2, 3], times=60)
    new = c.leader()
    assert new is not None and new.id != 1 and new.term > ld.term


def test_leader_lease_ignores_vote_requests_while_leader_is_alive() -> None:
    c = Cluster((1, 2, 3))
    c.elect(1)
    f = c.nodes[2]
    f.step(VoteRequest(3, 2, f.term + 1, last_index=100, last_term=100))
    assert f.term == c.nodes[1].term and not f.has_ready()


# ---------------------------------------------------------------- replication


def test_replication_applies_in_order_everywhere() -> None:
    c = Cluster((1, 2, 3))
    ld = c.elect(1)
    for i in range(20):
        ld.propose(b"v%d" % i)
    c.deliver()
    c.tick(times=2)
    for i in (1, 2, 3):
        assert c.data_applied(i) == [b"v%d" % k for k in range(20)]


def test_propose_on_follower_raises_not_leader_with_hint() -> None:
    c = Cluster((1, 2, 3))
    c.elect(1)
    with pytest.raises(NotLeader) as ei:
        c.nodes[2].propose(b"x")
    assert ei.value.leader_hint == 1


def test_batching_respects_max_bytes_and_pipelining_max_inflight() -> None:
    cfg = RaftConfig(peers=(1, 2, 3), max_append_bytes=200, max_inflight=3)
    c = Cluster((1, 2, 3), cfg)
    ld = c.elect(1)
    c.tick(times=2)
    for _ in range(100):
        ld.propose(bytes(50))
    c.sent.clear()
    c.process(1)
    appends = [m for m in c.sent if isinstance(m, AppendEntries) and m.to == 2]
    assert len(appends) == 3  # pipelined up to max_inflight, then paused
    for m in appends:
        assert len(m.entries) > 1 and sum(e.size() for e in m.entries) <= 200
    assert appends[1].prev_index == appends[0].entries[-1].index  # optimistic next
    c.deliver()
    c.tick(times=2)
    assert all(len(c.data_applied(i)) == 100 for i in (1, 2, 3))


def test_conflicting_follower_log_backs_off_by_term_not_by_entry() -> None:
    c = Cluster((1, 2, 3))
    old = c.elect(1)
    c.tick(times=2)
    c.isolate(1)
    for i in range(50):  # never committed: only the isolated leader has them
        old.propose(b"lost%d" % i)
    c.process(1)
    c.tick([1], times=2 * c.cfg.election_ticks)  # check-quorum: 1 steps down
    for _ in range(100):
        c.tick([2, 3])
        new = c.leader()
        if new is not None and new.id != 1:
            break
    assert new is not None and new.id != 1
    for i in range(30):
        new.propose(b"kept%d" % i)
    c.deliver()
    new.transfer_leadership(5 - new.id)  # a leader whose nextIndex for 1 starts at its end
    c.deliver()
    new = c.nodes[5 - new.id]
    assert new.role == Role.LEADER
    c.heal()
    c.sent.clear()
    c.tick(times=3)
    rejects = [m for m in c.sent if isinstance(m, AppendResponse) and m.frm == 1 and m.reject]
    assert 1 <= len(rejects) <= 2
    c.tick(times=3)
    assert c.data_applied(1) == c.data_applied(new.id)
    assert b"lost0" not in c.data_applied(1) and b"kept29" in c.data_applied(1)


@pytest.mark.parametrize(("cls", "expect_commit"), [(RaftNode, False), (CommitOldTermNode, True)])
def test_commit_rule_counts_only_entries_of_the_current_term(
    cls: type[RaftNode], expect_commit: bool
) -> None:
    """Raft paper figure 8: an old-term entry on a majority is not committed by
    counting replicas; the broken core does commit it."""
    cfg = RaftConfig(peers=(1, 2, 3), max_append_bytes=1)  # one entry per message
    c = Cluster((1, 2, 3), cfg, node_cls=cls)
    ld = c.elect(1)
    c.tick(times=2)
    c.isolate(1)
    idx, old_term = ld.propose(b"old-term")  # reaches no one
    c.process(1)
    c.crash(2)
    c.tick([1, 3], times=2 * cfg.election_ticks)  # 1 steps down, 3's lease runs out
    c.heal()
    ld.campaign()  # re-elected by 3 in a newer term; appends its no-op after idx

    def hold_back_noop(m: object) -> bool:
        return not (
            isinstance(m, AppendEntries)
            and any(e.term > old_term for e in m.entries)
            and m.to in c.nodes
            and c.nodes[m.to].last_index >= idx
        )

    c.deliver(only=hold_back_noop)
    assert ld.role == Role.LEADER and ld.term > old_term
    assert c.nodes[3].log.term(idx) == old_term  # on a majority now: 1 and 3
    assert (ld.commit_index >= idx) == expect_commit


# ---------------------------------------------------------------- snapshots


def test_snapshot_is_sent_in_chunks_and_installed() -> None:
    cfg = RaftConfig(peers=(1, 2, 3), snapshot_chunk_bytes=100, max_inflight=4)
    c = Cluster((1, 2, 3), cfg)
    ld = c.elect(1)
    c.isolate(3)
    for i in range(30):
        ld.propose(b"v%d" % i)
    c.deliver()
    c.tick([1, 2], times=2)
    state = bytes(range(256)) * 4  # 1024 bytes -> 11 chunks
    ld.compact(ld.applied, state)
    rd_snap = [ld.ready()]
    assert rd_snap[0].snapshot is not None and not rd_snap[0].install_snapshot
    c._persist(1, rd_snap[0])
    ld.advance(rd_snap[0])
    assert ld.log.first_index() == ld.applied + 1
    c.heal()
    c.sent.clear()
    c.tick(times=6)
    chunks = [m for m in c.sent if isinstance(m, InstallSnapshot) and m.to == 3]
    assert len({m.offset for m in chunks}) == 11 and sum(m.done for m in chunks) >= 1
    assert any(isinstance(m, SnapshotResponse) for m in c.sent)
    assert c.snapshots[3] == state
    assert c.nodes[3].log.snapshot is not None and c.nodes[3].log.snapshot.data == state
    ld.propose(b"after")
    c.deliver()
    c.tick(times=2)
    assert c.data_applied(3) == [b"after"]  # entries before the snapshot came in it
    assert c.nodes[3].applied == ld.applied


def test_snapshot_chunks_survive_loss_and_reordering() -> None:
    cfg = RaftConfig(peers=(1, 2, 3), snapshot_chunk_bytes=10, max_inflight=3)
    c = Cluster((1, 2, 3), cfg)
    ld = c.elect(1)
    c.isolate(3)
    for i in range(5):
        ld.propose(b"x%d" % i)
    c.deliver()
    c.tick([1, 2], times=2)
    ld.compact(ld.applied, b"S" * 95)
    c.process(1)
    c.heal()
    rng = random.Random(7)
    for _ in range(300):
        for n in c.nodes.values():
            n.tick()
        c.process_all()
        batch, c.queue = c.queue, []
        rng.shuffle(batch)
        for m in batch:
            if rng.random() < 0.3:
                continue  # lost
            c.nodes[m.to].step(m)
            c.process(m.to)
        if c.nodes[3].log.snapshot is not None:
            break
    assert c.nodes[3].log.snapshot is not None and c.snapshots[3] == b"S" * 95


# ---------------------------------------------------------------- membership


def test_add_a_node_then_remove_the_leader() -> None:
    c = Cluster((1, 2, 3))
    ld = c.elect(1)
    c.tick(times=2)
    ld.propose(b"before")
    c.add(4, RaftConfig(peers=()))  # joins empty, learns its configuration from the log
    ld.propose_conf_change("add", 4)
    assert ld.voters == (1, 2, 3, 4)  # effective when appended
    with pytest.raises(ProposalDropped):
        ld.propose_conf_change(ConfChangeType.REMOVE, 2)  # one change at a time
    c.deliver()
    c.tick(times=3)
    for n in c.nodes.values():
        assert n.voters == (1, 2, 3, 4)
    assert c.data_applied(4) == [b"before"]

    ld.propose_conf_change("remove", 1)
    c.deliver()
    c.tick(times=3)
    assert ld.role == Role.FOLLOWER  # stepped down once its removal committed
    new = settle(c)
    assert new.id != 1 and new.voters == (2, 3, 4)
    new.propose(b"after")
    c.deliver()
    c.tick(times=2)
    assert c.data_applied(4)[-1] == b"after"
    assert c.data_applied(1) == [b"before"]  # the removed node no longer hears


def test_conf_change_refused_before_leader_commits_in_its_term() -> None:
    c = Cluster((1, 2, 3))
    n1 = c.nodes[1]
    n1.campaign()
    c.deliver(only=lambda m: not isinstance(m, AppendEntries))  # elected, no-op not replicated
    assert n1.role == Role.LEADER
    with pytest.raises(ProposalDropped):
        n1.propose_conf_change("add", 4)


# ---------------------------------------------------------------- transfer


def test_leadership_transfer() -> None:
    c = Cluster((1, 2, 3))
    ld = c.elect(1)
    term = ld.term
    c.isolate(2)
    ld.propose(b"x")
    c.deliver()
    c.heal()
    c.sent.clear()
    ld.transfer_leadership(2)  # 2 lags: it is caught up first
    with pytest.raises(ProposalDropped):
        ld.propose(b"refused during the transfer")
    c.deliver()
    assert any(isinstance(m, TimeoutNow) and m.to == 2 for m in c.sent)
    assert c.nodes[2].role == Role.LEADER and c.nodes[2].term == term + 1
    assert ld.role == Role.FOLLOWER


def test_repeated_transfer_resends_a_lost_timeout_now() -> None:
    c = Cluster((1, 2, 3))
    ld = c.elect(1)
    c.tick(times=2)
    ld.transfer_leadership(2)
    c.deliver(only=lambda m: not isinstance(m, TimeoutNow))  # lost
    assert ld.role == Role.LEADER
    ld.transfer_leadership(2)
    c.deliver()
    assert c.nodes[2].role == Role.LEADER


def test_transfer_aborts_if_target_is_unreachable() -> None:
    c = Cluster((1, 2, 3))
    ld = c.elect(1)
    c.isolate(3)
    ld.transfer_leadership(3)
    c.tick([1, 2], times=c.cfg.election_ticks + 1)
    assert ld.role == Role.LEADER
    ld.propose(b"accepted again")


# ---------------------------------------------------------------- reads


def test_read_index_on_leader_needs_a_heartbeat_quorum() -> None:
    c = Cluster((1, 2, 3))
    ld = c.elect(1)
    c.tick(times=2)
    ld.propose(b"w")
    c.deliver()
    c.tick(times=1)
    ld.read_index(b"ctx1")
    c.process(1)
    assert c.reads[1] == []  # not before a quorum answered the heartbeat round
    c.deliver()
    assert [(r.ctx, r.index) for r in c.reads[1]] == [(b"ctx1", ld.commit_index)]
    assert ld.applied >= c.reads[1][0].index


def test_read_index_from_follower_is_forwarded() -> None:
    c = Cluster((1, 2, 3))
    ld = c.elect(1)
    c.tick(times=2)
    ld.propose(b"w")
    c.deliver()
    c.sent.clear()
    c.nodes[3].read_index(b"f")
    c.deliver()
    assert any(isinstance(m, ReadIndexRequest) for m in c.sent)
    assert any(isinstance(m, ReadIndexResponse) for m in c.sent)
    assert [r.ctx for r in c.reads[3]] == [b"f"]
    assert c.reads[3][0].index <= c.nodes[3].applied


def test_deposed_leader_cannot_serve_reads() -> None:
    c = Cluster((1, 2, 3), RaftConfig(peers=(1, 2, 3), check_quorum=False))
    old = c.elect(1)
    c.isolate(1)
    c.elect(2)
    c.nodes[2].propose(b"new")
    c.deliver()
    old.read_index(b"stale?")
    c.tick([1], times=5)
    assert c.reads[1] == []
    with pytest.raises(NotLeader):
        Cluster((1, 2, 3)).nodes[1].read_index(b"no leader known")


def lease_cluster(node_cls: type[RaftNode] = RaftNode) -> Cluster:
    """Three nodes with lease reads (E=10, lease 10-3 ticks), up for a while
    (so the restart guard is over) and node 1 elected."""
    cfg = RaftConfig(peers=(1, 2, 3), lease_reads=True, lease_drift_ticks=3)
    c = Cluster((1, 2, 3), cfg, node_cls=node_cls)
    for n in c.nodes.values():
        n.ticks = cfg.election_ticks
    c.elect(1)
    return c


def test_lease_reads_need_check_quorum() -> None:
    with pytest.raises(ValueError):
        RaftConfig(lease_reads=True, check_quorum=False)
    with pytest.raises(ValueError):
        RaftConfig(lease_reads=True, lease_drift_ticks=0)


def test_lease_read_is_answered_without_a_heartbeat_round() -> None:
    c = lease_cluster()
    ld = c.nodes[1]
    ld.read_index(b"early")  # no heartbeat of this term acknowledged yet: ReadIndex
    c.process(1)
    assert c.reads[1] == []
    c.deliver()
    assert [r.ctx for r in c.reads[1]] == [b"early"]
    c.tick(times=1)  # a heartbeat round: the lease starts at its send tick
    ld.propose(b"w")
    c.deliver()
    c.sent.clear()
    ld.read_index(b"lease")
    c.process(1)
    assert [(r.ctx, r.index) for r in c.reads[1][1:]] == [(b"lease", ld.commit_index)]
    assert not any(isinstance(m, Heartbeat) for m in c.sent)


def test_lease_runs_out_election_ticks_minus_drift_after_the_send() -> None:
    c = lease_cluster()
    ld = c.nodes[1]
    c.tick(times=1)
    sent = ld.ticks  # the last heartbeat a quorum acknowledged was sent at this tick
    c.isolate(1)
    lease = c.cfg.election_ticks - c.cfg.lease_drift_ticks
    served = []
    for i in range(lease + 2):
        ctx = b"r%d" % i
        ld.read_index(ctx)
        c.process(1)
        if any(r.ctx == ctx for r in c.reads[1]):
            served.append(ld.ticks)
        c.tick([1])
    assert ld.role == Role.LEADER
    assert served == list(range(sent, sent + lease))
    c.heal()
    c.tick([1])  # the pending ReadIndex reads go through with the next heartbeat round
    assert len(c.reads[1]) == lease + 2


def test_lease_read_index_follows_the_lease() -> None:
    """The on-the-spot read index is the commit index exactly while read_index
    would be answered in the next Ready with no heartbeat round."""
    c = lease_cluster()
    ld = c.nodes[1]
    assert ld.lease_read_index() is None  # no heartbeat of this term acknowledged yet
    assert c.nodes[2].lease_read_index() is None  # a follower never
    c.tick(times=1)
    sent = ld.ticks
    ld.propose(b"w")
    c.deliver()
    assert ld.lease_read_index() == ld.commit_index
    c.isolate(1)
    lease = c.cfg.election_ticks - c.cfg.lease_drift_ticks
    held = []
    for _ in range(lease + 2):
        if ld.lease_read_index() is not None:
            held.append(ld.ticks)
        c.tick([1])
    assert ld.role == Role.LEADER
    assert held == list(range(sent, sent + lease))


@pytest.mark.parametrize("broken", [False, True])
def test_transfer_gives_up_the_lease_for_the_rest_of_the_term(broken: bool) -> None:
    from tests.raftsim.broken import LeaseThroughTransferNode

    c = lease_cluster(LeaseThroughTransferNode if broken else RaftNode)
    ld = c.nodes[1]
    c.tick(times=1)
    ld.transfer_leadership(2)  # 2 is up to date: TimeoutNow goes out at once
    c.deliver(only=lambda m: not isinstance(m, TimeoutNow))  # ... and is lost
    ld.read_index(b"during")
    c.process(1)
    # 2 may still get it and be elected past every follower's lease
    assert (c.reads[1] == []) != broken
    if broken:
        return
    c.tick(times=c.cfg.election_ticks + 1)  # the transfer is abandoned
    assert ld.role == Role.LEADER and ld.lead_transferee == 0
    assert [r.ctx for r in c.reads[1]] == [b"during"]  # by a heartbeat round
    ld.read_index(b"after")
    c.process(1)
    assert [r.ctx for r in c.reads[1]] == [b"during"]  # still no lease this term
    c.deliver()
    assert [r.ctx for r in c.reads[1]] == [b"during", b"after"]


@pytest.mark.parametrize("broken", [False, True])
def test_restarted_follower_honours_a_lease_it_may_have_acknowledged(broken: bool) -> None:
    from tests.raftsim.broken import LeaseForgetOnRestartNode

    c = lease_cluster(LeaseForgetOnRestartNode if broken else RaftNode)
    ld = c.nodes[1]
    c.tick(times=1)
    ld.propose(b"w")
    c.deliver()
    c.isolate(1)  # the leader holds its lease, but cannot tell anyone any more
    c.crash(2)
    c.restart(2)
    c.nodes[3].campaign()  # as if its election timeout ran out
    c.deliver()
    # 2 acknowledged 1's heartbeat just before its crash: if it voted now, 3
    # could commit writes that 1 would not see while it serves lease reads
    assert (c.nodes[3].role == Role.LEADER) == broken


# ---------------------------------------------------------------- restart, wire


def test_restart_recovers_term_vote_and_log() -> None:
    c = Cluster((1, 2, 3))
    ld = c.elect(1)
    for i in range(5):
        ld.propose(b"v%d" % i)
    c.deliver()
    c.tick(times=2)
    term = ld.term
    for i in (1, 2, 3):
        c.crash(i)
    for i in (1, 2, 3):
        c.restart(i)
    assert all(n.term == term for n in c.nodes.values())
    assert c.nodes[1].vote == 1
    ld = settle(c)
    assert ld.term > term
    c.tick(times=3)
    assert c.data_applied(2) == [b"v%d" % i for i in range(5)]


def test_restart_with_a_persistent_state_machine_does_not_reapply() -> None:
    from metadata.raft.messages import HardState, PersistentState

    log = [Entry(i, 1, EntryType.NORMAL, b"e%d" % i) for i in range(1, 11)]
    st = PersistentState(HardState(1, 1, 4), None, log)  # the commit record lagged
    n = RaftNode(1, RaftConfig(peers=(1, 2, 3)), st, random.Random(1), applied=8)
    assert n.applied == 8 and n.commit_index == 8
    assert n.ready().committed_entries == []


def test_every_message_survives_the_wire() -> None:
    ents = [Entry(3, 2, EntryType.NORMAL, b"\x00\xff"), Entry(4, 2, EntryType.NOOP)]
    msgs = [
        VoteRequest(1, 2, 3, last_index=4, last_term=2, pre_vote=True, transfer=True),
        VoteResponse(2, 1, 3, granted=True, pre_vote=True),
        AppendEntries(1, 2, 3, prev_index=2, prev_term=1, entries=ents, commit=2),
        AppendResponse(2, 1, 3, index=2, reject=True, hint_index=1, hint_term=1),
        Heartbeat(1, 2, 3, commit=2, read_seq=9),
        HeartbeatResponse(2, 1, 3, read_seq=9),
        InstallSnapshot(
            1, 2, 3, index=9, snap_term=2, voters=(1, 2), offset=5, data=b"x", done=True
        ),
        SnapshotResponse(2, 1, 3, index=9, offset=6, reject=False),
        TimeoutNow(1, 2, 3),
        ReadIndexRequest(2, 1, 3, ctx=b"c"),
        ReadIndexResponse(1, 2, 3, ctx=b"c", index=7),
    ]
    for m in msgs:
        wire = msgpack.unpackb(msgpack.packb(m.to_wire(), use_bin_type=True), raw=False)
        assert message_from_wire(wire) == m

    def with_field(m: Message, name: str, v: object) -> list:
        w = m.to_wire()
        w[1 + [f.name for f in dataclasses.fields(m)].index(name)] = v
        return w

    bad = [
        ["append", 1],
        ["nope"],
        [["append"], 1, 2, 3],
        [],
        "not a list",
        {"type": "append", "frm": 1, "to": 2, "term": 3},  # the old map form
        with_field(AppendEntries(1, 2, 3), "entries", [[1, 1, 0, 10**12]]),  # no huge alloc
        with_field(AppendEntries(1, 2, 3), "entries", [[1, 1, 9, b""]]),
        with_field(AppendEntries(1, 2, 3), "entries", [[1, 1, True, b""]]),
        with_field(AppendEntries(1, 2, 3), "entries", "x"),
        with_field(AppendEntries(1, 2, 3), "term", "3"),
        with_field(AppendEntries(1, 2, 3), "commit", -1),
        with_field(AppendEntries(1, 2, 3), "commit", True),
        with_field(VoteRequest(1, 2, 3), "pre_vote", 1),
        with_field(InstallSnapshot(1, 2, 3), "voters", 5),
        with_field(InstallSnapshot(1, 2, 3), "data", 5),
        [*TimeoutNow(1, 2, 3).to_wire(), 4],  # a field too many
    ]
    for w in bad:
        with pytest.raises(ValueError):
            message_from_wire(w)  # type: ignore[arg-type]
