"""The leader's side of dfs-admin: status figures, per-file fsck, and admin actions
(rebalance, decommission, scrub, Raft leadership transfer).

Called on the driver thread from ``MetadataNode._serve_leader_op`` (op ``admin``
and ``fsck``), so it may read the namespace and the registry directly; work
on chunkservers is started here and finished by the maintenance rounds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgpack

from dfs import errors, paths, wire
from dfs.errors import DfsError
from metadata import repair
from metadata.inodes import M_MODE, M_REP, S_IFMT, S_IFREG, Dir, Inode, unpack_extents
from metadata.registry import ALIVE, DECOMMISSIONING, RETIRED

if TYPE_CHECKING:
    from metadata.server import MetadataNode

log = logging.getLogger("dfs.metadata.admin")

FSCK_LIMIT = 1000  # unhealthy files listed by default
PLAN_LIMIT = 10_000  # moves a dry-run rebalance prints at most
SIZES_TTL = 1.0  # seconds the chunk-size table of status is reused
STATUS_WALK_FILES = 200_000  # above this, status skips the per-chunk size walk (it blocks)


def walk_files(ns: Any, path: str = "/") -> Iterator[tuple[str, Inode]]:
    """(path, inode) of every regular file under ``path`` (hard links: once per name)."""
    node = ns._lookup(path)
    if type(node) is not Dir:
        if node.meta[M_MODE] & S_IFMT == S_IFREG:
            yield path, node
        return
    stack: list[tuple[str, Dir]] = [(path.rstrip("/"), node)]
    while stack:
        base, d = stack.pop()
        for name in sorted(d.entries):
            child = d.entries[name]
            p = f"{base}/{name}"
            if type(child) is Dir:
                stack.append((p, child))
            elif child.meta[M_MODE] & S_IFMT == S_IFREG:
                yield p, child


def chunk_sizes(ns: Any) -> dict[str, int]:
    """Every referenced chunk's length (from the files' extents)."""
    out: dict[str, int] = {}
    for _p, f in walk_files(ns):
        for cid, n in unpack_extents(f.data, f.size):
            if cid is not None:
                out[cid.hex()] = max(n, out.get(cid.hex(), 0))
    return out


class AdminOps:
    def __init__(self, node: MetadataNode) -> None:
        self.node = node
        self._sizes: dict[str, int] = {}
        self._sizes_at: tuple[int, float] = (-1, 0.0)  # (applied index, monotonic time)

    def sizes(self) -> dict[str, int]:
        """chunk_sizes, recomputed at most every few seconds (status is polled)."""
        applied, now = self.node.driver.raft.applied, time.monotonic()
        at, when = self._sizes_at
        if applied != at and now - when > SIZES_TTL:
            big = self.node.ns.n_files > STATUS_WALK_FILES
            self._sizes = {} if big else chunk_sizes(self.node.ns)
            self._sizes_at = (applied, now)
        return self._sizes

    # ------------------------------------------------------------ dispatch

    def admin(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        fn = getattr(self, "do_" + action.replace("-", "_"), None)
        if fn is None or not action.replace("-", "_").isidentifier():
            raise DfsError(errors.UNKNOWN_OP, f"unknown admin action {action!r}")
        try:
            return fn(args)
        except (TypeError, ValueError) as exc:
            raise DfsError("EINVAL", f"admin {action}: bad arguments ({exc})") from None

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        node, reg = self.node, self.node.registry
        ns_stat = {k: v for k, v in node.ns.query("statfs", {}).items() if k != "ok"}
        servers = [s.to_dict() for s in reg.servers()]
        counted = [s for s in reg.servers() if s.state in (ALIVE, DECOMMISSIONING)]
        stored = sum(s.used for s in counted)
        sizes = self.sizes()
        unique = sum(sizes.values())
        copies = sum(len(reg.readable(c)) for c in sizes)  # on the servers counted in stored
        health = node.maintenance.fsck()
        return {
            "leader": node.driver.leader_endpoint(),
            "now": time.monotonic(),  # the leader's clock, for last_seen ages
            "node": {"id": node.id, "endpoint": node.endpoint, **node.driver.status()},
            "peers": {str(k): v for k, v in node.peers.items()},
            "voters": {str(k): v for k, v in node.driver.voters().items()},
            "chunkservers": servers,
            "registry": reg.summary(),
            "namespace": ns_stat,
            "cluster": {
                "files": ns_stat.get("files", 0),
                "logical_bytes": ns_stat.get("logical_bytes", 0),
                "referenced_bytes": ns_stat.get("referenced_bytes", 0),
                "unique_bytes": unique,
                "stored_bytes": stored,
                "replica_bytes": copies and unique * copies / max(1, len(sizes)),
                "dedup_ratio": (ns_stat.get("referenced_bytes", 0) / unique) if unique else 1.0,
                # bytes the unique chunks would take with their copies, over what disks hold
                "compression_ratio": (unique * copies / len(sizes) / stored)
                if stored and sizes
                else 1.0,
                "chunks": health["total"],
                "healthy": health["healthy"],
                "under_replicated": health["under_replicated"],
                "missing": health["missing"],
                "unknown": health["unknown"],
                "over_replicated": health["over_replicated"],
                "corrupt_replicas": health["corrupt_replicas"],
                "reports_complete": health["complete"],
            },
            "maintenance": node.maintenance.status(),
        }

    # ------------------------------------------------------------ fsck

    def fsck(self, path: str | None, limit: int | None) -> dict[str, Any]:
        """Per file: chunks missing or under-replicated. ``ok`` only when the
        registry's picture is complete and every chunk has its R live copies."""
        ns, reg = self.node.ns, self.node.registry
        try:
            path = paths.normalize(path or "/")
        except ValueError as exc:
            raise DfsError("EINVAL", str(exc)) from None
        limit = FSCK_LIMIT if limit is None else limit
        complete = reg.reports_complete()
        files: list[dict[str, Any]] = []
        totals = {
            "files": 0,
            "files_unhealthy": 0,
            "chunks": 0,
            "healthy": 0,
            "under_replicated": 0,
            "missing": 0,
            "unknown": 0,
        }
        for p, f in walk_files(ns, path):
            totals["files"] += 1
            rep = f.meta[M_REP]
            bad: dict[str, list[str]] = {"under_replicated": [], "missing": [], "unknown": []}
            n = 0
            for cid, _len in unpack_extents(f.data, f.size):
                if cid is None:
                    continue
                n += 1
                h = cid.hex()
                live = reg.live_count(h)
                if live >= rep:
                    totals["healthy"] += 1
                    continue
                if reg.readable(h):
                    state = "under_replicated"
                else:
                    state = "missing" if complete else "unknown"
                totals[state] += 1
                bad[state].append(h)
            totals["chunks"] += n
            if any(bad.values()):
                totals["files_unhealthy"] += 1
                if len(files) < limit:
                    files.append(
                        {
                            "path": p,
                            "rep": rep,
                            "chunks": n,
                            **{k: len(v) for k, v in bad.items()},
                            "ids": {k: v[:8] for k, v in bad.items() if v},
                        }
                    )
        return {
            "path": path,
            "complete": complete,
            "ok": complete and totals["files_unhealthy"] == 0,
            **totals,
            "files_listed": files,
            "maintenance": self.node.maintenance.status(),
        }

    # ------------------------------------------------------------ actions

    def _server(self, name: Any) -> str:
        """An endpoint, or a node name / endpoint suffix that names one server."""
        if not isinstance(name, str) or not name:
            raise DfsError("EINVAL", "name a chunkserver (endpoint or node name)")
        servers = self.node.registry.servers()
        exact = [s.endpoint for s in servers if name in (s.endpoint, s.node)]
        if exact:
            return exact[0]
        found = [s.endpoint for s in servers if s.endpoint.endswith(name)]
        if len(found) == 1:
            return found[0]
        raise DfsError("ENOENT", f"no chunkserver named {name!r}")

    def do_rebalance(self, a: dict[str, Any]) -> dict[str, Any]:
        threshold = float(a.get("threshold", 10.0))
        if not 0 < threshold <= 100:
            raise DfsError("EINVAL", "threshold must be in (0, 100] percentage points")
        bandwidth = max(0.0, float(a.get("bandwidth", 0) or 0))
        m, reg = self.node.maintenance, self.node.registry
        if not reg.reports_complete():
            raise DfsError(errors.UNAVAILABLE, "chunk reports are incomplete; try again shortly")
        sizes = chunk_sizes(self.node.ns)
        if a.get("dry_run"):
            wanted = m.wanted()
            moves = repair.plan_rebalance(
                reg,
                wanted,
                threshold,
                repair.Limits(per_server=1 << 30, max_total=PLAN_LIMIT),
                sizes=sizes,
            )
            return {
                "dry_run": True,
                "excess": m.excess(threshold),
                "moves": [[mv.chunk, mv.source, mv.target, mv.size] for mv in moves],
                "servers": self._usage(),
            }
        rb = m.start_rebalance(threshold, bandwidth, sizes)
        return {"rebalance": rb.to_dict(), "servers": self._usage()}

    def do_rebalance_status(self, a: dict[str, Any]) -> dict[str, Any]:
        m = self.node.maintenance
        rb = m.rebalance
        if rb is not None:
            rb.excess = m.excess(rb.threshold)
        return {"rebalance": rb.to_dict() if rb else None, "servers": self._usage()}

    def do_rebalance_stop(self, a: dict[str, Any]) -> dict[str, Any]:
        m = self.node.maintenance
        if m.rebalance is not None and not m.rebalance.done:
            m.rebalance.done = True
        return {"rebalance": m.rebalance.to_dict() if m.rebalance else None}

    def _usage(self) -> list[dict[str, Any]]:
        return [
            {"endpoint": s.endpoint, "state": s.state, "used": s.used, "capacity": s.capacity,
             "used_pct": s.used_pct}
            for s in self.node.registry.servers()
            if s.state in (ALIVE, DECOMMISSIONING)
        ]  # fmt: skip

    def do_decommission(self, a: dict[str, Any]) -> dict[str, Any]:
        ep = self._server(a.get("server"))
        reg = self.node.registry
        state = reg.state(ep)
        if state == RETIRED:
            return self.do_decommission_status({"server": ep})
        others = [s for s in reg.servers() if s.state == ALIVE and s.endpoint != ep]
        if not others:
            raise DfsError("EINVAL", "no other alive chunkserver could take its chunks")
        self.node.maintenance.set_admin_state(ep, DECOMMISSIONING)
        log.info("decommissioning chunkserver %s", ep)
        return self.do_decommission_status({"server": ep})

    def do_recommission(self, a: dict[str, Any]) -> dict[str, Any]:
        ep = self._server(a.get("server"))
        self.node.maintenance.set_admin_state(ep, "active")
        return self.do_decommission_status({"server": ep})

    def do_decommission_status(self, a: dict[str, Any]) -> dict[str, Any]:
        ep = self._server(a.get("server"))
        reg = self.node.registry
        remaining = 0
        total = 0
        for cid, rep in self.node.maintenance.wanted():
            if ep not in reg.all_replicas(cid):
                continue
            total += 1
            if len([x for x in reg.replicas(cid) if x != ep]) < rep:
                remaining += 1
        return {
            "server": ep,
            "state": reg.state(ep),
            "chunks": total,
            "remaining": remaining,
            "complete": reg.reports_complete(),
        }

    def do_scrub(self, a: dict[str, Any]) -> dict[str, Any]:
        """Start a scrub pass on every alive (or the named) chunkserver."""
        reg = self.node.registry
        if a.get("server"):
            targets = [self._server(a["server"])]
        else:
            targets = [s.endpoint for s in reg.servers() if s.state in (ALIVE, DECOMMISSIONING)]
        for ep in targets:
            self.node.peer_rpc.call_async(ep, "cs.scrub", {}, timeout=5)
        return {"servers": targets}

    def do_transfer_leader(self, a: dict[str, Any]) -> dict[str, Any]:
        """Hand leadership to another voter (the most caught-up one if none named)."""
        driver = self.node.driver
        to = a.get("to")
        if isinstance(to, str):
            ids = [i for i, ep in self.node.peers.items() if ep == to or str(i) == to]
            if not ids:
                raise DfsError("ENOENT", f"no metadata node {to!r}")
            to = ids[0]
        if to is None:
            st = driver.raft.progress
            cands = [(getattr(pr, "match", 0), i) for i, pr in st.items() if i != self.node.id]
            if not cands:
                raise DfsError("EINVAL", "no other voter to transfer leadership to")
            to = max(cands)[1]
        if not isinstance(to, int) or to not in self.node.peers:
            raise DfsError("EINVAL", f"unknown metadata node {to!r}")
        if to == self.node.id:
            return {"to": to, "endpoint": self.node.peers[to], "already": True}
        try:
            driver.raft.transfer_leadership(to)
        except ValueError as exc:
            raise DfsError("EINVAL", str(exc)) from None
        return {"to": to, "endpoint": self.node.peers[to]}

    # ------------------------------------------------------------ membership

    DEFERRED_ACTIONS = ("raft_add", "raft_remove", "set_limits")  # answered once committed

    def admin_deferred(self, action: str, a: dict[str, Any], reply: Callable[[Any], None]) -> None:
        """raft_add / raft_remove / set_limits: ``reply`` gets the result map or a
        DfsError once the change is committed (or refused)."""
        if action == "set_limits":
            self._set_limits(a, reply)
            return
        try:
            node_id = a.get("node")
            if isinstance(node_id, str) and node_id.isdigit():
                node_id = int(node_id)
            if type(node_id) is not int or node_id <= 0:
                raise DfsError(
                    "EINVAL", f"a metadata node id is a positive integer, not {node_id!r}"
                )
            if action == "raft_add":
                self._raft_add(node_id, a.get("endpoint"), reply)
            else:
                self._raft_remove(node_id, reply)
        except DfsError as exc:
            reply(exc)

    def _raft_add(self, node_id: int, endpoint: Any, reply: Callable[[Any], None]) -> None:
        """Record the new member's endpoint in the log (with any voter's the
        replicated map lacks), then add it as a voter (effective when appended)."""
        driver = self.node.driver
        try:
            endpoint = wire.check_endpoint(endpoint)
        except ValueError as exc:
            raise DfsError("EINVAL", f"raft add: {exc}") from None
        voters = driver.raft.voters
        if node_id in voters:
            known = driver.endpoint_of(node_id)
            if known != endpoint:
                raise DfsError("EEXIST", f"metadata node {node_id} is already a voter ({known})")
            reply({"node": node_id, "endpoint": endpoint, "voters": list(voters), "already": True})
            return
        for v in voters:
            if driver.endpoint_of(v) == endpoint:
                raise DfsError("EEXIST", f"{endpoint} is already metadata node {v}")
        replicated = self.node.machine.peers
        sets = {str(v): driver.endpoint_of(v) for v in voters if v not in replicated}
        sets = {k: ep for k, ep in sets.items() if ep}
        sets[str(node_id)] = endpoint

        def changed(result: Any) -> None:
            if isinstance(result, DfsError):
                reply(result)
                return
            log.info("metadata node %d (%s) added: voters %s", node_id, endpoint, result["voters"])
            reply({"node": node_id, "endpoint": endpoint, **result})

        def recorded(result: Any) -> None:
            if isinstance(result, DfsError):
                reply(result)
            elif not result.get("ok"):
                reply(DfsError(result.get("code", "EIO"), result.get("msg", "")))
            else:
                driver.propose_conf_change("add", node_id, changed)

        self._propose_peers({"set": sets}, recorded)

    def _raft_remove(self, node_id: int, reply: Callable[[Any], None]) -> None:
        """Remove a voter. The leader may remove itself: once the change commits it
        steps down and hands leadership to the most caught-up voter (TimeoutNow)."""
        driver = self.node.driver
        voters = driver.raft.voters
        if node_id not in voters:
            raise DfsError("ENOENT", f"metadata node {node_id} is not a voter {list(voters)}")
        if len(voters) == 1:
            raise DfsError("EINVAL", "cannot remove the last metadata node")
        endpoint = driver.endpoint_of(node_id)

        def changed(result: Any) -> None:
            if isinstance(result, DfsError):
                reply(result)
                return
            log.info("metadata node %d removed: voters %s", node_id, result["voters"])
            if driver.is_leader:  # tidy the map; harmless if it never commits
                self._propose_peers({"drop": [node_id]}, lambda _r: None)
            reply({"node": node_id, "endpoint": endpoint, **result})

        driver.propose_conf_change("remove", node_id, changed)

    def _set_limits(self, a: dict[str, Any], reply: Callable[[Any], None]) -> None:
        """Cluster-wide limits (inline_budget) live in the namespace, changed
        through the log so that every replica holds the same ones."""

        def done(result: Any) -> None:
            if isinstance(result, dict) and not result.get("ok"):
                result = DfsError(result.get("code", "EIO"), result.get("msg", ""))
            elif isinstance(result, dict):
                result = {k: v for k, v in result.items() if k != "ok"}
            reply(result)

        cmd = {"op": "set_limits", "args": a, "client": None, "seq": None, "ts": time.time_ns()}
        self.node.driver.propose(msgpack.packb(cmd, use_bin_type=True), done)

    def _propose_peers(self, args: dict[str, Any], done: Callable[[Any], None]) -> None:
        from metadata.server import PEERS_OP

        cmd = {"op": PEERS_OP, "args": args, "client": None, "seq": None, "ts": time.time_ns()}
        self.node.driver.propose(msgpack.packb(cmd, use_bin_type=True), done)
