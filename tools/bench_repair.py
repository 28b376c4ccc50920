"""Benchmark: re-replication after a chunkserver loss, and rebalance onto an empty
server, against the disk's own copy speed measured in the same run.

    .venv/bin/python -m tools.bench_repair [--size 1G] [--json] [--keep]

Starts a real cluster (3 metadata nodes, 4 chunkservers) under a temp dir on
this disk and uploads ``--size`` bytes of incompressible data (R = 3). Then:

1. baseline: ``cp`` of a file of the same size (cold: evicted from the page
   cache first) plus fsync of the copy: MB/s of the disk copying to itself;
2. re-replication: kill -9 one chunkserver; from the moment the leader declares
   it dead until every chunk has 3 live copies again; MB/s of bytes copied
   (chunkserver to chunkserver, each copy written and fsync'd);
3. rebalance: add an empty chunkserver, ``rebalance --threshold 5``, until done;
   MB/s of bytes moved.

Every chunk file is evicted from the page cache before steps 2 and 3, so the
copies read from disk like the baseline does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dfs
from dfs.config import parse_size
from tools.cluster import LocalCluster

FILE = 64 << 20  # bytes per uploaded file


def evict(root: Path) -> None:
    """Drop a tree's files from the page cache, so the next read comes from disk."""
    for path in root.rglob("*"):
        if path.is_file():
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def disk_copy(work: Path, size: int) -> float:
    """Seconds for cp + fsync of ``size`` bytes, source cold."""
    src, dst = work / "src.bin", work / "dst.bin"
    with open(src, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())
    evict(work)
    t = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    took = time.perf_counter() - t
    src.unlink()
    dst.unlink()
    return took


def upload(cl: Any, size: int) -> float:
    t = time.perf_counter()
    left, i = size, 0
    while left:
        n = min(left, FILE)
        cl.write_bytes(f"/bench/f{i:05d}", os.urandom(n))
        left -= n
        i += 1
    return time.perf_counter() - t


def wait(pred: Any, timeout: float, every: float = 0.2) -> float:
    t = time.perf_counter()
    while not pred():
        if time.perf_counter() - t > timeout:
            raise TimeoutError("timed out")
        time.sleep(every)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_repair", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=parse_size("1G"), help="data to upload")
    p.add_argument("--dir", type=Path, help="work directory (default: a temp dir)")
    p.add_argument(
        "--concurrency", type=int, default=0, help="copies in flight per server (default: server's)"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args(argv)
    size = a.size
    work = Path(tempfile.mkdtemp(prefix="dfs-bench-repair-", dir=a.dir))
    need = size * 5
    if shutil.disk_usage(work).free < need:
        print(f"need about {need >> 20} MiB free under {work}", file=sys.stderr)
        return 2
    mib = 1 << 20
    out: dict[str, Any] = {"size": size}
    # servers sized so that use is a real percentage: the rebalance has work to do
    cap = str(max(64 << 20, 2 * size))
    extra = ["--repair-concurrency", str(a.concurrency)] if a.concurrency else []
    c = LocalCluster(
        work / "cluster", 3, 4, chunkserver_extra=["--capacity", cap], metadata_extra=extra
    )
    try:
        c.start(timeout=60)
        with dfs.connect(str(c.cluster_file)) as cl:
            cl.mkdir("/bench", parents=True)
            t = upload(cl, size)
            out["upload_mb_s"] = size / t / mib
            log(a, f"uploaded {size / mib:.0f} MiB x3 in {t:.1f}s ({out['upload_mb_s']:.1f} MB/s)")

            t = disk_copy(work, size)
            out["disk_copy_mb_s"] = size / t / mib
            log(a, f"disk copy (cp + fsync, cold): {out['disk_copy_mb_s']:.1f} MB/s")

            # -- re-replication
            time.sleep(1.5)  # last heartbeats
            evict(c.dir)
            before = c.status()["maintenance"]["progress"]["bytes_copied"]
            c.chunkservers[0].kill()
            wait(lambda: c.status()["cluster"]["under_replicated"] > 0, 60)
            t = wait(lambda: c.status()["cluster"]["under_replicated"] == 0, 3600)
            copied = c.status()["maintenance"]["progress"]["bytes_copied"] - before
            out["rereplicated_bytes"] = copied
            out["rereplication_s"] = t
            out["rereplication_mb_s"] = copied / t / mib
            log(
                a,
                f"re-replication: {copied / mib:.0f} MiB in {t:.1f}s "
                f"({out['rereplication_mb_s']:.1f} MB/s)",
            )

            # -- rebalance onto an empty server
            c.add_chunkserver(wait=True)
            time.sleep(1.5)
            evict(c.dir)
            t0 = time.perf_counter()
            r = cl.meta.call("md.admin", {"action": "rebalance", "args": {"threshold": 5.0}})[
                "rebalance"
            ]
            last_change, moved = t0, 0
            while not r["done"]:
                time.sleep(0.1)
                r = cl.meta.call("md.admin", {"action": "rebalance_status", "args": {}})[
                    "rebalance"
                ]
                if r["bytes_moved"] != moved:
                    moved, last_change = r["bytes_moved"], time.perf_counter()
            # until the last byte moved (the final rounds only confirm nothing is left)
            t = max(0.001, last_change - t0)
            out["rebalanced_bytes"] = r["bytes_moved"]
            out["rebalance_s"] = t
            out["rebalance_mb_s"] = r["bytes_moved"] / t / mib
            log(
                a,
                f"rebalance: {r['moves_done']} moves, {r['bytes_moved'] / mib:.0f} MiB in "
                f"{t:.1f}s ({out['rebalance_mb_s']:.1f} MB/s)",
            )
            ok = cl.meta.call("md.fsck", {"path": "/", "limit": 1})["ok"]
            out["healthy_after"] = ok
    finally:
        c.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = out["disk_copy_mb_s"]
    out["rereplication_vs_disk"] = out["rereplication_mb_s"] / base
    out["rebalance_vs_disk"] = out["rebalance_mb_s"] / base
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"\nre-replication {out['rereplication_mb_s']:.1f} MB/s = "
            f"{out['rereplication_vs_disk']:.2f}x disk copy; rebalance "
            f"{out['rebalance_mb_s']:.1f} MB/s = {out['rebalance_vs_disk']:.2f}x disk copy "
            f"({base:.1f} MB/s)"
        )
    return 0 if out.get("healthy_after") else 1


def log(a: argparse.Namespace, msg: str) -> None:
    print(msg, file=sys.stderr if a.json else sys.stdout, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
