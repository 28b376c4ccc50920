"""Benchmark: our Raft (3 processes on loopback, every commit fsync'd on a majority)
against PySyncObj running the same workload in the same run.

    .venv/bin/python -m tools.bench_raft [--seconds 5] [--failovers 5] [--json]
    .venv/bin/python -m tools.bench_raft --no-baseline     # skip PySyncObj

Workload: a trivial key-value store; puts of 100-byte values. Reported:
committed puts/s with 1 and with 64 in flight, median and p99 latency, and
the time from kill -9 of the leader to the next committed write (median of
several). PySyncObj (pip package pysyncobj, installed into the venv only for
this benchmark) does not fsync; its load runs inside a member process, since
it has no client protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import deque
from pathlib import Path
from typing import Any

from dfs.errors import DfsError
from dfs.rpc import RpcClient
from tools.cluster import free_port
from tools.procs import Proc, spawn

VALUE = os.urandom(100)


class KVCluster:
    def __init__(self, root: Path, n: int = 3) -> None:
        self.root = root
        self.peers = {i: f"tcp://127.0.0.1:{free_port()}" for i in range(1, n + 1)}
        self.procs: dict[int, Proc] = {}
        self.rpc = RpcClient(timeout=2.0)

    def start(self, i: int) -> None:
        peers = ",".join(f"{k}={v}" for k, v in self.peers.items())
        args = [
            "--id",
            str(i),
            "--data",
            str(self.root / f"n{i}"),
            "--listen",
            self.peers[i],
            "--peers",
            peers,
        ]
        self.procs[i] = spawn("raftkv", f"n{i}", self.root / "run", args)

    def leader(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, ep in self.peers.items():
                if i not in self.procs or not self.procs[i].alive():
                    continue
                try:
                    st = self.rpc.call(ep, "raft.status", timeout=0.5).fields
                except DfsError:
                    continue
                if st.get("role") == "leader":
                    return i
            time.sleep(0.02)
        raise RuntimeError("no leader")

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()
        self.rpc.close()


def load(rpc: RpcClient, ep: str, seconds: float, inflight: int) -> dict[str, Any]:
    lat: list[float] = []
    window: deque = deque()
    deadline = time.perf_counter() + seconds
    i = 0
    if inflight == 1:  # one writer: the blocking call, as a synchronous client does
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            rpc.call(ep, "kv.put", {"key": f"k{i % 1000}", "value": VALUE})
            lat.append(time.perf_counter() - t0)
            i += 1
    while time.perf_counter() < deadline:
        while len(window) < inflight:
            window.append(
                (
                    time.perf_counter(),
                    rpc.call_async(ep, "kv.put", {"key": f"k{i % 1000}", "value": VALUE}),
                )
            )
            i += 1
        t0, fut = window.popleft()
        rpc.wait(fut)
        lat.append(time.perf_counter() - t0)
    for t0, fut in window:
        rpc.wait(fut)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return {
        "inflight": inflight,
        "ops_per_s": len(lat) / seconds,
        "median_ms": statistics.median(lat) * 1e3,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
    }


def failover(c: KVCluster, rounds: int) -> list[float]:
    """kill -9 the leader while a writer runs; time until the next committed put."""
    times = []
    for _ in range(rounds):
        lead = c.leader()
        c.rpc.call(c.peers[lead], "kv.put", {"key": "warm", "value": VALUE})
        c.procs[lead].kill()
        t_kill = time.monotonic()
        done = False
        while not done and time.monotonic() - t_kill < 20:
            for i, ep in c.peers.items():
                if i == lead:
                    continue
                try:
                    c.rpc.call(ep, "kv.put", {"key": "after", "value": VALUE}, timeout=0.2)
                    done = True
                    break
                except DfsError:
                    continue
        times.append(time.monotonic() - t_kill)
        c.start(lead)  # rejoin, then let it catch up
        time.sleep(1.0)
    return times


def run_ours(seconds: float, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dfs-bench-raft-") as tmp:
        c = KVCluster(Path(tmp))
        try:
            for i in c.peers:
                c.start(i)
            ep = c.peers[c.leader()]
            out: dict[str, Any] = {"system": "dfs raft (fsync)"}
            out["one"] = load(c.rpc, ep, seconds, 1)
            out["many"] = load(c.rpc, ep, seconds, 64)
            fo = failover(c, rounds)
            out["failover_s"] = {"median": statistics.median(fo), "all": fo}
            return out
        finally:
            c.stop()


_PSO_NODE = textwrap.dedent("""
    import json, sys, time, threading, statistics
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class KV(SyncObj):
        def __init__(self, me, others):
            super().__init__(me, others, conf=SyncObjConf(dynamicMembershipChange=False))
            self.d = {}

        @replicated
        def put(self, k, v):
            self.d[k] = v
            return len(self.d)

    me, others, mode, seconds = sys.argv[1], sys.argv[2].split(","), sys.argv[3], float(sys.argv[4])
    kv = KV(me, others)
    while not kv._isReady():
        time.sleep(0.05)
    if mode == "serve":
        while True:
            time.sleep(1)
    value = b"x" * 100
    def run(inflight):
        lat, lock = [], threading.Lock()
        sem = threading.Semaphore(inflight)
        deadline = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < deadline:
            sem.acquire()
            t0 = time.perf_counter()
            def cb(res, err, t0=t0):
                with lock:
                    lat.append(time.perf_counter() - t0)
                sem.release()
            kv.put("k%d" % (i % 1000), value, callback=cb)
            i += 1
        for _ in range(inflight):
            sem.acquire()
        lat.sort()
        return {"inflight": inflight, "ops_per_s": len(lat) / seconds,
                "median_ms": statistics.median(lat) * 1e3,
                "p99_ms": lat[int(len(lat) * 0.99)] * 1e3}
    print(json.dumps({"one": run(1), "many": run(64)}), flush=True)
