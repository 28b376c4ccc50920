"""Planning re-replication, trimming, rebalancing and decommissioning.

Pure functions over a Registry snapshot: they return plans (lists of Copy,
Remove, Move) for the leader to execute and never change the registry. A copy
"counts" toward a chunk's replication only on an alive server and when not
marked corrupt; decommissioning servers still serve reads and can be sources.

``wanted`` is what the namespace needs: an iterable of ``(chunk_id, rep)`` or
``(chunk_id, rep, size)`` tuples (size in bytes, used by the balancer's
estimates; ``sizes`` or ``default_size`` fill in otherwise).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from metadata.placement import CHUNK_ESTIMATE, CHUNK_MARGIN, Placer, spread
from metadata.registry import ALIVE, DECOMMISSIONING, Registry, ServerInfo

Wanted = Iterable[tuple[str, int] | tuple[str, int, int]]


@dataclass(frozen=True, slots=True)
class Limits:
    """Throttles for one plan. ``per_server``: concurrent copies a server takes part
    in, as source or as target (``busy`` passed to a planner counts what already
    runs). ``max_total``: operations (Copy or Move entries) in one plan."""

    per_server: int = 2
    max_total: int = 1000


@dataclass(frozen=True, slots=True)
class Copy:
    """Copy ``chunk`` from ``source`` to every target (cs.replicate, chained)."""

    chunk: str
    source: str
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Remove:
    """Delete the copy of ``chunk`` on ``server``."""

    chunk: str
    server: str


@dataclass(frozen=True, slots=True)
class Move:
    """Copy ``chunk`` from ``source`` to ``target``, then delete it on ``source``.
    The executor deletes only after the copy is confirmed, and only if the chunk
    still has more than its rep live copies (``safe_to_remove``)."""

    chunk: str
    source: str
    target: str
    size: int = 0


class RepairPlan(list[Copy]):
    """A list of Copy, plus what could not be planned.

    ``missing``: chunks with no readable copy at all (only when reports are
    complete); ``unplaceable``: under-replicated chunks for which no target
    server exists (too few servers/domains, or all full); ``deferred``: how many
    under-replicated chunks wait for the limits; ``complete``: False when the
    registry's locations are incomplete and nothing was planned (fail closed).
    """

    def __init__(self, copies: Iterable[Copy] = ()) -> None:
        super().__init__(copies)
        self.missing: list[str] = []
        self.unplaceable: list[str] = []
        self.deferred = 0
        self.complete = True


# -- helpers -------------------------------------------------------------------


def _iter_wanted(
    wanted: Wanted, sizes: Mapping[str, int] | None = None, default_size: int = CHUNK_ESTIMATE
) -> Iterator[tuple[str, int, int]]:
    for item in wanted:
        cid, rep = item[0], int(item[1])
        if len(item) > 2:
            size = int(item[2])  # type: ignore[misc]
        elif sizes is not None and cid in sizes:
            size = int(sizes[cid])
        else:
            size = default_size
        yield cid, rep, size


@dataclass(slots=True)
class _Chunk:
    """One chunk's copies as planning sees them."""

    good: list[ServerInfo]  # good copies, any server state
    corrupt: list[ServerInfo]

    @property
    def live(self) -> list[ServerInfo]:
        return [s for s in self.good if s.state == ALIVE]

    @property
    def readable(self) -> list[ServerInfo]:
        return [s for s in self.good if s.state in (ALIVE, DECOMMISSIONING)]

    @property
    def holders(self) -> set[str]:
        """Every server with any copy: never a target."""
        return {s.endpoint for s in self.good} | {s.endpoint for s in self.corrupt}


def _chunk(registry: Registry, cid: str) -> _Chunk:
    good, corrupt = registry._holders(cid)
    return _Chunk(good, corrupt)


def _read_key(s: ServerInfo) -> tuple[int, int, str]:
    return (s.load, -s.free, s.endpoint)


class _Usage:
    """Concurrent copies per server, against ``Limits.per_server``."""

    def __init__(self, limits: Limits, busy: Mapping[str, int] | None) -> None:
        self.limit = limits.per_server
        self.n: dict[str, int] = dict(busy or {})

    def ok(self, ep: str) -> bool:
        return self.n.get(ep, 0) < self.limit

    def take(self, ep: str) -> None:
        self.n[ep] = self.n.get(ep, 0) + 1

    def saturated(self) -> set[str]:
        return {ep for ep, n in self.n.items() if n >= self.limit}


def safe_to_remove(registry: Registry, chunk: str, endpoint: str, rep: int) -> bool:
    """Whether deleting the copy on ``endpoint`` leaves at least ``rep`` live good
    copies (check right before executing a Remove or a Move's delete)."""
    live = registry.replicas(chunk)
    return len([ep for ep in live if ep != endpoint]) >= rep


