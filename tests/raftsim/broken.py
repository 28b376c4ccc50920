"""Deliberately broken Raft cores, to show that the checks bite.

tests/test_raft_sim_bites.py asserts the simulator catches ``forget-vote``,
``unconfirmed-read``, ``lease-never-expires``, ``lease-no-drift`` and
``spot-read-no-lease`` within a fixed seed range; tests/test_raft_core.py
shows ``commit-old-term`` committing what the real core must not (Raft fig. 8).
The others are caught only rarely by random runs (about 1 seed in 200 for
``commit-old-term-no-noop``; ``eager-self-commit`` needs a crash inside one
fsync window) and are kept for manual hunting, as are the lease variants
the random runs do not reach (``lease-from-ack``: the overshoot is one message
delay, shorter than an election plus a commit; ``lease-through-transfer``,
``lease-forget-on-restart``: tests/test_raft_core.py has scripted cases):
``python -m tests.raftsim 0 --count 500 --broken NAME``."""

from __future__ import annotations

from metadata.raft.core import RaftNode
from metadata.raft.messages import (
    NONE,
    AppendEntries,
    HardState,
    HeartbeatResponse,
    Message,
    Role,
    TimeoutNow,
)


class CommitOldTermNode(RaftNode):
    """Commits by counting replicas of entries of any term (Raft paper fig. 8)."""

    def _commit_allowed(self, index: int) -> bool:
        return True


class ForgetVoteNode(RaftNode):
    """Never persists its vote, so after a restart it may vote twice in a term."""

    def hard_state(self) -> HardState:
        return HardState(self.term, NONE, self.log.commit)


BROKEN: dict[str, type[RaftNode]] = {
    "commit-old-term": CommitOldTermNode,
    "forget-vote": ForgetVoteNode,
}


class UnconfirmedReadNode(RaftNode):
    """Serves ReadIndex from its own commit index without a heartbeat round,
    so a deposed leader that does not know it yet returns stale reads."""

    def _leader_read(self, ctx: bytes, frm: int) -> None:
        self._read_ready(ctx, self.log.commit, frm)


class EagerSelfCommitNode(RaftNode):
    """Counts its own entries toward the quorum before they are on disk."""

    def _match_of(self, v: int) -> int:
        return self.log.last_index() if v == self.id else self.progress[v].match


BROKEN["unconfirmed-read"] = UnconfirmedReadNode
BROKEN["eager-self-commit"] = EagerSelfCommitNode


class CommitOldTermNoNoopNode(CommitOldTermNode):
    """Figure 8 proper: old-term commits and no no-op entry to cover them."""

    def _become_leader(self) -> None:
        super()._become_leader()
        # take the no-op back out before anyone saw it
        self.log.ents.pop()
        self.msgs = [m for m in self.msgs if not isinstance(m, AppendEntries)]
        self.term_start = self.log.last_index()
        for pr in self.progress.values():
            pr.become_probe()
            pr.next = self.log.last_index() + 1
        self._bcast_append(send_if_empty=True)


BROKEN["commit-old-term-no-noop"] = CommitOldTermNoNoopNode


def _quorum_ack(node: RaftNode) -> int:
    """The tick of the latest heartbeat a quorum acknowledged (the leader's own
    entry is now); -1 while none was."""
    acks = sorted(
        (node.ticks if v == node.id else node.progress[v].lease_ack for v in node.voters),
        reverse=True,
    )
    return acks[len(acks) // 2]


class LeaseNeverExpiresNode(RaftNode):
    """Lease reads: once a quorum acknowledged one heartbeat, the lease is held
    for the rest of the term (a partitioned leader keeps serving reads)."""

    def _in_lease(self) -> bool:
        if not self.cfg.lease_reads or self.lead_transferee != NONE or self.lease_forfeit:
            return False
        return _quorum_ack(self) >= 0


class LeaseFromAckNode(RaftNode):
    """Lease reads timed from when the acknowledgement arrived, not from when
    the heartbeat was sent: the lease overshoots the followers' by a round trip."""

    def _step_leader(self, m: Message) -> None:
        if isinstance(m, HeartbeatResponse):
            m.sent_tick = self.ticks
        super()._step_leader(m)


class LeaseNoDriftNode(RaftNode):
    """Lease reads with no bound for drift or tick granularity: the lease lasts
    a full election_ticks of the leader's clock."""

    def _in_lease(self) -> bool:
        if not self.cfg.lease_reads or self.lead_transferee != NONE or self.lease_forfeit:
            return False
        start = _quorum_ack(self)
        return start >= 0 and self.ticks < start + self.cfg.election_ticks


class LeaseThroughTransferNode(RaftNode):
    """Keeps its lease after sending TimeoutNow, though the transferee's votes
    bypass the followers' lease check."""

    def _send_timeout_now(self, to: int) -> None:
        self._send(TimeoutNow(self.id, to, self.term))

    def _in_lease(self) -> bool:
        saved, self.lead_transferee = self.lead_transferee, NONE
        try:
            return super()._in_lease()
        finally:
            self.lead_transferee = saved


class LeaseForgetOnRestartNode(RaftNode):
    """A restarted follower votes at once, though before the crash it may have
    acknowledged a heartbeat whose lease still runs."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.ticks = self.cfg.election_ticks


class SpotReadNoLeaseNode(RaftNode):
    """Serves reads on the spot whenever it leads (RaftNode.lease_read_index
    without the lease check): a deposed leader answers from its old state."""

    def lease_read_index(self) -> int | None:
        if self.role != Role.LEADER or self.log.commit < self.term_start:
            return None
        return self.log.commit


BROKEN["lease-never-expires"] = LeaseNeverExpiresNode
BROKEN["lease-from-ack"] = LeaseFromAckNode
BROKEN["lease-no-drift"] = LeaseNoDriftNode
BROKEN["lease-through-transfer"] = LeaseThroughTransferNode
BROKEN["lease-forget-on-restart"] = LeaseForgetOnRestartNode
BROKEN["spot-read-no-lease"] = SpotReadNoLeaseNode
