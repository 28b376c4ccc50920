"""Chunk reference counts and garbage candidates of the namespace.

Every chunk extent of every file inode counts as one reference (a chunk used
twice in one file counts twice; hard links share one inode, so they count
once). References are kept per replication factor of the referencing file, so
the factor a chunk needs (the highest among its files) is known without a
scan. Most chunks have exactly one reference: those live in a set (about half
the memory of a dict); only shared chunks carry an explicit count.

A chunk whose count drops to zero becomes a garbage candidate stamped with the
command's time; a new reference before expiry takes it out again.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from metadata.inodes import Inline
from metadata.sortedindex import SortedIndex


class ChunkRefs:
    def __init__(self) -> None:
        self.one: dict[int, set[bytes]] = {}  # rep -> chunks with exactly 1 ref at rep
        self.many: dict[int, dict[bytes, int]] = {}  # rep -> chunk -> count >= 2
        self.distinct = 0  # chunks with at least one reference
        self.total = 0  # references
        self.ref_bytes = 0  # sum of the lengths of all referenced extents
        self.garbage: dict[bytes, int] = {}  # unreferenced chunk -> time marked
        self.index: SortedIndex | None = None  # sorted referenced ids, for all_chunks

    # -- lookups ---------------------------------------------------------------

    def is_referenced(self, cid: bytes) -> bool:
        for s in self.one.values():
            if cid in s:
                return True
        return any(cid in d for d in self.many.values())

    def count(self, cid: bytes) -> int:
        n = sum(1 for s in self.one.values() if cid in s)
        return n + sum(d.get(cid, 0) for d in self.many.values())

    def rep_needed(self, cid: bytes) -> int:
        """The highest replication factor among the files referencing cid (0: none)."""
        best = 0
        for rep, s in self.one.items():
            if rep > best and cid in s:
                best = rep
        for rep, d in self.many.items():
            if rep > best and cid in d:
                best = rep
        return best

    def iter_referenced(self) -> set[bytes]:
        out: set[bytes] = set()
        for s in self.one.values():
            out.update(s)
        for d in self.many.values():
            out.update(d)
        return out

    def counts(self) -> dict[bytes, int]:
        """Every referenced chunk with its total count (for checks and admin)."""
        out: dict[bytes, int] = {}
        for s in self.one.values():
            for c in s:
                out[c] = out.get(c, 0) + 1
        for d in self.many.values():
            for c, n in d.items():
                out[c] = out.get(c, 0) + n
        return out

    # -- changes ---------------------------------------------------------------

    def incref(self, cid: bytes, rep: int) -> None:
        self.total += 1
        many = self.many.get(rep)
        if many is not None and cid in many:
            many[cid] += 1
            return
        one = self.one.get(rep)
        if one is not None and cid in one:
            one.remove(cid)
            if not one:
                del self.one[rep]
            if many is None:
                many = self.many[rep] = {}
            many[cid] = 2
            return
        if not self.is_referenced(cid):
            self.distinct += 1
            self.garbage.pop(cid, None)
            if self.index is not None:
                self.index.add(cid)
                if self.index.too_stale():
                    self.index = None
        if one is None:
            one = self.one[rep] = set()
        one.add(cid)

    def decref(self, cid: bytes, rep: int, ts: int) -> None:
        self.total -= 1
        many = self.many.get(rep)
        if many is not None and cid in many:
            n = many[cid] - 1
            if n >= 2:
                many[cid] = n
                return
            del many[cid]
            if not many:
                del self.many[rep]
            self.one.setdefault(rep, set()).add(cid)
            return
        one = self.one[rep]
        one.remove(cid)  # KeyError here would be an accounting bug
        if not one:
            del self.one[rep]
        if not self.is_referenced(cid):
            self.distinct -= 1
            self.garbage[cid] = ts
            if self.index is not None:
                self.index.discard(cid)
                if self.index.too_stale():
                    self.index = None

    def add_file(self, data: Any, size: int, rep: int) -> None:
        """Count the references of a file's packed extents (see inodes.pack_extents);
        an inline file (inodes.Inline) references no chunk."""
        if data is None or type(data) is Inline:
            return
        if type(data) is bytes:
            self.incref(data, rep)
            self.ref_bytes += size
            return
        for i in range(0, len(data), 2):
            cid = data[i]
            if cid is not None:
                self.incref(cid, rep)
                self.ref_bytes += data[i + 1]

    def drop_file(self, data: Any, size: int, rep: int, ts: int) -> None:
        if data is None or type(data) is Inline:
            return
        if type(data) is bytes:
            self.decref(data, rep, ts)
            self.ref_bytes -= size
            return
        for i in range(0, len(data), 2):
            cid = data[i]
            if cid is not None:
                self.decref(cid, rep, ts)
                self.ref_bytes -= data[i + 1]

    def load(self, per_rep: dict[int, list[bytes]], ref_bytes: int) -> None:
        """Set all counts at once from every reference, grouped by rep (restore)."""
        self.one, self.many = {}, {}
        self.total = 0
        for rep in sorted(per_rep):
            lst = per_rep[rep]
            if not lst:
                continue
            self.total += len(lst)
            uniq = set(lst)
            if len(uniq) == len(lst):
                self.one[rep] = uniq
                continue
            cnt = Counter(lst)
            one = {c for c, n in cnt.items() if n == 1}
            many = {c: n for c, n in cnt.items() if n > 1}
            if one:
                self.one[rep] = one
            if many:
                self.many[rep] = many
        self.distinct = (
            len(self.iter_referenced())
            if len(per_rep) > 1
            else sum(len(s) for s in self.one.values()) + sum(len(d) for d in self.many.values())
        )
        self.ref_bytes = ref_bytes
        self.index = None

    # -- garbage ---------------------------------------------------------------

    def mark(self, cids: list[bytes], ts: int) -> int:
        """Make unreferenced chunks garbage candidates (keeping older marks)."""
        n = 0
        for cid in cids:
            if cid not in self.garbage and not self.is_referenced(cid):
                self.garbage[cid] = ts
                n += 1
        return n

    def expire(self, before: int, limit: int) -> list[bytes]:
        """Remove and return up to `limit` candidates marked before `before`,
        oldest first (ties by id), so every replica picks the same ones."""
        old = sorted((t, c) for c, t in self.garbage.items() if t < before)[:limit]
        for _t, c in old:
            del self.garbage[c]
        return [c for _t, c in old]

    def page(self, after: bytes | None, limit: int) -> tuple[list[bytes], bool]:
        if self.index is None:
            self.index = SortedIndex(self.iter_referenced())
        return self.index.page(after, limit, self.iter_referenced)