def _plan_copies(
    registry: Registry,
    todo: list[tuple[int, float, str, int, _Chunk, list[ServerInfo]]],
    limits: Limits,
    rng: random.Random,
    busy: Mapping[str, int] | None,
    margin: int,
    leaving: str | None = None,
) -> RepairPlan:
    """Shared by repair and decommission: ``todo`` holds (live, live/rep, cid, need,
    chunk, counted copies); most endangered first."""
    todo.sort(key=lambda t: (t[0], t[1], t[2]))
    plan = RepairPlan()
    usage = _Usage(limits, busy)
    placer = Placer(registry, rng, exclude=(leaving,) if leaving else (), margin=margin)
    for n, (_, _, cid, need, ch, counted) in enumerate(todo):
        if len(plan) >= limits.max_total:
            plan.deferred += len(todo) - n
            break
        sources = sorted(counted, key=_read_key) or sorted(ch.readable, key=_read_key)
        source = next((s.endpoint for s in sources if usage.ok(s.endpoint)), None)
        if source is None:
            plan.deferred += 1
            continue
        saturated = usage.saturated()
        targets = placer.pick(
            need,
            holders=ch.holders,
            taken=[s.domain() for s in counted],
            exclude=saturated,
        )
        if not targets:
            if saturated and placer.pick(need, holders=ch.holders, size=0):
                plan.deferred += 1  # servers exist but are busy
            else:
                plan.unplaceable.append(cid)
            continue
        usage.take(source)
        for t in targets:
            usage.take(t)
        plan.append(Copy(cid, source, tuple(targets)))
    return plan


# -- repair ----------------------------------------------------------------------


def plan_repairs(
    registry: Registry,
    wanted: Wanted,
    limits: Limits | None = None,
    rng: random.Random | None = None,
    busy: Mapping[str, int] | None = None,
    force: bool = False,
    margin: int = CHUNK_MARGIN,
) -> RepairPlan:
    """Copies for every chunk with fewer than ``rep`` live good copies, most
    endangered first (1 copy left before 2 left), from the least loaded readable
    source to new targets chosen by placement (never a server holding the chunk
    in any state, domains spread), within ``limits``.

    Chunks with no readable copy go to ``plan.missing`` (not planned). While the
    registry's reports are incomplete nothing is planned (``complete`` False),
    unless ``force``: an incomplete picture makes most chunks look endangered.
    """
    limits = limits or Limits()
    rng = rng or random.Random(0)
    if not force and not registry.reports_complete():
        plan = RepairPlan()
        plan.complete = False
        return plan
    todo = []
    missing = []
    for cid, rep, _ in _iter_wanted(wanted):
        if rep < 1:
            continue
        ch = _chunk(registry, cid)
        live = ch.live
        if len(live) >= rep:
            continue
        if not live and not ch.readable:
            missing.append(cid)
            continue
        todo.append((len(live), len(live) / rep, cid, rep - len(live), ch, live))
    plan = _plan_copies(registry, todo, limits, rng, busy, margin)
    plan.missing = missing
    return plan


# -- trims -----------------------------------------------------------------------


def plan_trims(registry: Registry, wanted: Wanted, max_total: int | None = None) -> list[Remove]:
    """Removals of copies beyond ``rep`` (e.g. a server came back after its chunks
    were re-replicated), never leaving fewer than ``rep`` live good copies. Among
    the copies, remove the one whose loss keeps the widest domain spread, then
    the one on the fullest server. Corrupt copies are removed once the chunk
    has ``rep`` live good copies. Chunks with rep 0 are left to GC."""
    out: list[Remove] = []
    for cid, rep, _ in _iter_wanted(wanted):
        if max_total is not None and len(out) >= max_total:
            break
        if rep < 1:
            continue
        ch = _chunk(registry, cid)
        live = ch.live
        if len(live) >= rep:
            for s in ch.corrupt:
                if s.state in (ALIVE, DECOMMISSIONING):
                    out.append(Remove(cid, s.endpoint))
        keep = list(live)
        while len(keep) > rep:

            def score(s: ServerInfo, keep: list[ServerInfo] = keep) -> tuple[Any, ...]:
                rest = spread(x.domain() for x in keep if x is not s)
                return (rest, s.used_pct, s.load, s.endpoint)

            victim = max(keep, key=score)
            keep.remove(victim)
            out.append(Remove(cid, victim.endpoint))
    if max_total is not None:
        del out[max_total:]
    return out


# -- rebalance -------------------------------------------------------------------