""")


def run_pysyncobj(seconds: float) -> dict[str, Any] | None:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "pysyncobj==0.3.17"],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            print(f"PySyncObj baseline skipped: pip failed: {r.stderr[-300:]}", file=sys.stderr)
            return None
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    procs = []
    try:
        for me in addrs[1:]:
            others = ",".join(a for a in addrs if a != me)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _PSO_NODE, me, others, "serve", "0"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        others = ",".join(addrs[1:])
        r = subprocess.run(
            [sys.executable, "-c", _PSO_NODE, addrs[0], others, "load", str(seconds)],
            capture_output=True,
            text=True,
            timeout=seconds * 4 + 60,
        )
        if r.returncode != 0:
            print(f"PySyncObj baseline failed: {r.stderr[-500:]}", file=sys.stderr)
            return None
        out = json.loads(r.stdout.strip().splitlines()[-1])
        out["system"] = "PySyncObj 0.3.17 (no fsync)"
        return out
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--failovers", type=int, default=5)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    ours = run_ours(a.seconds, a.failovers)
    base = None if a.no_baseline else run_pysyncobj(a.seconds)
    if a.json:
        print(json.dumps({"ours": ours, "pysyncobj": base}, indent=2))
        return
    print(f"{'system':<28} {'in flight':>9} {'ops/s':>8} {'median ms':>10} {'p99 ms':>8}")
    for r in (ours, base):
        if r is None:
            continue
        for k in ("one", "many"):
            x = r[k]
            print(
                f"{r['system']:<28} {x['inflight']:>9} {x['ops_per_s']:>8.0f} "
                f"{x['median_ms']:>10.2f} {x['p99_ms']:>8.2f}"
            )
    fo = ours["failover_s"]
    print(
        f"failover after kill -9 of the leader (ours): median {fo['median']:.2f}s "
        f"over {len(fo['all'])} runs: {', '.join(f'{t:.2f}' for t in fo['all'])}"
    )
    if base is not None and ours["many"]["ops_per_s"]:
        print(
            f"ratio ours/PySyncObj, 64 in flight: "
            f"{ours['many']['ops_per_s'] / base['many']['ops_per_s']:.2f}"
        )


if __name__ == "__main__":
    main()
