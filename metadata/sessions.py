"""Client sessions for exactly-once mutations (Raft thesis, section 6.3).

Each client keeps its last sequence number and the reply to it. A repeat of
that number gets the stored reply without applying again; an older number is
refused with EOLDSEQ (the client has already moved on, so this is a stray
duplicate whose reply is gone). Sessions idle longer than the timeout, judged
by the leader-stamped command times, are dropped during apply, so every
replica drops the same ones at the same log position.

Replies are stored msgpack-packed: that freezes them (a caller cannot mutate
a stored reply) and they go into snapshots as they are.
"""

from __future__ import annotations

from collections import OrderedDict

OLD_SEQ = "EOLDSEQ"  # the request's seq is older than the client's last one


class Sessions:
    def __init__(self, timeout_ns: int) -> None:
        self.timeout_ns = timeout_ns
        # client -> (seq, last_used, packed reply); ordered by last_used, which never
        # decreases along the order because it comes from now()
        self.table: OrderedDict[str, tuple[int, int, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.table)

    def now(self, ts: int) -> int:
        """The session clock: the command time, never below the newest session's
        last use (leader clocks may step back a little across elections)."""
        table = self.table
        if table:
            last = table[next(reversed(table))][1]
            if last > ts:
                return last
        return ts

    def expire(self, now: int) -> int:
        """Drop every session idle since before now - timeout; returns how many."""
        cutoff = now - self.timeout_ns
        n = 0
        table = self.table
        while table:
            client = next(iter(table))
            if table[client][1] >= cutoff:
                break
            del table[client]
            n += 1
        return n

    def lookup(self, client: str, seq: int) -> bytes | str | None:
        """The stored packed reply if seq repeats the last one, OLD_SEQ if seq is
        older, None if the request is new."""
        got = self.table.get(client)
        if got is None or seq > got[0]:
            return None
        if seq == got[0]:
            return got[2]
        return OLD_SEQ

    def record(self, client: str, seq: int, now: int, packed_reply: bytes) -> None:
        table = self.table
        table[client] = (seq, now, packed_reply)
        table.move_to_end(client)

    def items_sorted(self) -> list[tuple[str, int, int, bytes]]:
        """Sessions in (last_used, client) order, as snapshots store them."""
        return sorted(
            ((c, s, t, r) for c, (s, t, r) in self.table.items()), key=lambda x: (x[2], x[0])
        )

    def load(self, rows: list) -> None:
        """Restore from items_sorted() output (already in last_used order)."""
        self.table = OrderedDict((c, (s, t, r)) for c, s, t, r in rows)