def plan_rebalance(
    registry: Registry,
    wanted: Wanted,
    threshold_pct: float = 10.0,
    limits: Limits | None = None,
    rng: random.Random | None = None,
    sizes: Mapping[str, int] | None = None,
    default_size: int = CHUNK_ESTIMATE,
    busy: Mapping[str, int] | None = None,
    margin: int = CHUNK_MARGIN,
) -> list[Move]:
    """The HDFS balancer rule over alive servers: move copies from servers whose
    used% is above mean + threshold to servers below mean - threshold (or below
    the mean when only over-full ones exist; from above the mean when only
    under-full ones exist), until every server is within the threshold.

    Used% is estimated as moves are planned (chunk sizes from ``wanted``,
    ``sizes`` or ``default_size``). Every move lowers the spread of used%
    (sum of capacity * (pct - mean)^2), so planning terminates; a move never
    targets a server holding the chunk, never narrows its domain spread, and
    skips under-replicated chunks (repair comes first). Deterministic for a
    given rng and input order.
    """
    limits = limits or Limits()
    rng = rng or random.Random(0)
    servers = sorted(
        (s for s in registry._all_infos() if s.state == ALIVE and s.capacity > 0),
        key=lambda s: s.endpoint,
    )
    if len(servers) < 2:
        return []
    used = {s.endpoint: float(s.used) for s in servers}
    cap = {s.endpoint: float(s.capacity) for s in servers}
    free = {s.endpoint: float(s.free) for s in servers}
    mean = 100.0 * sum(used.values()) / sum(cap.values())
    hi, lo = mean + threshold_pct, mean - threshold_pct

    def pct(ep: str) -> float:
        return 100.0 * used[ep] / cap[ep]

    # candidate chunks of every server above the mean (bounded per server)
    per_source_cap = max(1000, 20 * limits.max_total)
    cands: dict[str, list[str]] = {ep: [] for ep in used if pct(ep) > mean}
    size_of: dict[str, int] = {}
    rep_of: dict[str, int] = {}
    if cands:
        for cid, rep, size in _iter_wanted(wanted, sizes, default_size):
            if rep < 1:
                continue
            ch = _chunk(registry, cid)
            live = ch.live
            if len(live) < rep:
                continue
            for s in live:
                lst = cands.get(s.endpoint)
                if lst is not None and len(lst) < per_source_cap:
                    lst.append(cid)
                    size_of[cid] = size
                    rep_of[cid] = rep
        for lst in cands.values():
            rng.shuffle(lst)

    # planned copies per chunk: cid -> (holders any state incl. corrupt, live endpoints)
    overlay: dict[str, tuple[set[str], list[str]]] = {}

    def state_of(cid: str) -> tuple[set[str], list[str]]:
        st = overlay.get(cid)
        if st is None:
            ch = _chunk(registry, cid)
            st = (ch.holders, [s.endpoint for s in ch.live])
            overlay[cid] = st
        return st

    def domains(eps: Iterable[str]) -> list[Any]:
        return [registry._info(ep).domain() for ep in eps]  # type: ignore[union-attr]

    usage = _Usage(limits, busy)
    exhausted: set[str] = set()
    moves: list[Move] = []
    while len(moves) < limits.max_total:
        eps = [ep for ep in used if usage.ok(ep)]
        over = [ep for ep in eps if pct(ep) > hi and ep not in exhausted]
        under = [ep for ep in eps if pct(ep) < lo]
        if over:
            sources = over
            targets = under or [ep for ep in eps if pct(ep) < mean]
        elif under and any(pct(ep) > hi for ep in used):
            break  # the over-full servers are busy or stuck: wait for the next round
        elif under:
            sources = [ep for ep in eps if pct(ep) > mean and ep not in exhausted]
            targets = under
        else:
            break
        if not sources or not targets:
            break
        src = max(sources, key=lambda ep: (pct(ep), ep))
        found = _find_move(
            src, sorted(targets, key=lambda ep: (pct(ep), ep)), cands.get(src, []),
            state_of, domains, size_of, used, cap, free, hi, margin,
        )  # fmt: skip
        if found is None:
            exhausted.add(src)
            continue
        cid, tgt, idx = found
        del cands[src][idx]
        size = size_of[cid]
        holders, live = state_of(cid)
        holders.add(tgt)
        holders.discard(src)
        live.remove(src)
        live.append(tgt)
        used[src] -= size
        used[tgt] += size
        free[src] += size
        free[tgt] -= size
        usage.take(src)
        usage.take(tgt)
        moves.append(Move(cid, src, tgt, size))
    return moves


