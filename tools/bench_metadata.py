"""Benchmark: metadata operations per second on a real 3-node cluster on loopback.

    .venv/bin/python -m tools.bench_metadata [--seconds 5] [--clients 1,32] [--procs 4]
        [--ops create,stat,rename] [--json] [--floor]

Creates, stats and renames with 1 and with 32 concurrent clients (each client
a thread issuing requests back to back; 32 clients run as 4 processes x 8
threads, or as ``--procs`` processes: ``--procs 32`` gives every client a
process of its own). Threads of one process share one dfs.Client, whose
concurrent requests may travel together in one message (dfs/rpc.py's lanes);
separate processes never combine. Every create and rename is committed through Raft (fsync'd on a
majority); stats are linearizable reads (served under the leader's lease, else
ReadIndex). ``--floor`` also times bare pyzmq round trips (a ROUTER that
answers at once, no dfs code) in the same client shape: the ceiling any Python
client and server reach on this machine. The RAM/snapshot figures per million
files come from tools/bench_namespace.py.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tools.cluster import LocalCluster


def _worker(
    cluster_file: str,
    op: str,
    prefix: str,
    threads: int,
    seconds: float,
    start: Any,
    out: mp.Queue,
) -> None:
    import dfs

    client = dfs.connect(cluster_file)
    lat: list[float] = []
    lock = threading.Lock()
    ready, go = threading.Barrier(threads + 1), threading.Event()

    def run(t: int) -> None:
        mine: list[float] = []
        base = f"{prefix}-{t}"
        client.mkdir(f"/{op}/{base}", parents=True)
        if op in ("stat", "rename"):
            for i in range(100):
                client.meta.ns("create", True, path=f"/{op}/{base}/f{i}")
        ready.wait()
        go.wait()  # every client of every process starts timing together
        deadline = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            if op == "create":
                client.meta.ns("create", True, path=f"/{op}/{base}/n{i}")
            elif op == "stat":
                client.stat(f"/{op}/{base}/f{i % 100}")
            else:
                client.rename(f"/{op}/{base}/f{i % 100}", f"/{op}/{base}/g{i % 100}")
                client.rename(f"/{op}/{base}/g{i % 100}", f"/{op}/{base}/f{i % 100}")
            mine.append(time.perf_counter() - t0)
            i += 1
        with lock:
            lat.extend(mine)

    ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    ready.wait()
    start.wait()
    cpu0 = time.process_time()
    go.set()
    for t in ts:
        t.join()
    cpu = time.process_time() - cpu0
    client.close()
    rpc = client.rpc
    out.put((lat, cpu, getattr(rpc, "lane_requests", 0), getattr(rpc, "lane_messages", 0)))


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process so far (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    cluster_file: str,
    op: str,
    clients: int,
    seconds: float,
    procs: int = 4,
    leader_pid: int | None = None,
) -> dict:
    """Run ``clients`` clients in ``procs`` processes for ``seconds`` (all start
    timing together, after their setup); ops/s, latency, and the CPU each op
    cost the client processes and the leader."""
    procs_n = max(1, min(clients, procs))
    per = clients // procs_n
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    start = ctx.Barrier(procs_n + 1)
    prefix = f"c{clients}x{procs_n}"
    ps = [
        ctx.Process(
            target=_worker, args=(cluster_file, op, f"{prefix}p{i}", per, seconds, start, q)
        )
        for i in range(procs_n)
    ]
    for p in ps:
        p.start()
    start.wait(timeout=120)
    leader0 = _cpu_seconds(leader_pid)
    lat: list[float] = []
    client_cpu, reqs, msgs = 0.0, 0, 0
    for _ in ps:
        got, cpu, r, m = q.get(timeout=seconds + 120)
        lat.extend(got)
        client_cpu += cpu
        reqs, msgs = reqs + r, msgs + m
    leader_cpu = _cpu_seconds(leader_pid) - leader0
    for p in ps:
        p.join()
    ops = len(lat) * (2 if op == "rename" else 1)
    lat.sort()
    return {
        "op": op,
        "clients": clients,
        "procs": procs_n,
        "ops_per_s": ops / seconds,
        "median_ms": statistics.median(lat) * 1000 if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
        "client_cpu_us": client_cpu / ops * 1e6 if ops else None,
        "leader_cpu_us": leader_cpu / ops * 1e6 if ops and leader_pid else None,
        "reqs_per_msg": reqs / msgs if msgs else 1.0,  # setup's requests included
    }


def _echo_server(ready: mp.Queue, stop: mp.Event) -> None:
    """A bare ZeroMQ ROUTER that answers every request with a stat-sized reply."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    ready.put(f"tcp://127.0.0.1:{port}")
    reply = b"r" * 200
    while not stop.is_set():
        if not sock.poll(100):
            continue
        while True:
            try:
                peer = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            sock.recv()
            sock.send(peer, zmq.SNDMORE)
            sock.send(reply)


