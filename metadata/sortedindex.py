"""A lazily maintained sorted view of a set of keys, for paged listings.

Directories and the chunk table are hash-based; listing them in sorted pages
needs order. Sorting on every page would make a million-entry listing
quadratic, so the sorted list is built on the first page and then patched
with the additions and removals noted since (or rebuilt when they pile up).
It is a cache: it never goes into snapshots and results never depend on it
beyond the order it gives.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable
from typing import Any


class SortedIndex:
    __slots__ = ("added", "keys", "removed")

    def __init__(self, source: Iterable[Any]) -> None:
        self.keys: list[Any] = sorted(source)
        self.added: set[Any] = set()
        self.removed: set[Any] = set()

    def add(self, key: Any) -> None:
        """Note that key joined the source."""
        if key in self.removed:
            self.removed.discard(key)
        else:
            self.added.add(key)

    def discard(self, key: Any) -> None:
        """Note that key left the source."""
        if key in self.added:
            self.added.discard(key)
        else:
            self.removed.add(key)

    def too_stale(self) -> bool:
        """True when patching would cost more than rebuilding: drop the index."""
        return len(self.added) + len(self.removed) > len(self.keys) // 4 + 1024

    def page(
        self, after: Any, limit: int, source: Callable[[], Iterable[Any]]
    ) -> tuple[list[Any], bool]:
        """Up to `limit` keys greater than `after` (all when None), and whether more follow."""
        if self.added or self.removed:
            if len(self.added) + len(self.removed) > len(self.keys) // 8 + 64:
                self.keys = sorted(source())
            else:
                keys = self.keys
                for k in self.removed:
                    i = bisect_left(keys, k)
                    if i < len(keys) and keys[i] == k:
                        del keys[i]
                for k in self.added:
                    insort(keys, k)
            self.added.clear()
            self.removed.clear()
        i = 0 if after is None else bisect_right(self.keys, after)
        out = self.keys[i : i + limit]
        return out, i + limit < len(self.keys)
