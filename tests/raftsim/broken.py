"""Deliberately broken Raft cores, to show that the checks bite.

tests/test_raft_sim_bites.py asserts the simulator catches ``forget-vote``
and ``unconfirmed-read`` within a fixed seed range; tests/test_raft_core.py
shows ``commit-old-term`` committing what the real core must not (Raft fig. 8).
The others are caught only rarely by random runs (about 1 seed in 200 for
``commit-old-term-no-noop``; ``eager-self-commit`` needs a crash inside one
fsync window) and are kept for manual hunting:
``python -m tests.raftsim 0 --count 500 --broken NAME``."""

from __future__ import annotations

from metadata.raft.core import RaftNode
from metadata.raft.messages import NONE, AppendEntries, HardState


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
