"""The chunkserver process: serves a ChunkStore over the dfs wire protocol.

Disk and hashing work runs on the RPC server's thread pool (hashlib, zstd and
file I/O release the GIL, so both cores work). A put with a forward list is
chained: this server stores the chunk and, at the same time, passes it to the
next server with the rest of the list; the client is answered only when the
whole chain has it fsync'd. Waiting on the next server never ties up a worker
thread (the reply is deferred), so crossing chains cannot deadlock.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from chunkserver.heartbeat import ChunkLog, Heartbeat
from chunkserver.scrub import DEFAULT_INTERVAL, DEFAULT_RATE, Scrubber
from chunkserver.store import ChunkStore
from dfs import errors, rpc, wire
from dfs.config import parse_size
from dfs.errors import DfsError
from dfs.fsutil import fsync_dir
from dfs.logs import setup_logging
from dfs.security import Security, load_optional

log = logging.getLogger("dfs.chunkserver")

LIST_PAGE_MAX = 10_000
FORWARD_TIMEOUT = 5.0  # seconds a chained put waits for the next server
ADMIN_STATES = ("active", "decommissioning", "retired")


class ChunkServer:
    """Wires a ChunkStore to an RpcServer (and, with a cluster, to the metadata service)."""

    def __init__(
        self,
        data_dir: Path,
        listen: str,
        *,
        security: Security | None = None,
        capacity: int | None = None,
        workers: int = 4,
        scrub_rate: float = DEFAULT_RATE,
        scrub_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.store = ChunkStore(data_dir, capacity=capacity)
        self.data_dir = Path(data_dir)
        self.scrubber = Scrubber(self.store, self._found_corrupt, scrub_rate, scrub_interval)
        self.admin_state = self._load_admin_state()
        self.security = security
        self.rpc = rpc.RpcServer(listen, security=security, workers=workers, name="chunkserver")
        # shorter than a client's timeout, so a dead next hop is reported as such
        self.client = rpc.RpcClient(security=security, timeout=FORWARD_TIMEOUT)
        self.endpoint = self.rpc.endpoint
        self.chunk_log = ChunkLog()  # what the next heartbeat reports
        self._load = 0  # requests being served, reported in stat/heartbeats
        self._load_lock = threading.Lock()
        r = self.rpc.route
        r("cs.put", self.put, blocking=True)
        r("cs.put_many", self.put_many, blocking=True)
        r("cs.get", self.get, blocking=True)
        r("cs.get_many", self.get_many, blocking=True)
        r("cs.has", self.has, blocking=True)
        r("cs.delete", self.delete, blocking=True)
        r("cs.stat", self.stat)
        r("cs.list", self.list_ids, blocking=True)
        r("cs.verify", self.verify, blocking=True)
        r("cs.replicate", self.replicate, blocking=True)
        r("cs.scrub", self.scrub)
        r("cs.admin_state", self.set_admin_state, blocking=True)

    # ------------------------------------------------------------ handlers

    def put(self, call: rpc.Call) -> Any:
        chunk_id = call.fields["id"]
        data = call.request.frames[0]
        forward = call.fields.get("forward") or []
        if self.endpoint in forward:
            raise DfsError("EINVAL", "forward list names this server")
        downstream: Future | None = None
        if forward:  # start the next hop first, so both copies are written at once
            downstream = self.client.call_async(
                forward[0], "cs.put", {"id": chunk_id, "forward": forward[1:]}, [data]
            )
        with self._busy():
            created = self.store.put(chunk_id, data)
        if created:
            self.chunk_log.add(chunk_id)
        if downstream is None:
            return {"stored": [self.endpoint], "created": created}

        def done(fut: Future) -> None:
            try:
                reply = rpc.RpcClient.wait(fut)
            except DfsError as exc:
                call.fail(
                    DfsError(
                        exc.code,
                        f"chain put failed at {forward[0]}: {exc.message}",
                        stored=[self.endpoint],
                    )
                )
                return
            call.respond(
                {"stored": [self.endpoint, *reply.fields.get("stored", [])], "created": created}
            )

        downstream.add_done_callback(done)
        return rpc.DEFERRED

    def put_many(self, call: rpc.Call) -> Any:
        ids, sizes = call.fields["ids"], call.fields["sizes"]
        data = memoryview(call.request.frames[0]).cast("B")
        if len(sizes) != len(ids) or any(type(n) is not int or n < 0 for n in sizes):
            raise DfsError("EINVAL", "sizes: one non-negative integer per id")
        if sum(sizes) != data.nbytes:
            raise DfsError("EINVAL", f"sizes add up to {sum(sizes)}, the frame has {data.nbytes}")
        items, at = [], 0
        for cid, n in zip(ids, sizes):
            items.append((cid, data[at : at + n]))
            at += n
        with self._busy():
            try:
                created = self.store.put_many(items)
            except DfsError:
                # some may be in place already: report what is there, or the leader
                # never learns of them (nor collects them)
                for cid, there in zip(ids, self.store.has(ids)):
                    if there:
                        self.chunk_log.add(cid)
                raise
        for cid, new in zip(ids, created):
            if new:
                self.chunk_log.add(cid)
        return {"stored": [self.endpoint], "created": created}

    def get(self, call: rpc.Call) -> Any:
        f = call.fields
        with self._busy():
            data = self._read(f["id"], f.get("offset", 0), f.get("length"))
        return {"length": len(data)}, [data]

    def get_many(self, call: rpc.Call) -> Any:
        """Many small chunks in one reply frame; one that cannot be read gets size -1
        and its error code, and the reader fetches it elsewhere."""
        ids = call.fields["ids"]
        parts: list[bytes] = []
        sizes: list[int] = []
        failed: dict[str, str] = {}
        budget = wire.MAX_CHUNK_BYTES
        with self._busy():
            for cid in ids:
                try:
                    data = self._read(cid) if budget > 0 else None
                except DfsError as exc:
                    data, failed[cid] = None, exc.code
                if data is None or len(data) > budget:
                    failed.setdefault(cid, errors.TOO_BIG)  # ask for it on its own
                    sizes.append(-1)
                    continue
                budget -= len(data)
                parts.append(data)
                sizes.append(len(data))
        return {"sizes": sizes, "failed": failed}, [b"".join(parts)]

    def _read(self, chunk_id: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read through the store; a copy found corrupt is reported with the next heartbeat."""
        try:
            return self.store.get(chunk_id, offset, length)
        except DfsError as exc:
            if exc.code == errors.CORRUPT:
                self._found_corrupt(chunk_id)
            raise

    def _found_corrupt(self, chunk_id: str) -> None:
        self.chunk_log.bad(chunk_id)

    def has(self, call: rpc.Call) -> Any:
        return {"has": self.store.has(call.fields["ids"])}

    def delete(self, call: rpc.Call) -> Any:
        n, kept = self._delete(call.fields["ids"], call.fields.get("unless_newer"))
        return {"deleted": n, "kept": kept}

    def _delete(self, ids: list[str], unless_newer: float | None = None) -> tuple[int, list[str]]:
        n, kept = self.store.delete_unless_newer(ids, unless_newer)
        keep = set(kept)
        for cid in ids:
            if cid not in keep:
                self.chunk_log.remove(cid)
        return n, kept

    def run_command(self, cmd: dict[str, Any]) -> None:
        """Work the metadata leader hands out with a heartbeat reply (GC, repair)."""
        op = cmd.get("op")
        if op == "delete":
            self.rpc.submit(self._delete, list(cmd.get("ids", [])))
        elif op == "admin_state":
            self.rpc.submit(self._set_admin_state, str(cmd.get("state")))
        elif op == "replicate":
            self.rpc.submit(self._replicate_now, cmd["id"], list(cmd["to"]))
        else:
            log.warning("ignoring unknown command %r from the metadata service", op)

    def _replicate_now(self, chunk_id: str, targets: list[str]) -> None:
        try:
            data = self._read(chunk_id)
            self.client.call(
                targets[0], "cs.put", {"id": chunk_id, "forward": targets[1:]}, [data], timeout=30
            )
        except DfsError as exc:
            log.warning("replicating %s to %s failed: %s", chunk_id[:12], targets, exc.message)

    def stat(self, call: rpc.Call | None = None) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.store.stat())
        out["load"] = self._load
        out["endpoint"] = self.endpoint
        out["scrub"] = self.scrubber.progress()
        out["admin"] = self.admin_state
        return out

    def scrub(self, call: rpc.Call) -> Any:
        return {"started": self.scrubber.start_now(), "scrub": self.scrubber.progress()}

    # ------------------------------------------------------------ admin state

    def _admin_file(self) -> Path:
        return self.data_dir / "admin_state"

    def _load_admin_state(self) -> str:
        """Decommissioning/retired survive restarts and metadata leader changes: the
        leader learns it again from our registration."""
        try:
            state = self._admin_file().read_text().strip()
        except OSError:
            return "active"
        return state if state in ADMIN_STATES else "active"

    def set_admin_state(self, call: rpc.Call) -> Any:
        self._set_admin_state(call.fields["state"])
        return {"state": self.admin_state}

    def _set_admin_state(self, state: str) -> None:
        if state not in ADMIN_STATES:
            raise DfsError("EINVAL", f"admin state must be one of {ADMIN_STATES}, got {state!r}")
        if state == self.admin_state:
            return
        _write_atomic(self._admin_file(), state + "\n")
        self.admin_state = state
        log.info("admin state is now %s", state)

    def list_ids(self, call: rpc.Call) -> Any:
        limit = min(call.fields.get("limit", 1000), LIST_PAGE_MAX)
        ids, more = self.store.list_ids(call.fields.get("after"), limit)
        return {"ids": ids, "more": more}

    def verify(self, call: rpc.Call) -> Any:
        return {"ok": self.store.verify(call.fields["id"])}

    def replicate(self, call: rpc.Call) -> Any:
        """Copy a local chunk to other servers (repair and rebalance), chained."""
        chunk_id, targets = call.fields["id"], call.fields["to"]
        with self._busy():
            data = self._read(chunk_id)
        fut = self.client.call_async(
            targets[0], "cs.put", {"id": chunk_id, "forward": targets[1:]}, [data]
        )

        def done(f: Future) -> None:
            try:
                reply = rpc.RpcClient.wait(f)
            except DfsError as exc:
                call.fail(exc)
                return
            call.respond({"stored": reply.fields.get("stored", []), "bytes": len(data)})

        fut.add_done_callback(done)
        return rpc.DEFERRED

    # ------------------------------------------------------------ running

    def _busy(self) -> _LoadCounter:
        return _LoadCounter(self)

    def start(self) -> ChunkServer:
        self.rpc.start()
        self.scrubber.start()
        return self

    def stop(self) -> None:
        self.scrubber.stop()
        self.rpc.stop()
        self.client.close()


