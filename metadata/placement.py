"""Choosing chunkservers for new copies of chunks, and ordering replicas for reads.

Rules: only alive servers (not dead, decommissioning or retired) with at least
``margin`` bytes free; never two copies of a chunk on one server; spread copies
over failure domains (zone, then rack, then node) before reusing one; among
equally spread candidates, pick at random weighted by free space. Pure: the
caller passes the registry snapshot and a ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from dfs.errors import UNAVAILABLE, DfsError
from metadata.registry import ALIVE, DECOMMISSIONING, Registry, ServerInfo

CHUNK_MARGIN = 4 << 20  # a server needs room for one largest chunk (dfs.chunking MAX_SIZE)
CHUNK_ESTIMATE = 1 << 20  # mean chunk size, charged per planned copy to spread a batch

Domain = tuple[str | None, str | None, str]  # (zone, rack, node)


def spread(domains: Iterable[Domain]) -> tuple[int, int, int]:
    """How widely copies are spread: distinct (zones, racks, nodes)."""
    ds = list(domains)
    return (
        len({d[0] for d in ds}),
        len({(d[0], d[1]) for d in ds}),
        len({d[2] for d in ds}),
    )


def _crowding(d: Domain, taken: Sequence[Domain]) -> tuple[int, int, int]:
    """How many existing copies share d's zone, rack and node (lower is better)."""
    z = r = n = 0
    for t in taken:
        if t[0] == d[0]:
            z += 1
            if t[1] == d[1]:
                r += 1
        if t[2] == d[2]:
            n += 1
    return (z, r, n)


class Placer:
    """Candidate servers with a running free-space estimate, so one plan can place
    many copies without piling them onto the same server."""

    def __init__(
        self,
        registry: Registry,
        rng: random.Random,
        exclude: Iterable[str] = (),
        margin: int = CHUNK_MARGIN,
    ) -> None:
        ex = set(exclude)
        self.rng = rng
        self.margin = margin
        self.alive = [s for s in registry._all_infos() if s.state == ALIVE]
        self.candidates: list[ServerInfo] = sorted(
            (s for s in self.alive if s.endpoint not in ex and s.free >= margin),
            key=lambda s: s.endpoint,  # determinism does not depend on registration order
        )
        self.free: dict[str, int] = {s.endpoint: s.free for s in self.candidates}

    def charge(self, endpoint: str, size: int) -> None:
        if endpoint in self.free:
            self.free[endpoint] -= size

    def pick(
        self,
        n: int,
        holders: Iterable[str] = (),
        taken: Iterable[Domain] = (),
        exclude: Iterable[str] = (),
        prefer: str | None = None,
        size: int = CHUNK_ESTIMATE,
    ) -> list[str]:
        """Up to n distinct servers for one chunk. ``holders`` already have it (never
        chosen); ``taken`` are the domains of its copies that count, for spreading;
        ``exclude`` are off limits for this pick. ``prefer`` (e.g. the writer's own
        server) goes first when it is as well spread as any other choice."""
        skip = set(holders) | set(exclude)
        doms = list(taken)
        out: list[str] = []
        for _ in range(n):
            pool = [
                s
                for s in self.candidates
                if s.endpoint not in skip and self.free[s.endpoint] >= self.margin
            ]
            if not pool:
                break
            scored = [(_crowding(s.domain(), doms), s) for s in pool]
            best = min(c for c, _ in scored)
            pool = [s for c, s in scored if c == best]
            chosen = None
            if prefer is not None:
                chosen = next((s for s in pool if s.endpoint == prefer), None)
            if chosen is None:
                chosen = self._weighted(pool)
            out.append(chosen.endpoint)
            skip.add(chosen.endpoint)
            doms.append(chosen.domain())
            self.free[chosen.endpoint] -= size
        return out

    def _weighted(self, pool: list[ServerInfo]) -> ServerInfo:
        weights = [max(self.free[s.endpoint], 1) for s in pool]
        x = self.rng.random() * sum(weights)
        for s, w in zip(pool, weights):
            x -= w
            if x < 0:
                return s
        return pool[-1]


def place(
    registry: Registry,
    count: int,
    rep: int,
    rng: random.Random,
    exclude: Iterable[str] = (),
    prefer: str | None = None,
    margin: int = CHUNK_MARGIN,
    size: int = CHUNK_ESTIMATE,
) -> list[list[str]]:
    """Chains of servers for ``count`` new chunks, ``rep`` distinct servers each
    (the first is where the client sends; it forwards down the chain).

    A chain is shorter than ``rep`` when fewer suitable servers exist: the
    caller decides whether that is an error (a write needing ``rep`` durable
    copies should refuse). Raises DfsError UNAVAILABLE when no alive server
    exists, ENOSPC when none has ``margin`` bytes free.
    """
    if rep < 1:
        raise ValueError(f"rep must be >= 1, got {rep}")
    if count <= 0:
        return []
    exclude = list(exclude)
    placer = Placer(registry, rng, exclude, margin)
    if not placer.candidates:
        if not placer.alive:
            raise DfsError(UNAVAILABLE, "no chunkserver is alive")
        ex = set(exclude)
        if all(s.endpoint in ex for s in placer.alive):
            raise DfsError(
                UNAVAILABLE,
                f"no chunkserver left to use: all {len(placer.alive)} alive are excluded",
            )
        raise DfsError("ENOSPC", f"no chunkserver has {margin} bytes free")
    chains = []
    for _ in range(count):
        chain = placer.pick(rep, prefer=prefer, size=size)
        if not chain:
            raise DfsError("ENOSPC", f"chunkservers are full after {len(chains)} of {count} chunks")
        chains.append(chain)
    return chains


def order_for_read(registry: Registry, replicas: Iterable[str]) -> list[str]:
    """Replicas worth trying, best first: alive servers least loaded (then most
    free) first, decommissioning ones after; dead, retired and unknown dropped."""
    alive, leaving = [], []
    for ep in dict.fromkeys(replicas):
        s = registry._info(ep)
        if s is None:
            continue
        if s.state == ALIVE:
            alive.append(s)
        elif s.state == DECOMMISSIONING:
            leaving.append(s)

    def key(s: ServerInfo) -> tuple[int, int, str]:
        return (s.load, -s.free, s.endpoint)

    return [s.endpoint for s in sorted(alive, key=key) + sorted(leaving, key=key)]
