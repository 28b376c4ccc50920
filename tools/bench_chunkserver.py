"""Benchmark: chunk put/get throughput against plain write+fsync / read of the same bytes.

    .venv/bin/python -m tools.bench_chunkserver [--chunks 128] [--inflight 4] [--json]

Starts real chunkserver processes on 127.0.0.1 in a temp dir. The baseline,
measured in the same run on the same disk, writes each 4 MiB chunk to its own
file with write + fsync (plain Python), and reads the files back. Both reads are cold: the files are
dropped from the page cache (posix_fadvise DONTNEED) before reading.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections import deque
from pathlib import Path

from dfs.rpc import RpcClient
from tools.procs import spawn

CHUNK = 4 << 20


def evict(root: Path) -> None:
    """Drop a tree's files from the page cache, so the next read comes from disk."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def baseline(dirpath: Path, chunks: list[bytes]) -> tuple[float, float]:
    dirpath.mkdir()
    t = time.perf_counter()
    for i, data in enumerate(chunks):
        fd = os.open(dirpath / f"{i}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
    write = time.perf_counter() - t
    evict(dirpath)
    t = time.perf_counter()
    for i in range(len(chunks)):
        with open(dirpath / f"{i}", "rb") as f:
            f.read()
    read = time.perf_counter() - t
    return write, read


def pipelined(client: RpcClient, calls: list[tuple[str, str, dict, list]], inflight: int) -> float:
    """Run calls with up to ``inflight`` outstanding; return elapsed seconds."""
    t = time.perf_counter()
    window: deque = deque()
    for ep, op, fields, frames in calls:
        if len(window) >= inflight:
            client.wait(window.popleft())
        window.append(client.call_async(ep, op, fields, frames))
    while window:
        client.wait(window.popleft())
    return time.perf_counter() - t


def run(n: int, inflight: int) -> dict:
    chunks = [os.urandom(CHUNK) for _ in range(n)]
    ids = [hashlib.sha256(c).hexdigest() for c in chunks]
    total_mb = n * CHUNK / 1e6
    with tempfile.TemporaryDirectory(prefix="dfs-bench-") as tmp:
        root = Path(tmp)
        bw, br = baseline(root / "baseline", chunks)
        servers = [
            spawn("chunkserver", f"cs{i}", root / "run", ["--data", str(root / f"cs{i}")])
            for i in range(3)
        ]
        client = RpcClient(timeout=60)
        try:
            eps = [s.endpoint for s in servers]
            single_put = pipelined(
                client, [(eps[0], "cs.put", {"id": i}, [c]) for i, c in zip(ids, chunks)], inflight
            )
            evict(root / "cs0")
            single_get = pipelined(
                client, [(eps[0], "cs.get", {"id": i}, []) for i in ids], inflight
            )
            # chain: delete from server 0 first is not needed: use fresh content
            chunks2 = [os.urandom(CHUNK) for _ in range(n)]
            ids2 = [hashlib.sha256(c).hexdigest() for c in chunks2]
            chain_put = pipelined(
                client,
                [
                    (eps[0], "cs.put", {"id": i, "forward": eps[1:]}, [c])
                    for i, c in zip(ids2, chunks2)
                ],
                inflight,
            )
        finally:
            client.close()
            for s in servers:
                s.stop()
    res = {
        "chunks": n,
        "chunk_bytes": CHUNK,
        "inflight": inflight,
        "baseline_write_MBps": total_mb / bw,
        "baseline_read_MBps": total_mb / br,
        "put_1_MBps": total_mb / single_put,
        "get_1_MBps": total_mb / single_get,
        "put_chain3_MBps": total_mb / chain_put,
    }
    res["put_ratio"] = res["put_1_MBps"] / res["baseline_write_MBps"]
    res["get_ratio"] = res["get_1_MBps"] / res["baseline_read_MBps"]
    res["chain_ratio"] = res["put_chain3_MBps"] / res["baseline_write_MBps"]
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=128, help="4 MiB chunks per phase")
    p.add_argument("--inflight", type=int, default=8, help="requests outstanding")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    res = run(a.chunks, a.inflight)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{a.chunks} x 4 MiB random chunks, {a.inflight} in flight")
    print(f"baseline write+fsync  {res['baseline_write_MBps']:8.0f} MB/s")
    print(f"baseline cold read    {res['baseline_read_MBps']:8.0f} MB/s")
    print(f"put, 1 server         {res['put_1_MBps']:8.0f} MB/s  ratio {res['put_ratio']:.2f}")
    print(f"cold get, 1 server    {res['get_1_MBps']:8.0f} MB/s  ratio {res['get_ratio']:.2f}")
    print(
        f"put, 3-server chain   {res['put_chain3_MBps']:8.0f} MB/s  ratio {res['chain_ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