def _echo_client(ep: str, threads: int, seconds: float, out: mp.Queue) -> None:
    import zmq

    ctx = zmq.Context.instance()
    counts = [0] * threads

    def run(t: int) -> None:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVTIMEO, 2000)
        sock.connect(ep)
        request, n = b"q" * 60, 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            sock.send(request)
            sock.recv()
            n += 1
        counts[t] = n
        sock.close(linger=0)

    ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(sum(counts))


def zmq_floor(clients: int, seconds: float, procs: int = 4) -> float:
    """Round trips/s of bare pyzmq (no dfs code at all) in the benchmark's shape,
    one request per message: the most this machine gives any Python client +
    server pair that does not combine requests."""
    procs_n = max(1, min(clients, procs))
    ctx = mp.get_context("spawn")
    ready, out, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_echo_server, args=(ready, stop))
    server.start()
    ep = ready.get(timeout=30)
    ps = [
        ctx.Process(target=_echo_client, args=(ep, clients // procs_n, seconds, out))
        for _ in range(procs_n)
    ]
    for p in ps:
        p.start()
    total = sum(out.get(timeout=seconds + 60) for _ in ps)
    for p in ps:
        p.join()
    stop.set()
    server.join()
    return total / seconds


OPS = ("create", "stat", "rename")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", default="1,32")
    p.add_argument(
        "--procs",
        type=int,
        default=4,
        help="client processes for a multi-client run (threads per process: clients / procs)",
    )
    p.add_argument("--ops", default="create,stat,rename", help="operations to time")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--floor",
        action="store_true",
        help="also time bare pyzmq round trips in the same client shape (the ceiling)",
    )
    a = p.parse_args()
    unknown = set(a.ops.split(",")) - set(OPS)
    if unknown:
        p.error(f"unknown --ops {', '.join(sorted(unknown))} (choose from {', '.join(OPS)})")
    results = []
    with tempfile.TemporaryDirectory(prefix="dfs-bench-md-") as tmp:
        cluster = LocalCluster(Path(tmp), 3, 0)
        try:
            cluster.start(timeout=60)
            cf = str(cluster.cluster_file)
            for n in (int(x) for x in a.clients.split(",")):
                for op in a.ops.split(","):
                    leader = cluster.leader().pid
                    results.append(measure(cf, op, n, a.seconds, a.procs, leader))
        finally:
            cluster.stop()
    if a.floor:
        for n in (int(x) for x in a.clients.split(",")):
            rate = zmq_floor(n, a.seconds, a.procs)
            results.append({"op": "zmq-floor", "clients": n, "ops_per_s": rate})
    if a.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{'op':<9} {'clients':>7} {'procs':>5} {'ops/s':>8} {'median ms':>10} {'p99 ms':>8}"
        f" {'client us/op':>12} {'leader us/op':>12} {'reqs/msg':>8}"
    )
    for r in results:
        head = f"{r['op']:<9} {r['clients']:>7} {min(r['clients'], a.procs):>5}"
        if "median_ms" not in r:  # the bare-zmq ceiling: a rate only
            print(f"{head} {r['ops_per_s']:>8.0f}")
            continue
        print(
            f"{head} {r['ops_per_s']:>8.0f} {r['median_ms']:>10.2f} {r['p99_ms']:>8.2f}"
            f" {r['client_cpu_us']:>12.0f} {r['leader_cpu_us'] or 0:>12.0f}"
            f" {r['reqs_per_msg']:>8.1f}"
        )


if __name__ == "__main__":
    main()
