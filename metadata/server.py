"""The metadata server process: Raft + the namespace + the chunkserver registry.

Threads:
- the RPC loop (dfs.rpc) receives requests and Raft messages and hands them
  to the driver through a queue; it never blocks on disk;
- the driver thread owns the Raft core, its log storage, the namespace state
  machine and the registry, so none of them needs a lock. One pass: take
  everything queued, step it into the core, then run Ready (persist with one
  fsync -- group commit for everything that arrived meanwhile --, send,
  apply, answer), and tick on time.

Mutations are proposed to Raft and answered when applied. Queries wait for a
ReadIndex round (linearizable without writing the log). Followers answer
NOT_LEADER with the leader's endpoint, so clients go straight there.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from dfs import errors, rpc, wire
from dfs.errors import DfsError
from dfs.logs import setup_logging
from dfs.security import Security, load_optional
from metadata import placement
from metadata.maintenance import Maintenance, MaintenanceConfig
from metadata.namespace import Namespace
from metadata.raft.core import NotLeader, ProposalDropped, RaftConfig, RaftNode
from metadata.raft.messages import EntryType, Message, Role
from metadata.raft.storage import RaftStorage
from metadata.registry import Registry

log = logging.getLogger("dfs.metadata")

TICK = 0.03  # seconds per Raft tick: heartbeats every tick, elections after 10-20
ELECTION_TICKS = 10
SERVER_TIMEOUT = 6.0  # a chunkserver silent this long is dead
SNAPSHOT_EVERY = 20_000  # applied entries between snapshots (log compaction)


@dataclass
class _Proposal:
    term: int
    call: rpc.Call | None = None
    on_result: Callable[[dict[str, Any]], None] | None = None  # internal proposals

    def fail(self, error: DfsError) -> None:
        if self.call is not None:
            self.call.fail(error)
        elif self.on_result is not None:
            self.on_result({"ok": False, "code": error.code, "msg": error.message})


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
    ) -> None:
        self.id = node_id
        self.peers = dict(peers)  # node id -> endpoint (including this node)
        self.tick_interval = tick
        self.rpc = rpc.RpcServer(listen, security=security, workers=2, name="metadata")
        self.endpoint = self.rpc.endpoint
        self.peers.setdefault(node_id, self.endpoint)
        self.peer_rpc = rpc.RpcClient(security=security, timeout=2.0)
        self.storage = RaftStorage(data_dir / "raft")
        state = self.storage.load()
        applied = 0
        self.ns = Namespace()
        if state.snapshot is not None and state.snapshot.data:
            self.ns = Namespace.restore(state.snapshot.data)
            applied = state.snapshot.index
        cfg = RaftConfig(peers=tuple(sorted(self.peers)), election_ticks=ELECTION_TICKS)
        self.raft = RaftNode(node_id, cfg, state, random.Random(os.urandom(8)), applied=applied)
        self.last_snapshot = applied
        self.registry = Registry()
        self.maintenance = Maintenance(self, maintenance)
        self.rng = random.Random()
        self.inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.proposals: dict[int, _Proposal] = {}
        self.reads: dict[bytes, list[tuple[str, rpc.Call]]] = {}
        self.read_batch: list[tuple[str, rpc.Call]] = []
        self._read_ctx = 0
        self._stop = threading.Event()
        self._driver = threading.Thread(target=self._drive, name="raft-driver", daemon=True)
        self._register_routes()

    # ------------------------------------------------------------ routes

    def _register_routes(self) -> None:
        r = self.rpc.route
        for name in wire.NAMESPACE_MUTATIONS:
            r(f"md.{name}", self._enqueue("mutate"))
        for name in wire.NAMESPACE_QUERIES:
            r(f"md.{name}", self._enqueue("query"))
        for op in (
            "locate",
            "place",
            "report_bad",
            "register",
            "heartbeat",
            "report",
            "status",
            "fsck",
            "admin",
        ):
            r(f"md.{op}", self._enqueue("leader"))
        r("raft.msg", self._on_raft)

    def _enqueue(self, kind: str):
        def handler(call: rpc.Call) -> Any:
            self.inbox.put((kind, call))
            return rpc.DEFERRED

        return handler

    def _on_raft(self, call: rpc.Call) -> Any:
        self.inbox.put(("raft", call.fields["msgs"]))
        return rpc.DEFERRED  # one-way: nothing is sent back

    # ------------------------------------------------------------ running

    def start(self) -> MetadataNode:
        self._driver.start()
        self.rpc.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.inbox.put(("stop", None))
        self._driver.join(timeout=5)
        self.rpc.stop()
        self.peer_rpc.close()
        self.storage.close()

    def _drive(self) -> None:
        next_tick = time.monotonic() + self.tick_interval
        while not self._stop.is_set():
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                items = [self.inbox.get(timeout=timeout)]
            except queue.Empty:
                items = []
            while True:
                try:
                    items.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            for kind, payload in items:
                try:
                    self._handle(kind, payload)
                except Exception:
                    log.exception("driver: %s failed", kind)
            self._start_reads()
            now = time.monotonic()
            if now >= next_tick:
                self.raft.tick()
                next_tick = max(next_tick + self.tick_interval, now)
                self._on_tick(now)
            while self.raft.has_ready():
                self._process_ready()

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "raft":
            for m in payload:
                try:
                    msg = Message.from_wire(m)
                except Exception as exc:
                    log.warning("dropped a malformed Raft message: %s", exc)
                    continue
                self.raft.step(msg)
        elif kind == "mutate":
            self._propose(payload)
        elif kind == "query":
            if self._not_leader(payload):
                return
            self.read_batch.append((payload.request.op.removeprefix("md."), payload))
        elif kind == "call":  # a completion routed back onto the driver thread
            payload()
        elif kind == "leader":
            if self._not_leader(payload):
                return
            self._serve_leader_op(payload)

    def _not_leader(self, call: rpc.Call) -> bool:
        if self.raft.role == Role.LEADER:
            return False
        hint = self.peers.get(self.raft.leader_id)
        call.fail(DfsError(errors.NOT_LEADER, "not the metadata leader", leader=hint))
        return True

    # ------------------------------------------------------------ mutations

    def _propose(self, call: rpc.Call) -> None:
        if self._not_leader(call):
            return
        f = call.fields
        for cid, servers in (f.get("stored") or {}).items():
            for ep in servers:  # only servers we know: a location hint, confirmed later
                if self.registry.state(ep) is not None:
                    self.registry.add_replica(cid, ep)
        cmd = {
            "op": call.request.op.removeprefix("md."),
            "args": f.get("args") or {},
            "client": f.get("client"),
            "seq": f.get("seq"),
            "ts": time.time_ns(),
        }
        self._propose_cmd(cmd, call)

    def propose_internal(
        self, cmd: dict[str, Any], on_result: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        """A command of the leader's own (GC), stamped with the time like any other."""
        cmd = {"client": None, "seq": None, "ts": time.time_ns(), **cmd}
        self._propose_cmd(cmd, _Proposal(0, None, on_result or (lambda r: None)))

    def _propose_cmd(self, cmd: dict[str, Any], prop: _Proposal | rpc.Call) -> None:
        if isinstance(prop, rpc.Call):
            prop = _Proposal(0, prop)
        try:
            index, term = self.raft.propose(msgpack.packb(cmd, use_bin_type=True))
        except NotLeader as exc:
            hint = self.peers.get(exc.leader_hint) if exc.leader_hint else None
            prop.fail(DfsError(errors.NOT_LEADER, "not the metadata leader", leader=hint))
            return
        except ProposalDropped as exc:
            prop.fail(DfsError(errors.NOT_LEADER, f"leader busy: {exc}", leader=None))
            return
        prop.term = term
        self.proposals[index] = prop

    # ------------------------------------------------------------ reads

    def _start_reads(self) -> None:
        if not self.read_batch:
            return
        self._read_ctx += 1
        ctx = self._read_ctx.to_bytes(8, "big")
        self.reads[ctx] = self.read_batch
        self.read_batch = []
        try:
            self.raft.read_index(ctx)
        except NotLeader as exc:
            for _, call in self.reads.pop(ctx):
                hint = self.peers.get(exc.leader_hint) if exc.leader_hint else None
                call.fail(DfsError(errors.NOT_LEADER, "not the metadata leader", leader=hint))

    def _serve_reads(self, ctx: bytes) -> None:
        for op, call in self.reads.pop(ctx, []):
            self._answer(call, self.ns.query(op, call.fields.get("args") or {}))

    @staticmethod
    def _answer(call: rpc.Call, result: dict[str, Any]) -> None:
        if result.get("ok"):
            call.respond({k: v for k, v in result.items() if k != "ok"})
        else:
            call.fail(DfsError(result.get("code", "EIO"), result.get("msg", "")))

    # ------------------------------------------------------------ Ready

    def _process_ready(self) -> None:
        rd = self.raft.ready()
        if rd.must_sync():
            self.storage.save(rd.hard_state, rd.entries, rd.snapshot, rd.install_snapshot)
        self._send(rd.messages)
        if rd.install_snapshot and rd.snapshot is not None:
            self.ns = Namespace.restore(rd.snapshot.data)
            self.last_snapshot = rd.snapshot.index
        for entry in rd.committed_entries:
            self._apply(entry)
        for rs in rd.read_states:
            self._serve_reads(rs.ctx)
        if rd.soft_state is not None:
            self._on_role_change(rd.soft_state.role)
        self.raft.advance(rd)
        self._maybe_snapshot()

    def _send(self, messages: list[Message]) -> None:
        by_peer: dict[int, list[dict]] = defaultdict(list)
        for m in messages:
            by_peer[m.to].append(m.to_wire())
        for peer, msgs in by_peer.items():
            ep = self.peers.get(peer)
            if ep is None:
                continue
            # one-way: Raft has its own acknowledgements and retries
            self.peer_rpc.send(ep, "raft.msg", {"from": self.id, "msgs": msgs})

    def _apply(self, entry: Any) -> None:
        prop = self.proposals.pop(entry.index, None)
        if entry.type != EntryType.NORMAL or not entry.data:
            if prop is not None:
                prop.fail(DfsError(errors.NOT_LEADER, "leadership changed", leader=None))
            return
        try:
            cmd = msgpack.unpackb(entry.data, raw=False)
            result = self.ns.apply(cmd)
        except Exception as exc:  # the namespace validates; this is a bug, not bad input
            log.exception("apply failed at index %d", entry.index)
            result = {"ok": False, "code": "EIO", "msg": f"apply failed: {exc}"}
        if prop is None:
            return
        if prop.term != entry.term:  # our proposal lost to another leader's entry
            prop.fail(DfsError(errors.NOT_LEADER, "leadership changed", leader=None))
        elif prop.call is not None:
            self._answer(prop.call, result)
        elif prop.on_result is not None:
            prop.on_result(result)

    def _on_role_change(self, role: Role) -> None:
        if role == Role.LEADER:
            log.info("node %d is the leader (term %d)", self.id, self.raft.term)
            self.registry = Registry(started=time.monotonic(), settle=2 * SERVER_TIMEOUT / 3)
            self.maintenance = Maintenance(self, self.maintenance.cfg)
            return
        for prop in self.proposals.values():
            hint = self.peers.get(self.raft.leader_id)
            prop.fail(DfsError(errors.NOT_LEADER, "leadership changed", leader=hint))
        self.proposals.clear()
        for calls in self.reads.values():
            for _, call in calls:
                call.fail(DfsError(errors.NOT_LEADER, "leadership changed", leader=None))
        self.reads.clear()

    def _maybe_snapshot(self) -> None:
        if self.raft.applied - self.last_snapshot < SNAPSHOT_EVERY:
            return
        index = self.raft.applied
        self.raft.compact(index, self.ns.snapshot())
        self.last_snapshot = index

    # ------------------------------------------------------------ soft state

    def _on_tick(self, now: float) -> None:
        if self.raft.role != Role.LEADER:
            return
        for ep in self.registry.expire(now, SERVER_TIMEOUT):
            log.warning("chunkserver %s is silent: marked dead", ep)
        self.maintenance.tick(now)

    def _serve_leader_op(self, call: rpc.Call) -> None:
        op = call.request.op.removeprefix("md.")
        f = call.fields
        now = time.monotonic()
        reg = self.registry
        if op == "locate":
            call.respond({"locations": reg.locate(f["ids"])})
        elif op == "place":
            rep = f.get("rep") or 3
            chains = placement.place(
                reg, min(f["count"], 10_000), rep, self.rng, exclude=f.get("exclude") or ()
            )
            call.respond({"chains": chains})
        elif op == "report_bad":
            reg.mark_corrupt(f["id"], f["server"])
            call.respond({})
        elif op == "register":
            reg.register(f["endpoint"], f["node"], f["stat"], f.get("labels"), now)
            call.respond({})
        elif op == "report":
            call.respond({"known": reg.report(f["endpoint"], f["ids"], f["done"])})
        elif op == "heartbeat":
            known = reg.heartbeat(
                f["endpoint"], f["stat"], f.get("added") or (), f.get("removed") or (), now
            )
            call.respond({"known": known, "commands": []})
        elif op == "status":
            call.respond(self.status())
        elif op == "fsck":
            call.respond(self.maintenance.fsck())
        else:
            call.fail(DfsError(errors.UNKNOWN_OP, f"md.{op} is not available yet"))

    def status(self) -> dict[str, Any]:
        st = self.raft.status()
        return {
            "leader": self.peers.get(self.raft.leader_id),
            "node": {"id": self.id, "endpoint": self.endpoint, **_plain(st)},
            "peers": {str(k): v for k, v in self.peers.items()},
            "chunkservers": [s.to_dict() for s in self.registry.servers()],
            "registry": self.registry.summary(),
            "namespace": {k: v for k, v in self.ns.query("statfs", {}).items() if k != "ok"},
        }


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Raft status with enums turned into names, so msgpack can carry it."""
    return {
        k: (v.name.lower() if hasattr(v, "name") else v)
        for k, v in d.items()
        if isinstance(v, (int, str, float, bool)) or hasattr(v, "name")
    }


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
        "--peers", required=True, help="every member as ID=ENDPOINT,... (this node included)"
    )
    p.add_argument("--key", help="cluster key file: every socket uses CURVE")
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
    if args.id not in peers:
        log.error("--peers does not name this node's id %d", args.id)
        return 2
    args.data.mkdir(parents=True, exist_ok=True)
    node = MetadataNode(args.id, args.data, args.listen, peers, security=load_optional(args.key))
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
