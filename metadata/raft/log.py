"""The in-memory Raft log: a snapshot point followed by entries.

Entries up to ``stable`` are known to be on disk (or covered by a snapshot that
is on its way to disk); the rest still have to go out in a Ready.
"""

from __future__ import annotations

from .messages import Entry, Snapshot


class RaftLog:
    def __init__(self, snapshot: Snapshot | None, entries: list[Entry]) -> None:
        self.snapshot = snapshot  # latest snapshot, kept to send to lagging followers
        self.offset = snapshot.index if snapshot else 0
        self.offset_term = snapshot.term if snapshot else 0
        self.ents: list[Entry] = [e for e in entries if e.index > self.offset]
        if self.ents and self.ents[0].index != self.offset + 1:
            raise ValueError("log entries do not start right after the snapshot")
        self.stable = self.last_index()
        self.commit = self.offset

    # ---------------------------------------------------------------- queries
    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.ents)

    def last_term(self) -> int:
        return self.ents[-1].term if self.ents else self.offset_term

    def term(self, i: int) -> int | None:
        """Term of entry i, or None when it is compacted away or beyond the end."""
        if i == self.offset:
            return self.offset_term
        if i < self.offset or i > self.offset + len(self.ents):
            return None
        return self.ents[i - self.offset - 1].term

    def match_term(self, i: int, term: int) -> bool:
        t = self.term(i)
        return t is not None and t == term

    def entry(self, i: int) -> Entry:
        return self.ents[i - self.offset - 1]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi]; with max_bytes, at least one and no more than fit."""
        if lo > hi:
            return []
        start, end = lo - self.offset - 1, hi - self.offset
        if max_bytes is not None:
            total = 0
            for k in range(start, end):  # no copy of a long tail just to cut it
                total += self.ents[k].size()
                if total > max_bytes and k > start:
                    end = k
                    break
        return self.ents[start:end]

    def unstable(self) -> list[Entry]:
        return self.ents[self.stable - self.offset :] if self.stable >= self.offset else self.ents

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction: is a candidate's log at least as new as ours?"""
        lt = self.last_term()
        return last_term > lt or (last_term == lt and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest i <= index whose term is <= term, with that term (0 if unknown).

        Used on both sides of a rejected append to skip whole terms at once."""
        index = min(index, self.last_index())
        while True:
            t = self.term(index)
            if t is None:
                return index, 0
            if t <= term:
                return index, t
            index -= 1

    # --------------------------------------------------------------- mutation
    def append(self, entries: list[Entry]) -> None:
        if entries:
            assert entries[0].index == self.last_index() + 1
            self.ents.extend(entries)

    def maybe_append(self, prev_index: int, entries: list[Entry]) -> int | None:
        """Follower side: append after a matching prev; returns the index from
        which the log was truncated (None if only appended)."""
        truncated = None
        for k, e in enumerate(entries):
            t = self.term(e.index)
            if t == e.term:
                continue
            if t is not None:  # conflict: drop our suffix from here
                if e.index <= self.commit:
                    raise AssertionError(f"conflict at committed index {e.index}")
                del self.ents[e.index - self.offset - 1 :]
                self.stable = min(self.stable, e.index - 1)
                truncated = e.index
            self.append(entries[k:])
            break
        return truncated

    def commit_to(self, index: int) -> bool:
        index = min(index, self.last_index())
        if index > self.commit:
            self.commit = index
            return True
        return False

    def stable_to(self, index: int, term: int) -> None:
        """Mark entries up to index durable if our entry there is still the one
        that was written (a truncation in the meantime makes it a no-op)."""
        if index > self.stable and self.term(index) == term:
            self.stable = index

    def compact(self, snap: Snapshot) -> None:
        """Drop entries covered by a local snapshot (index <= applied)."""
        assert snap.index <= self.last_index() and snap.index > self.offset
        del self.ents[: snap.index - self.offset]
        self.offset = snap.index
        self.offset_term = snap.term
        self.snapshot = snap

    def restore(self, snap: Snapshot) -> None:
        """Replace the whole log with a snapshot received from the leader."""
        self.ents = []
        self.offset = snap.index
        self.offset_term = snap.term
        self.snapshot = snap
        self.stable = snap.index
        self.commit = snap.index
