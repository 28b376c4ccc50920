"""The metadata leader's soft state about chunkservers: who exists, who is alive,
and where every chunk's replicas are.

Nothing here is replicated by Raft: after a leader change the registry starts
empty and is rebuilt from chunkserver registrations and full chunk reports (as
in GFS/HDFS). Until every live server has finished its report, locations are
incomplete and ``reports_complete()`` says so: GC and "chunk is missing"
verdicts must fail closed meanwhile.

Pure: no I/O, no clock (callers pass ``now``), no randomness.

Memory: a cluster may track millions of chunks, so a chunk costs one dict entry
``bytes(32) -> tuple[int, ...]`` of server indexes (indexes are never reused).
There is no per-server chunk set; the rare operations that need one (a server
re-registering, ``chunks_on``) scan the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

ALIVE = "alive"
DEAD = "dead"
DECOMMISSIONING = "decommissioning"
RETIRED = "retired"
STATES = (ALIVE, DEAD, DECOMMISSIONING, RETIRED)

# the admin part of a server's state survives death and re-registration
_ACTIVE = "active"


def chunk_key(cid: str) -> bytes:
    """The compact key of a chunk id (64 lowercase hex characters)."""
    if not isinstance(cid, str) or len(cid) != 64:
        raise ValueError(f"chunk id must be 64 hex characters, got {cid!r}")
    return bytes.fromhex(cid)


@dataclass(slots=True)
class ServerInfo:
    """One chunkserver as the leader knows it. ``state`` is derived:
    retired > dead > decommissioning > alive."""

    endpoint: str
    index: int
    node: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stat: dict[str, Any] = field(default_factory=dict)
    registered_at: float = 0.0
    last_seen: float = 0.0
    alive: bool = True
    admin: str = _ACTIVE  # "active" | "decommissioning" | "retired"
    reporting: bool = True  # a full chunk report is in progress
    replicas: int = 0  # chunk locations the registry holds for it (incl. corrupt)

    @property
    def state(self) -> str:
        if self.admin == RETIRED:
            return RETIRED
        if not self.alive:
            return DEAD
        if self.admin == DECOMMISSIONING:
            return DECOMMISSIONING
        return ALIVE

    @property
    def capacity(self) -> int:
        return int(self.stat.get("capacity", 0) or 0)

    @property
    def used(self) -> int:
        return int(self.stat.get("used", 0) or 0)

    @property
    def free(self) -> int:
        return int(self.stat.get("free", 0) or 0)

    @property
    def load(self) -> int:
        return int(self.stat.get("load", 0) or 0)

    @property
    def used_pct(self) -> float:
        cap = self.capacity
        return 100.0 * self.used / cap if cap > 0 else 0.0

    @property
    def report_done(self) -> bool:
        return not self.reporting

    def domain(self) -> tuple[str | None, str | None, str]:
        """Failure domains, widest first: (zone, rack, node). A missing label is
        None; a missing node name falls back to the endpoint."""
        return (self.labels.get("zone"), self.labels.get("rack"), self.node or self.endpoint)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "node": self.node,
            "labels": dict(self.labels),
            "stat": dict(self.stat),
            "state": self.state,
            "registered_at": self.registered_at,
            "last_seen": self.last_seen,
            "report_done": self.report_done,
            "replicas": self.replicas,
        }


def _read_key(s: ServerInfo) -> tuple[int, int, str]:
    return (s.load, -s.free, s.endpoint)


class Registry:
    """Chunkservers and chunk locations (soft state on the metadata leader).

    ``settle``: seconds after ``started`` during which ``reports_complete(now)``
    stays False, so servers alive before a leader change have time to register
    (set it to a couple of heartbeat intervals).
    """

    def __init__(self, started: float = 0.0, settle: float = 0.0) -> None:
        self.started = started
        self.settle = settle
        self._servers: list[ServerInfo] = []  # by index; never shrinks
        self._by_ep: dict[str, int] = {}
        self._loc: dict[bytes, tuple[int, ...]] = {}  # chunk -> holder indexes
        self._corrupt: dict[bytes, tuple[int, ...]] = {}  # chunk -> holders with a bad copy
        # during a re-report: corrupt chunks of that server listed so far
        self._corrupt_seen: dict[int, set[bytes]] = {}

    # -- servers ---------------------------------------------------------------

    def register(
        self,
        endpoint: str,
        node: str,
        stat: dict[str, Any],
        labels: dict[str, str] | None = None,
        now: float = 0.0,
    ) -> ServerInfo:
        """A server (re)joins. Its chunk list will be re-reported, so its known
        locations are dropped and a report is marked in progress. A dead server
        comes back alive; an admin decommission/retire survives."""
        i = self._by_ep.get(endpoint)
        if i is None:
            i = len(self._servers)
            self._servers.append(ServerInfo(endpoint=endpoint, index=i))
            self._by_ep[endpoint] = i
        else:
            self._drop_server_locations(i)
        if any(i in h for h in self._corrupt.values()):
            self._corrupt_seen[i] = set()
        s = self._servers[i]
        s.node = str(node)
        s.labels = {str(k): str(v) for k, v in (labels or {}).items()}
        s.stat = dict(stat)
        s.registered_at = now
        s.last_seen = now
        s.alive = True
        s.reporting = True
        return replace(s)

    def report(self, endpoint: str, ids: Iterable[str], done: bool) -> bool:
        """One page of a server's full chunk report; ``done`` on the last page.
        False if the server is unknown (it must register first)."""
        i = self._by_ep.get(endpoint)
        if i is None:
            return False
        seen = self._corrupt_seen.get(i)
        for cid in ids:
            k = chunk_key(cid)
            c = self._corrupt.get(k)
            if c is not None and i in c:  # still the bad copy: keep it out
                if seen is not None:
                    seen.add(k)
                continue
            self._add(k, i)
        if done and self._servers[i].reporting:
            self._servers[i].reporting = False
            # corrupt marks of this server that the report did not list are gone
            seen = self._corrupt_seen.pop(i, None)
            if seen is not None:
                for k in [k for k, h in self._corrupt.items() if i in h and k not in seen]:
                    self._uncorrupt(k, i)
        return True

    def heartbeat(
        self,
        endpoint: str,
        stat: dict[str, Any],
        added: Iterable[str] = (),
        removed: Iterable[str] = (),
        now: float = 0.0,
    ) -> bool:
        """Fresh stat plus incremental chunk changes. False if the server is
        unknown or was declared dead: it must re-register (with a full report),
        since changes it made while presumed dead may be lost."""
        i = self._by_ep.get(endpoint)
        if i is None:
            return False
        s = self._servers[i]
        if not s.alive:
            return False
        s.stat = dict(stat)
        s.last_seen = now
        for cid in added:
            k = chunk_key(cid)
            self._uncorrupt(k, i)  # a fresh copy was written
            self._add(k, i)
        for cid in removed:
            k = chunk_key(cid)
            self._uncorrupt(k, i)
            self._remove(k, i)
        return True

    def expire(self, now: float, timeout: float) -> list[str]:
        """Mark servers silent for more than ``timeout`` seconds dead; return
        the newly dead. Their replicas stop counting as live (they are kept, so
        ``all_replicas`` still shows them)."""
        out = []
        for s in self._servers:
            if s.alive and now - s.last_seen > timeout:
                s.alive = False
                out.append(s.endpoint)
        return out

    def set_state(self, endpoint: str, state: str) -> None:
        """Admin transitions: "decommissioning", "retired", "alive" (cancel a
        decommission or un-retire) or "dead" (declare dead now)."""
        s = self._get(endpoint)
        if state == DECOMMISSIONING:
            s.admin = DECOMMISSIONING
        elif state == RETIRED:
            s.admin = RETIRED
        elif state == ALIVE:
            s.admin = _ACTIVE
        elif state == DEAD:
            s.alive = False
        else:
            raise ValueError(f"unknown server state {state!r}; expected one of {STATES}")

    def forget(self, endpoint: str) -> None:
        """Drop a server's locations and mark it retired and dead (its index stays)."""
        i = self._by_ep[endpoint]
        self._drop_server_locations(i)
        s = self._servers[i]
        s.admin, s.alive = RETIRED, False

    def server(self, endpoint: str) -> ServerInfo | None:
        i = self._by_ep.get(endpoint)
        return replace(self._servers[i]) if i is not None else None

    def state(self, endpoint: str) -> str | None:
        i = self._by_ep.get(endpoint)
        return self._servers[i].state if i is not None else None

    def servers(self) -> list[ServerInfo]:
        """Snapshots of every known server (for status)."""
        return [replace(s) for s in self._servers]

    def summary(self) -> dict[str, Any]:
        """Counts by state, capacity/used/free of the servers that count (alive and
        decommissioning), and the number of chunks with a known location."""
        states = dict.fromkeys(STATES, 0)
        cap = used = free = 0
        for s in self._servers:
            states[s.state] += 1
            if s.state in (ALIVE, DECOMMISSIONING):
                cap += s.capacity
                used += s.used
                free += s.free
        return {
            "servers": len(self._servers),
            "states": states,
            "capacity": cap,
            "used": used,
            "free": free,
            "used_pct": 100.0 * used / cap if cap else 0.0,
            "chunks": len(self._loc),
            "corrupt_replicas": sum(len(v) for v in self._corrupt.values()),
            "reports_complete": self.reports_complete(),
        }

    def reports_complete(self, now: float | None = None) -> bool:
        """True once every live server has finished its full report (and, when
        ``now`` is given, the settle window after ``started`` has passed). While
        False, chunk locations may be incomplete: never conclude a chunk is
        missing or unreferenced copies are the only ones."""
        if now is not None and now < self.started + self.settle:
            return False
        return not any(s.alive and s.admin != RETIRED and s.reporting for s in self._servers)

    # -- replicas --------------------------------------------------------------

    def add_replica(self, chunk: str, endpoint: str) -> bool:
        """Record a copy (e.g. a write or a repair copy that succeeded). False if
        the server is unknown."""
        i = self._by_ep.get(endpoint)
        if i is None:
            return False
        k = chunk_key(chunk)
        self._uncorrupt(k, i)
        self._add(k, i)
        return True

    def remove_replica(self, chunk: str, endpoint: str) -> bool:
        """Forget a copy (deleted, or found absent). False if nothing was known."""
        i = self._by_ep.get(endpoint)
        if i is None:
            return False
        k = chunk_key(chunk)
        had = self._uncorrupt(k, i)
        return self._remove(k, i) or had

    def mark_corrupt(self, chunk: str, endpoint: str) -> bool:
        """A reader or scrubber found a bad copy: it stops counting (and serving
        reads) until the server reports a fresh copy or its removal."""
        i = self._by_ep.get(endpoint)
        if i is None:
            return False
        k = chunk_key(chunk)
        # unknown copy: only worth remembering while the server is re-reporting
        if not self._remove(k, i) and not self._servers[i].reporting:
            return False
        cur = self._corrupt.get(k, ())
        if i not in cur:
            self._corrupt[k] = (*cur, i)
            self._servers[i].replicas += 1  # still on its disk
        seen = self._corrupt_seen.get(i)
        if seen is not None:
            seen.add(k)
        return True

    def replicas(self, chunk: str) -> list[str]:
        """Good copies on alive servers, least loaded first (then most free)."""
        return [s.endpoint for s in self._sorted(self._loc.get(chunk_key(chunk), ()), (ALIVE,))]

    def readable(self, chunk: str) -> list[str]:
        """Copies a client may read: alive servers first, then decommissioning
        ones (still serving, but no longer counted)."""
        holders = self._loc.get(chunk_key(chunk), ())
        return [s.endpoint for s in self._sorted(holders, (ALIVE,))] + [
            s.endpoint for s in self._sorted(holders, (DECOMMISSIONING,))
        ]

    def all_replicas(self, chunk: str) -> list[str]:
        """Every known good copy, whatever the server's state (not corrupt ones)."""
        return [self._servers[i].endpoint for i in self._loc.get(chunk_key(chunk), ())]

    def corrupt_replicas(self, chunk: str) -> list[str]:
        return [self._servers[i].endpoint for i in self._corrupt.get(chunk_key(chunk), ())]

    def live_count(self, chunk: str) -> int:
        """Good copies on alive servers: what counts toward a chunk's replication."""
        sv = self._servers
        return sum(1 for i in self._loc.get(chunk_key(chunk), ()) if sv[i].state == ALIVE)

    def locate(self, ids: Iterable[str]) -> dict[str, list[str]]:
        """For clients: readable copies of each chunk (see ``readable``)."""
        return {cid: self.readable(cid) for cid in ids}

    def chunks_on(self, endpoint: str) -> Iterator[str]:
        """Chunk ids with a good copy on this server (scans the table)."""
        i = self._by_ep.get(endpoint)
        if i is None:
            return
        for k, holders in self._loc.items():
            if i in holders:
                yield k.hex()

    def iter_chunks(self) -> Iterator[str]:
        """Every chunk id with at least one known good copy."""
        for k in self._loc:
            yield k.hex()

    def __len__(self) -> int:
        return len(self._loc)

    # -- for the planners (same package) --------------------------------------

    def _info(self, endpoint: str) -> ServerInfo | None:
        i = self._by_ep.get(endpoint)
        return self._servers[i] if i is not None else None

    def _all_infos(self) -> list[ServerInfo]:
        return self._servers

    def _holders(self, chunk: str) -> tuple[list[ServerInfo], list[ServerInfo]]:
        """(servers with a good copy, servers with a corrupt copy), any state."""
        k = chunk_key(chunk)
        sv = self._servers
        return [sv[i] for i in self._loc.get(k, ())], [sv[i] for i in self._corrupt.get(k, ())]

    # -- internals -------------------------------------------------------------

    def _get(self, endpoint: str) -> ServerInfo:
        i = self._by_ep.get(endpoint)
        if i is None:
            raise KeyError(f"unknown chunkserver {endpoint!r}")
        return self._servers[i]

    def _sorted(self, holders: Iterable[int], states: tuple[str, ...]) -> list[ServerInfo]:
        sv = self._servers
        return sorted((sv[i] for i in holders if sv[i].state in states), key=_read_key)

    def _add(self, k: bytes, i: int) -> None:
        cur = self._loc.get(k)
        if cur is None:
            self._loc[k] = (i,)
        elif i not in cur:
            self._loc[k] = (*cur, i)
        else:
            return
        self._servers[i].replicas += 1

    def _remove(self, k: bytes, i: int) -> bool:
        cur = self._loc.get(k)
        if cur is None or i not in cur:
            return False
        rest = tuple(j for j in cur if j != i)
        if rest:
            self._loc[k] = rest
        else:
            del self._loc[k]
        self._servers[i].replicas -= 1
        return True

    def _uncorrupt(self, k: bytes, i: int) -> bool:
        cur = self._corrupt.get(k)
        if cur is None or i not in cur:
            return False
        rest = tuple(j for j in cur if j != i)
        if rest:
            self._corrupt[k] = rest
        else:
            del self._corrupt[k]
        self._servers[i].replicas -= 1
        return True

    def _drop_server_locations(self, i: int) -> None:
        """Forget every good location of server i (it will re-report). Corrupt
        marks stay until the report ends: a report lists what is on disk, not
        what is good, so a listed bad copy stays out; an unlisted one is gone."""
        if self._servers[i].replicas == 0:
            return
        table = self._loc
        drop = []
        for k, holders in table.items():
            if i in holders:
                rest = tuple(j for j in holders if j != i)
                if rest:
                    table[k] = rest
                else:
                    drop.append(k)
        for k in drop:
            del table[k]
        self._servers[i].replicas = sum(1 for h in self._corrupt.values() if i in h)