def _find_move(
    src: str,
    targets: list[str],
    cands: list[str],
    state_of: Any,
    domains: Any,
    size_of: dict[str, int],
    used: dict[str, float],
    cap: dict[str, float],
    free: dict[str, float],
    hi: float,
    margin: int,
) -> tuple[str, str, int] | None:
    """The first (chunk, target) pair that lowers the imbalance, fits the target
    and does not narrow the chunk's domain spread."""
    xs = used[src] / cap[src]
    for tgt in targets:
        xt = used[tgt] / cap[tgt]
        for idx, cid in enumerate(cands):
            size = size_of[cid]
            # variance drops iff 2 (xs - xt) > size (1/cs + 1/ct)
            if 2 * (xs - xt) <= size * (1 / cap[src] + 1 / cap[tgt]):
                continue
            if 100.0 * (used[tgt] + size) / cap[tgt] > hi or free[tgt] - size < margin:
                continue
            holders, live = state_of(cid)
            if tgt in holders or src not in live:
                continue
            after = [ep for ep in live if ep != src] + [tgt]
            if spread(domains(after)) < spread(domains(live)):
                continue
            return cid, tgt, idx
    return None


# -- decommission ----------------------------------------------------------------


def plan_decommission(
    registry: Registry,
    endpoint: str,
    wanted: Wanted,
    limits: Limits | None = None,
    rng: random.Random | None = None,
    busy: Mapping[str, int] | None = None,
    margin: int = CHUNK_MARGIN,
) -> RepairPlan:
    """Copies so that every chunk on ``endpoint`` has ``rep`` live good copies
    without it. The source is the least loaded other live copy, else the leaving
    server itself; targets never include the leaving server."""
    limits = limits or Limits()
    rng = rng or random.Random(0)
    todo = []
    missing = []
    for cid, rep, _ in _iter_wanted(wanted):
        if rep < 1:
            continue
        ch = _chunk(registry, cid)
        if not any(s.endpoint == endpoint for s in ch.good):
            continue
        others = [s for s in ch.live if s.endpoint != endpoint]
        if len(others) >= rep:
            continue
        if not ch.readable:
            missing.append(cid)  # the leaving server is dead and no one else has it
            continue
        todo.append((len(others), len(others) / rep, cid, rep - len(others), ch, others))
    plan = _plan_copies(registry, todo, limits, rng, busy, margin, leaving=endpoint)
    plan.missing = missing
    return plan


def decommission_done(registry: Registry, endpoint: str, wanted: Wanted) -> bool:
    """True when no wanted chunk needs the copy on ``endpoint``: it can be retired.
    Fails closed while the registry's reports are incomplete."""
    if not registry.reports_complete():
        return False
    info = registry._info(endpoint)
    if info is None:
        return False
    for cid, rep, _ in _iter_wanted(wanted):
        if rep < 1:
            continue
        ch = _chunk(registry, cid)
        if not any(s.endpoint == endpoint for s in ch.good):
            continue
        if len([s for s in ch.live if s.endpoint != endpoint]) < rep:
            return False
    return True


# -- fsck ------------------------------------------------------------------------


def fsck(registry: Registry, wanted: Wanted, cap: int = 100) -> dict[str, Any]:
    """Replication health of the wanted chunks. ``healthy``: at least rep live good
    copies; ``under_replicated``: fewer, but readable; ``missing``: no readable
    copy. While reports are incomplete (``complete`` False) a chunk with no
    known copy is counted ``unknown``, never ``missing``. Id lists hold at most
    ``cap`` entries each."""
    complete = registry.reports_complete()
    counts = {
        "total": 0,
        "healthy": 0,
        "under_replicated": 0,
        "missing": 0,
        "unknown": 0,
        "over_replicated": 0,
        "corrupt_replicas": 0,
    }
    lists: dict[str, list[str]] = {"under_replicated": [], "missing": [], "unknown": []}
    for cid, rep, _ in _iter_wanted(wanted):
        counts["total"] += 1
        ch = _chunk(registry, cid)
        live = len(ch.live)
        counts["corrupt_replicas"] += len(ch.corrupt)
        if live >= rep:
            counts["healthy"] += 1
            if live > rep:
                counts["over_replicated"] += 1
            continue
        state = "under_replicated" if ch.readable else "missing" if complete else "unknown"
        counts[state] += 1
        if len(lists[state]) < cap:
            lists[state].append(cid)
    return {
        "complete": complete,
        "ok": complete and counts["healthy"] == counts["total"],
        **counts,
        "lists": lists,
    }


__all__ = [
    "Copy",
    "Limits",
    "Move",
    "Remove",
    "RepairPlan",
    "decommission_done",
    "fsck",
    "plan_decommission",
    "plan_rebalance",
    "plan_repairs",
    "plan_trims",
    "safe_to_remove",
]
