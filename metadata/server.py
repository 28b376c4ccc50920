"""The metadata server process: the namespace on Raft, plus the chunkserver registry.

The RPC loop (dfs.rpc) receives requests and hands them to the Raft driver
(metadata/raft/driver.py), whose single thread owns the Raft core, its log,
the namespace state machine, the registry and the maintenance planner, so
none of them needs a lock.

- Mutations are proposed to Raft and answered when applied, with the
  client's (client id, seq) so a retry is applied once.
- Queries wait for a ReadIndex round: linearizable without writing the log.
- Chunkserver registry and placement are leader-only soft state.
Followers answer NOT_LEADER with the leader's endpoint, so clients go there.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from dfs import errors, rpc, wire
from dfs.errors import DfsError
from dfs.logs import setup_logging
from dfs.security import Security, load_optional
from metadata import placement
from metadata.admin_ops import AdminOps
from metadata.maintenance import Maintenance, MaintenanceConfig
from metadata.namespace import Namespace
from metadata.raft.driver import RaftDriver
from metadata.raft.messages import Role
from metadata.registry import Registry

log = logging.getLogger("dfs.metadata")

TICK = 0.03  # seconds per Raft tick: heartbeats every tick, elections after 10-20
ELECTION_TICKS = 10
SERVER_TIMEOUT = 6.0  # a chunkserver silent this long is dead
DEFAULT_REP = 3  # replicas of a file whose directory sets none
SNAPSHOT_EVERY = 20_000  # applied entries between snapshots (log compaction)
LEADER_OPS = (
    "locate",
    "place",
    "report_bad",
    "register",
    "heartbeat",
    "report",
    "status",
    "fsck",
    "admin",
)


PEERS_OP = "raft_peers"  # replicated command: {"set": {id: endpoint}, "drop": [id]}
SNAP_MAGIC = b"DFSMDv2\0"  # machine snapshot: magic + msgpack {"ns": bytes, "peers": {...}}


class NamespaceMachine:
    """Adapts the namespace to the driver: commands travel as msgpack bytes.

    Next to the namespace it keeps ``peers`` ({node id: endpoint}), the metadata
    members' endpoints, changed only by the replicated ``raft_peers`` command a
    leader proposes before a membership change, so every node (and one restored
    from a snapshot) knows how to reach every voter. A snapshot is SNAP_MAGIC +
    msgpack; a bare namespace snapshot (the format before) still loads."""

    def __init__(self) -> None:
        self.ns = Namespace()
        self.peers: dict[int, str] = {}

    def apply(self, data: bytes) -> dict[str, Any]:
        cmd = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if type(cmd) is dict and cmd.get("op") == PEERS_OP:
            return self._apply_peers(cmd.get("args"))
        return self.ns.apply(cmd)

    def _apply_peers(self, args: Any) -> dict[str, Any]:
        try:
            if type(args) is not dict:
                raise ValueError("args must be a map")
            sets = {int(k): wire.check_endpoint(v) for k, v in (args.get("set") or {}).items()}
            drops = [int(k) for k in args.get("drop") or ()]
        except (TypeError, ValueError) as exc:
            return {"ok": False, "code": "EINVAL", "msg": f"{PEERS_OP}: {exc}"}
        for k in drops:
            self.peers.pop(k, None)
        self.peers.update(sets)
        return {"ok": True, "peers": {str(k): v for k, v in sorted(self.peers.items())}}

    def snapshot(self) -> bytes:
        body = {"ns": self.ns.snapshot(), "peers": {str(k): v for k, v in self.peers.items()}}
        return SNAP_MAGIC + msgpack.packb(body, use_bin_type=True)

    def restore(self, data: bytes) -> None:
        if bytes(data[: len(SNAP_MAGIC)]) == SNAP_MAGIC:
            body = msgpack.unpackb(data[len(SNAP_MAGIC) :], raw=False)
            self.ns = Namespace.restore(body["ns"])
            self.peers = {int(k): v for k, v in (body.get("peers") or {}).items()}
        else:  # a namespace snapshot written before the peers map existed
            self.ns = Namespace.restore(data)
            self.peers = {}


class MetadataNode:
    """One member of the metadata service."""

    def __init__(
        self,
        node_id: int,
        data_dir: Path,
        listen: str,
        peers: dict[int, str],
        *,
        security: Security | None = None,
        tick: float = TICK,
        maintenance: MaintenanceConfig | None = None,
        join: bool = False,
        snapshot_every: int = SNAPSHOT_EVERY,
    ) -> None:
        self.id = node_id
        self.rpc = rpc.RpcServer(listen, security=security, workers=2, name="metadata")
        self.endpoint = self.rpc.endpoint
        peers = {**peers, node_id: peers.get(node_id, self.endpoint)}
        self.peer_rpc = rpc.RpcClient(security=security, timeout=2.0)
        self.machine = NamespaceMachine()
        self.driver = RaftDriver(
            node_id,
            peers,
            data_dir / "raft",
            self.rpc,
            self.machine,
            tick=tick,
            election_ticks=ELECTION_TICKS,
            snapshot_every=snapshot_every,
            join=join,
        )
        self.registry = Registry()
        self.maintenance = Maintenance(self, maintenance)
        self.admin = AdminOps(self)
        self.rng = random.Random()
        self.driver.tick_hooks.append(self._on_tick)
        self.driver.role_hooks.append(self._on_role_change)
        self._register_routes()

    @property
    def ns(self) -> Namespace:
        return self.machine.ns

    @property
    def peers(self) -> dict[int, str]:
        """Metadata node id -> endpoint: the replicated map, then --peers."""
        return self.driver.peers

    @property
    def inbox(self) -> Any:
        """``inbox.put(("call", fn))`` runs fn on the loop thread (RPC completions)."""
        return self.driver.inbox

    # ------------------------------------------------------------ routes

    def _register_routes(self) -> None:
        r = self.rpc.route
        for name in wire.NAMESPACE_MUTATIONS:
            r(f"md.{name}", self._mutate)
        for name in wire.NAMESPACE_QUERIES:
            r(f"md.{name}", self._query)
        for op in LEADER_OPS:
            r(f"md.{op}", self._leader_op)
        r("md.node_status", self._node_status)

    def _node_status(self, call: rpc.Call) -> Any:
        """Any member answers with its own Raft view (dfs-admin status shows every node)."""

        def serve() -> None:
            st = self.driver.status()
            st["leader_id"] = st.pop("leader", None)
            call.respond(
                {
                    **st,
                    "id": self.id,
                    "endpoint": self.endpoint,
                    "leader": self.driver.leader_endpoint(),
                    "voter": self.id in self.driver.raft.voters,
                }
            )

        self.driver.call_soon(serve)
        return rpc.DEFERRED

    def _mutate(self, call: rpc.Call) -> Any:
        f = call.fields
        cmd = {
            "op": call.request.op.removeprefix("md."),
            "args": f.get("args") or {},
            "client": f.get("client"),
            "seq": f.get("seq"),
            "ts": time.time_ns(),
        }
        stored = f.get("stored") or {}

        def propose() -> None:
            if not self.driver.is_leader:
                call.fail(self.driver.not_leader())
                return
            for cid, servers in stored.items():
                for ep in servers:  # only servers we know: a hint, confirmed by heartbeats
                    if self.registry.state(ep) is not None:
                        self.registry.add_replica(cid, ep)
            self.driver.propose(msgpack.packb(cmd, use_bin_type=True), _answer_to(call))

        propose()  # handlers run on the loop thread, which owns the registry and Raft
        return rpc.DEFERRED

    def _query(self, call: rpc.Call) -> Any:
        op, args = call.request.op.removeprefix("md."), call.fields.get("args") or {}
        if op == "file_chunks":
            self.driver.read(lambda: self._file_chunks(args), _answer_to(call))
        elif op == "files_chunks":
            self.driver.read(lambda: self._files_chunks(args), _answer_to(call))
        else:
            self.driver.read(lambda: self.ns.query(op, args), _answer_to(call))
        return rpc.DEFERRED

    def _file_chunks(self, args: dict[str, Any]) -> dict[str, Any]:
        """A file's extents plus where its chunks are: a reader needs no second call."""
        result = self.ns.query("file_chunks", args)
        if result.get("ok"):
            ids = list(dict.fromkeys(c for c, _ in result["extents"] if c))
            result["locations"] = self.registry.locate(ids)
        return result

    def _files_chunks(self, args: dict[str, Any]) -> dict[str, Any]:
        """Many files' extents plus one map of where all their chunks are."""
        result = self.ns.query("files_chunks", args)
        if result.get("ok"):
            ids = {c: None for f in result["files"] if f["ok"] for c, _ in f["extents"] if c}
            result["locations"] = self.registry.locate(list(ids))
        return result

    def _leader_op(self, call: rpc.Call) -> Any:
        def serve() -> None:
            if not self.driver.is_leader:
                call.fail(self.driver.not_leader())
                return
            action = call.fields.get("action") if call.request.op == "md.admin" else None
            if action in AdminOps.DEFERRED_ACTIONS:  # answered once the log commits them
                self.admin.admin_deferred(action, call.fields.get("args") or {}, call.settle)
                return
            try:
                result = self._serve_leader_op(call.request.op.removeprefix("md."), call.fields)
            except DfsError as exc:
                call.fail(exc)
                return
            call.respond(result)

        serve()
        return rpc.DEFERRED

    def propose_internal(
        self, cmd: dict[str, Any], on_result: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        """A command of the leader's own (GC), stamped with the time like any other."""
        cmd = {"client": None, "seq": None, "ts": time.time_ns(), **cmd}

        def done(result: Any) -> None:
            if isinstance(result, DfsError):
                result = {"ok": False, "code": result.code, "msg": result.message}
            if on_result is not None:
                on_result(result)

        self.driver.propose(msgpack.packb(cmd, use_bin_type=True), done)

    # ------------------------------------------------------------ running

    def start(self) -> MetadataNode:
        self.driver.start()
        self.rpc.start()
        return self

    def stop(self) -> None:
        self.rpc.stop()
        self.driver.stop()
        self.peer_rpc.close()

    # ------------------------------------------------------------ soft state

    def _on_role_change(self, role: Role) -> None:
        if role == Role.LEADER:  # locations are rebuilt from the chunkservers' reports
            self.registry = Registry(started=time.monotonic(), settle=2 * SERVER_TIMEOUT / 3)
            self.maintenance = Maintenance(self, self.maintenance.cfg)

    def _on_tick(self, now: float) -> None:
        if not self.driver.is_leader:
            return
        for ep in self.registry.expire(now, SERVER_TIMEOUT):
            log.warning("chunkserver %s is silent: marked dead", ep)
        self.maintenance.tick(now)

    def _serve_leader_op(self, op: str, f: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        reg = self.registry
        if op == "locate":
            if f.get("dedup"):  # a writer must not rely on a copy GC may be deleting
                return {"locations": self._dedup_locations(f["ids"])}
            # "complete": False while a new leader still rebuilds locations from reports
            return {"locations": reg.locate(f["ids"]), "complete": reg.reports_complete(now)}
        if op == "place":
            return self._place(f)
        if op == "report_bad":  # re-checked by the server before the copy is dropped
            self.maintenance.verify_reported(f["id"], f["server"])
            return {}
        if op == "register":
            reg.register(f["endpoint"], f["node"], f["stat"], f.get("labels"), now)
            self.maintenance.adopt_state(f["endpoint"], f["stat"].get("admin"))
            return {}
        if op == "report":
            return {"known": reg.report(f["endpoint"], f["ids"], f["done"])}
        if op == "heartbeat":
            added, removed = f.get("added") or (), f.get("removed") or ()
            known = reg.heartbeat(f["endpoint"], f["stat"], added, removed, now)
            if known:
                for cid in f.get("corrupt") or ():
                    if reg.mark_corrupt(cid, f["endpoint"]):
                        log.warning("%s found chunk %s corrupt", f["endpoint"], cid[:12])
                self.maintenance.adopt_state(f["endpoint"], f["stat"].get("admin"))
            return {"known": known, "commands": []}
        if op == "status":
            return self.status()
        if op == "fsck":
            return self.admin.fsck(f.get("path"), f.get("limit"))
        if op == "admin":
            return self.admin.admin(f["action"], f.get("args") or {})
        raise DfsError(errors.UNKNOWN_OP, f"md.{op} is not available yet")

    def _dedup_locations(self, ids: list[str]) -> dict[str, list[str]]:
        """Copies a writer may rely on instead of uploading: only of chunks some file
        references (an unreferenced one may be in the middle of being collected)."""
        refs, reg = self.ns.refs, self.registry
        return {
            cid: reg.readable(cid) if refs.is_referenced(bytes.fromhex(cid)) else [] for cid in ids
        }

    def _rep_of(self, path: str | None) -> int:
        """Replication for a file written at ``path``: its own, else its directory's."""
        if path:
            for p in (path, path.rsplit("/", 1)[0] or "/"):
                r = self.ns.query("getattr", {"path": p})
                if r.get("ok"):
                    return int(r["attrs"]["rep"])
        return DEFAULT_REP

    def _place(self, f: dict[str, Any]) -> dict[str, Any]:
        rep = f.get("rep") or self._rep_of(f.get("path"))
        exclude = f.get("exclude") or ()
        ids = f.get("ids")
        if ids is None:
            count = min(f.get("count") or 1, 10_000)
            return {
                "chains": placement.place(self.registry, count, rep, self.rng, exclude),
                "rep": rep,
            }
        # a chunk counts as present only with the copies this file needs: a writer
        # must not rely on a single copy another file (of lower rep) left behind
        have = {cid: eps for cid, eps in self._dedup_locations(ids).items() if len(eps) >= rep}
        missing = [cid for cid in dict.fromkeys(ids) if cid not in have]
        chains = placement.place(self.registry, len(missing), rep, self.rng, exclude)
        return {"chains": chains, "missing": missing, "have": have, "rep": rep}

    def status(self) -> dict[str, Any]:
        return self.admin.status()


def _answer_to(call: rpc.Call) -> Callable[[Any], None]:
    """Turn a namespace result (or a DfsError) into the RPC reply."""

    def done(result: Any) -> None:
        if isinstance(result, DfsError):
            call.fail(result)
        elif result.get("ok"):
            call.respond({k: v for k, v in result.items() if k != "ok"})
        else:
            call.fail(DfsError(result.get("code", "EIO"), result.get("msg", "")))

    return done


def parse_peers(text: str) -> dict[int, str]:
    """'1=tcp://h:7001,2=tcp://h:7002' (or bare endpoints, numbered from 1)."""
    out: dict[int, str] = {}
    for i, item in enumerate(p for p in text.split(",") if p.strip()):
        if "=" in item and not item.startswith("tcp"):
            k, ep = item.split("=", 1)
            out[int(k)] = wire.check_endpoint(ep.strip())
        else:
            out[i + 1] = wire.check_endpoint(item.strip())
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dfs-metadata", description="Run one dfs metadata node (a Raft member)."
    )
    p.add_argument("--id", type=int, required=True, help="this node's id (1, 2, 3, ...)")
    p.add_argument("--data", type=Path, required=True, help="data directory (Raft log, snapshots)")
    p.add_argument("--listen", required=True, help="endpoint to serve on, e.g. tcp://0.0.0.0:7001")
    p.add_argument(
        "--peers",
        default="",
        help="every member as ID=ENDPOINT,... (this node included); with --join, the "
        "existing members to contact (optional)",
    )
    p.add_argument(
        "--join",
        action="store_true",
        help="join an existing cluster: start as a non-voter that learns the "
        "configuration from the leader (then run 'dfs-admin raft add ID ENDPOINT')",
    )
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=int(os.environ.get("DFS_SNAPSHOT_EVERY", SNAPSHOT_EVERY)),
        metavar="N",
        help="applied log entries between snapshots (log compaction)",
    )
    p.add_argument("--key", help="cluster key file: every socket uses CURVE")
    d = MaintenanceConfig()
    p.add_argument(
        "--gc-grace",
        type=float,
        default=d.gc_grace,
        metavar="SECONDS",
        help="how long a chunk no file references is kept before it is deleted",
    )
    p.add_argument(
        "--upload-grace",
        type=float,
        default=d.upload_grace,
        metavar="SECONDS",
        help="how long a stored chunk not yet committed to a file (an upload in progress) is kept",
    )
    p.add_argument(
        "--repair-bandwidth",
        type=float,
        default=0.0,
        metavar="MB/S",
        help="per-chunkserver bandwidth for re-replication copies, MiB/s (0: unlimited)",
    )
    p.add_argument(
        "--repair-concurrency",
        type=int,
        default=d.per_server,
        metavar="N",
        help="copies in flight per chunkserver",
    )
    p.add_argument("--pid-file", type=Path)
    p.add_argument("--endpoint-file", type=Path)
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    sys.setswitchinterval(0.0005)  # short GIL slices: this process is latency-bound
    try:
        peers = parse_peers(args.peers)
    except ValueError as exc:
        log.error("bad --peers: %s", exc)
        return 2
    if args.id not in peers and not args.join:
        log.error("--peers does not name this node's id %d (a new node needs --join)", args.id)
        return 2
    args.data.mkdir(parents=True, exist_ok=True)
    maint = MaintenanceConfig(
        gc_grace=max(0.0, args.gc_grace),
        upload_grace=max(0.0, args.upload_grace),
        bandwidth=max(0.0, args.repair_bandwidth) * (1 << 20),
        per_server=max(1, args.repair_concurrency),
    )
    node = MetadataNode(
        args.id,
        args.data,
        args.listen,
        peers,
        security=load_optional(args.key),
        maintenance=maint,
        join=args.join,
        snapshot_every=max(1, args.snapshot_every),
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    if args.pid_file:
        args.pid_file.write_text(f"{os.getpid()}\n")
    if args.endpoint_file:
        tmp = args.endpoint_file.with_suffix(".tmp")
        tmp.write_text(node.endpoint + "\n")
        os.replace(tmp, args.endpoint_file)
    log.info("metadata node %d serving on %s", args.id, node.endpoint)
    stop.wait()
    node.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
