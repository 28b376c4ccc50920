"""Benchmark: metadata operations per second on a real 3-node cluster on loopback.

    .venv/bin/python -m tools.bench_metadata [--seconds 5] [--clients 1,32] [--json]

Creates, stats and renames with 1 and with 32 concurrent clients (client
processes, each with its own connection; 32 clients run as 4 processes x 8
threads). Every create and rename is committed through Raft (fsync'd on a
majority); stats are linearizable reads (ReadIndex). The RAM/snapshot figures
per million files come from tools/bench_namespace.py.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tools.cluster import LocalCluster


def _worker(
    cluster_file: str, op: str, prefix: str, threads: int, seconds: float, out: mp.Queue
) -> None:
    import dfs

    client = dfs.connect(cluster_file)
    lat: list[float] = []
    lock = threading.Lock()

    def run(t: int) -> None:
        mine: list[float] = []
        base = f"{prefix}-{t}"
        client.mkdir(f"/{op}/{base}", parents=True)
        if op in ("stat", "rename"):
            for i in range(100):
                client.meta.ns("create", True, path=f"/{op}/{base}/f{i}")
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
    for t in ts:
        t.join()
    client.close()
    out.put(lat)


def measure(cluster_file: str, op: str, clients: int, seconds: float) -> dict:
    procs_n = min(clients, 4)
    per = clients // procs_n
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    ps = [
        ctx.Process(target=_worker, args=(cluster_file, op, f"c{clients}p{i}", per, seconds, q))
        for i in range(procs_n)
    ]
    for p in ps:
        p.start()
    lat: list[float] = []
    for _ in ps:
        lat.extend(q.get(timeout=seconds + 120))
    for p in ps:
        p.join()
    ops = len(lat) * (2 if op == "rename" else 1)
    lat.sort()
    return {
        "op": op,
        "clients": clients,
        "ops_per_s": ops / seconds,
        "median_ms": statistics.median(lat) * 1000 if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", default="1,32")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="dfs-bench-md-") as tmp:
        cluster = LocalCluster(Path(tmp), 3, 0)
        try:
            cluster.start(timeout=60)
            for n in (int(x) for x in a.clients.split(",")):
                for op in ("create", "stat", "rename"):
                    results.append(measure(str(cluster.cluster_file), op, n, a.seconds))
        finally:
            cluster.stop()
    if a.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'op':<8} {'clients':>7} {'ops/s':>10} {'median ms':>10} {'p99 ms':>8}")
    for r in results:
        print(
            f"{r['op']:<8} {r['clients']:>7} {r['ops_per_s']:>10.0f} {r['median_ms']:>10.2f} "
            f"{r['p99_ms']:>8.2f}"
        )


if __name__ == "__main__":
    main()
