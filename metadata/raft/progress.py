"""The leader's view of each follower (etcd's tracker.Progress).

PROBE: one append in flight until the follower answers (we are searching for
the point where logs match). REPLICATE: logs match, so appends are pipelined
with an optimistic ``next`` and at most ``max_inflight`` unacknowledged
messages. SNAPSHOT: the follower needs entries we compacted; chunks of the
snapshot are in flight.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    __slots__ = (
        "inflight",
        "lease_ack",
        "match",
        "max_inflight",
        "next",
        "paused",
        "pending_snapshot",
        "read_ack",
        "recent_active",
        "snap_acked",
        "snap_sent",
        "stall",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.paused = False  # PROBE: an append is outstanding
        self.inflight: deque[int] = deque()  # last index of each in-flight append
        self.max_inflight = max_inflight
        self.recent_active = False  # heard from since the last check-quorum round
        self.pending_snapshot = 0  # index of the snapshot being sent
        self.snap_sent = 0  # chunks sent / acknowledged (SNAPSHOT state)
        self.snap_acked = 0
        self.read_ack = 0  # highest ReadIndex sequence this follower confirmed
        self.lease_ack = -1  # leader tick of the latest heartbeat it acknowledged
        self.stall = 0  # heartbeat rounds since the last append/snapshot answer

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.name} match={self.match} next={self.next} "
            f"inflight={len(self.inflight)} paused={self.paused})"
        )

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.paused = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.paused = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.snap_sent = 0
        self.snap_acked = 0
        self.paused = False
        self.inflight.clear()

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.paused
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def maybe_update(self, n: int) -> bool:
        """A successful append response up to n; False if it tells nothing new."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.paused = False
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejected append of prev index ``rejected``; False if stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.paused = False
        return True

    def sent_entries(self, last: int) -> None:
        if self.state == ProgressState.REPLICATE:
            self.next = last + 1
            self.inflight.append(last)
        elif self.state == ProgressState.PROBE:
            self.paused = True

    def free_inflight_le(self, index: int) -> None:
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