class _LoadCounter:
    """Counts requests in progress (the 'load' placement uses to order replicas)."""

    def __init__(self, server: ChunkServer) -> None:
        self.server = server

    def __enter__(self) -> None:
        with self.server._load_lock:
            self.server._load += 1

    def __exit__(self, *exc: object) -> None:
        with self.server._load_lock:
            self.server._load -= 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dfs-chunkserver", description="Run one dfs chunkserver (stores replicated chunks)."
    )
    p.add_argument("--data", required=True, type=Path, help="data directory (created if missing)")
    p.add_argument("--listen", default="tcp://127.0.0.1:0", help="endpoint to serve on")
    p.add_argument("--cluster", help="metadata endpoints or cluster.toml (default $DFS_CLUSTER)")
    p.add_argument("--key", help="cluster key file: every socket uses CURVE")
    p.add_argument("--capacity", type=parse_size, help="bytes this server may use (e.g. 100G)")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="K=V",
        help="failure-domain label, e.g. rack=r1 (repeatable)",
    )
    p.add_argument("--workers", type=int, default=4, help="disk/hash worker threads")
    p.add_argument(
        "--scrub-rate",
        type=float,
        default=DEFAULT_RATE / (1 << 20),
        metavar="MB/S",
        help="background scrub read rate in MiB/s (0: only on demand, dfs-admin scrub)",
    )
    p.add_argument(
        "--scrub-interval",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="seconds between the starts of automatic scrub passes",
    )
    p.add_argument("--pid-file", type=Path, help="write the process id here")
    p.add_argument("--endpoint-file", type=Path, help="write the bound endpoint here")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    sys.setswitchinterval(0.0005)  # short GIL slices: a chained put crosses several threads
    args.data.mkdir(parents=True, exist_ok=True)
    try:
        server = ChunkServer(
            args.data,
            args.listen,
            security=load_optional(args.key),
            capacity=args.capacity,
            workers=args.workers,
            scrub_rate=max(0.0, args.scrub_rate) * (1 << 20),
            scrub_interval=max(1.0, args.scrub_interval),
        )
    except DfsError as exc:
        log.error("cannot start: %s", exc.message)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    if args.pid_file:
        args.pid_file.write_text(f"{os.getpid()}\n")
    if args.endpoint_file:
        _write_atomic(args.endpoint_file, server.endpoint + "\n")
    log.info("chunkserver serving %s on %s", args.data, server.endpoint)
    heartbeat = None
    if args.cluster:
        labels = dict(kv.split("=", 1) for kv in args.label if "=" in kv)
        heartbeat = Heartbeat(server, args.cluster, args.key, labels).start()
    stop.wait()
    if heartbeat is not None:
        heartbeat.stop()
    server.stop()
    log.info("chunkserver stopped")
    return 0


def _write_atomic(path: Path, text: str) -> None:
    """Replace a small state file durably: temp, fsync, rename, fsync the directory."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


if __name__ == "__main__":
    raise SystemExit(main())
