"""A trivial replicated key-value store on the Raft driver: for benchmarks and tests.

    python -m tools.raft_kv --id 1 --data D --listen tcp://127.0.0.1:7101 \\
        --peers 1=tcp://127.0.0.1:7101,2=...,3=...

``kv.put`` is committed through Raft (fsync'd on a majority) before it is
answered; ``kv.get`` is a linearizable read (ReadIndex).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack

from dfs import rpc
from dfs.logs import setup_logging
from metadata.raft.driver import RaftDriver
from metadata.server import parse_peers


class KV:
    """The state machine: a dict, a count of applied writes."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.writes = 0

    def apply(self, data: bytes) -> dict[str, Any]:
        key, value = msgpack.unpackb(data, raw=False)
        self.data[key] = value
        self.writes += 1
        return {"writes": self.writes}

    def snapshot(self) -> bytes:
        return msgpack.packb([self.data, self.writes], use_bin_type=True)

    def restore(self, data: bytes) -> None:
        self.data, self.writes = msgpack.unpackb(data, raw=False)


def serve(node_id: int, data: Path, listen: str, peers: dict[int, str]) -> tuple[Any, Any]:
    server = rpc.RpcServer(listen, name="raftkv")
    kv = KV()
    driver = RaftDriver(node_id, peers, data, server, kv)

    def put(call: rpc.Call) -> Any:
        f = call.fields
        driver.propose(msgpack.packb([f["key"], f["value"]], use_bin_type=True), call.settle)
        return rpc.DEFERRED

    def get(call: rpc.Call) -> Any:
        key = call.fields["key"]
        driver.read(lambda: {"value": kv.data.get(key), "writes": kv.writes}, call.settle)
        return rpc.DEFERRED

    server.route("kv.put", put)
    server.route("kv.get", get)
    server.route(
        "raft.status", lambda call: {"leader": driver.leader_endpoint(), **driver.status()}
    )
    return server, driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="raft-kv", description=__doc__.splitlines()[0])
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--peers", required=True)
    p.add_argument("--pid-file", type=Path)
    p.add_argument("--endpoint-file", type=Path)
    a = p.parse_args(argv)
    setup_logging("WARNING")
    sys.setswitchinterval(0.0005)
    server, driver = serve(a.id, a.data, a.listen, parse_peers(a.peers))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    driver.start()
    server.start()
    if a.pid_file:
        a.pid_file.write_text(f"{os.getpid()}\n")
    if a.endpoint_file:
        a.endpoint_file.write_text(server.endpoint + "\n")
    stop.wait()
    server.stop()
    driver.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
