"""Benchmark: `dfs put` / `dfs get` on a local 3x3 cluster against the disk itself.

    .venv/bin/python -m tools.bench_client [--size-mb 1024] [--files 3000] [--json]

Big file: a random file of --size-mb, put with 3 replicas then got back (cold:
the chunk files are dropped from the page cache first), against the disk's
own speed measured in the same run (write with fdatasync; cold read; the file
written three times at once, each fsync'd: the ceiling of 3 replicas on one disk).
Small files: a real source tree (Python's standard library, --files files)
with `dfs put -r` / `dfs get -r`, in files/s: as the command does by default
(files of at most 64 KiB inline in the metadata service), then the same tree
again with `--no-inline` (every file in chunks) as the same-run baseline.
Everything runs through the real `dfs` command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from tools.bench_chunkserver import evict
from tools.bench_fuse import write_copies
from tools.cluster import LocalCluster

BLOCK = 1 << 20


def disk_baseline(path: Path, size: int) -> tuple[float, float]:
    buf = os.urandom(BLOCK)
    t = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size // BLOCK):
            f.write(buf)
        f.flush()
        os.fdatasync(f.fileno())
    write = time.perf_counter() - t
    evict(path.parent)
    t = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(8 * BLOCK):
            pass
    read = time.perf_counter() - t
    path.unlink()
    return size / write / 1e6, size / read / 1e6


def dfs(cluster_file: Path, *args: str) -> float:
    env = {**os.environ, "DFS_CLUSTER": str(cluster_file)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dfs.cli", "-q", *args], env=env, check=True)
    return time.perf_counter() - t


def source_tree(dest: Path, n: int) -> int:
    """Copy up to ``n`` files of the standard library (a real tree of small files)."""
    src = Path(sysconfig.get_paths()["stdlib"])
    count = 0
    for p in sorted(src.rglob("*")):
        if count >= n:
            break
        if p.is_file() and not p.is_symlink() and "site-packages" not in p.parts:
            target = dest / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
            count += 1
    return count


def same_tree(a: Path, b: Path) -> bool:
    return subprocess.run(["diff", "-rq", str(a), str(b)], capture_output=True).returncode == 0


def run(size_mb: int, n_files: int) -> dict:
    size = size_mb * BLOCK
    with tempfile.TemporaryDirectory(prefix="dfs-bench-client-") as tmp:
        root = Path(tmp)
        (root / "disk").mkdir()
        disk_w, disk_r = disk_baseline(root / "disk" / "f", size)
        big = root / "big.bin"
        with open(big, "wb") as f:
            for _ in range(size // BLOCK):
                f.write(os.urandom(BLOCK))
        copies3 = write_copies(big, root / "disk")
        tree = root / "tree"
        files = source_tree(tree, n_files)
        cluster = LocalCluster(root / "cluster", 3, 3)
        try:
            cluster.start(timeout=60)
            cf = cluster.cluster_file
            put_s = dfs(cf, "put", str(big), "/big.bin")
            for cs in cluster.chunkservers:
                evict(root / "cluster" / cs.name)
            get_s = dfs(cf, "get", "/big.bin", str(root / "big.out"))
            same = subprocess.run(["cmp", "-s", str(big), str(root / "big.out")]).returncode == 0
            tput_s = dfs(cf, "put", "-r", str(tree), "/tree")
            tget_s = dfs(cf, "get", "-r", "/tree", str(root / "tree.out"))
            tree_same = same_tree(tree, root / "tree.out")
            # the baseline second: its few files over 64 KiB dedup against the first run's
            cput_s = dfs(cf, "--no-inline", "put", "-r", str(tree), "/tree-chunks")
            cget_s = dfs(cf, "get", "-r", "/tree-chunks", str(root / "tree-chunks.out"))
            tree_same = tree_same and same_tree(tree, root / "tree-chunks.out")
        finally:
            cluster.stop()
    res = {
        "size_mb": size_mb,
        "disk_write_MBps": disk_w,
        "disk_cold_read_MBps": disk_r,
        "put_MBps": size / put_s / 1e6,
        "get_MBps": size / get_s / 1e6,
        "byte_identical": same,
        "files": files,
        "put_r_files_per_s": files / tput_s,
        "get_r_files_per_s": files / tget_s,
        "put_r_chunks_files_per_s": files / cput_s,
        "get_r_chunks_files_per_s": files / cget_s,
        "tree_identical": tree_same,
    }
    res["put_r_vs_chunks"] = cput_s / tput_s
    res["get_r_vs_chunks"] = cget_s / tget_s
    res["disk_3copies_MBps"] = copies3
    res["put_vs_disk_write"] = res["put_MBps"] / disk_w
    res["put_vs_3copies"] = res["put_MBps"] / copies3
    res["get_vs_disk_read"] = res["get_MBps"] / disk_r
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=1024)
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    r = run(a.size_mb, a.files)
    if a.json:
        print(json.dumps(r, indent=2))
        return
    print(f"disk write (fdatasync)   {r['disk_write_MBps']:8.0f} MB/s")
    print(f"disk cold read           {r['disk_cold_read_MBps']:8.0f} MB/s")
    print(f"disk, 3 fsync'd copies   {r['disk_3copies_MBps']:8.0f} MB/s  (the 3-replica ceiling)")
    print(
        f"dfs put, 3 replicas      {r['put_MBps']:8.0f} MB/s  ({r['put_vs_disk_write']:.2f}x disk,"
        f" {r['put_vs_3copies']:.2f}x 3 copies)"
    )
    print(
        f"dfs get, cold            {r['get_MBps']:8.0f} MB/s  ({r['get_vs_disk_read']:.2f}x disk)"
        f"  identical: {r['byte_identical']}"
    )
    print(
        f"put -r {r['files']} files  {r['put_r_files_per_s']:8.0f} files/s"
        f"  ({r['put_r_vs_chunks']:.2f}x --no-inline: {r['put_r_chunks_files_per_s']:.0f})"
    )
    print(
        f"get -r {r['files']} files  {r['get_r_files_per_s']:8.0f} files/s"
        f"  ({r['get_r_vs_chunks']:.2f}x --no-inline: {r['get_r_chunks_files_per_s']:.0f})"
        f"  identical: {r['tree_identical']}"
    )


if __name__ == "__main__":
    main()
