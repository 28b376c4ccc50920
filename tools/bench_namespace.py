"""Benchmark the namespace state machine at scale: RAM per file, apply rate,
snapshot size and snapshot write/restore time.

Builds N files (default 1,000,000: 1000 directories x 1000 files, each one
chunk of 1..61 KB) by applying commit commands directly to a Namespace, as
the Raft log would.

    python -m tools.bench_namespace [--files N] [--per-dir M] [--mem tracemalloc|rss] [--json]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import time
import tracemalloc
from typing import Any

from metadata.namespace import Namespace

BASE_TS = 1_700_000_000 * 10**9


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build(ns: Namespace, files: int, per_dir: int) -> None:
    ts = BASE_TS
    ndirs = (files + per_dir - 1) // per_dir
    apply = ns.apply
    for d in range(ndirs):
        ts += 1
        r = apply({"op": "mkdir", "args": {"path": f"/d{d:04d}"}, "ts": ts})
        assert r["ok"], r
    for i in range(files):
        d, f = divmod(i, per_dir)
        cid = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
        ts += 1
        size = 1000 + i % 60000  # small files of varied sizes, as decoded off the wire
        cmd = {
            "op": "commit",
            "args": {"path": f"/d{d:04d}/f{f:06d}", "extents": [[cid, size]], "size": size},
            "client": None,
            "seq": None,
            "ts": ts,
        }
        r = apply(cmd)
        if not r["ok"]:
            raise SystemExit(f"commit failed: {r}")


def run(files: int, per_dir: int, mem: str, verify: bool) -> dict[str, Any]:
    gc.collect()
    gc.freeze()  # nothing built here is garbage; keeps the collector off the hot path
    if mem == "tracemalloc":
        tracemalloc.start()
    rss0 = _rss()
    traced0 = tracemalloc.get_traced_memory()[0] if mem == "tracemalloc" else 0
    t0 = time.perf_counter()
    ns = Namespace()
    build(ns, files, per_dir)
    t_build = time.perf_counter() - t0
    gc.collect()
    if mem == "tracemalloc":
        mem_bytes = tracemalloc.get_traced_memory()[0] - traced0
        tracemalloc.stop()
    else:
        mem_bytes = _rss() - rss0

    t0 = time.perf_counter()
    snap = ns.snapshot()
    t_dump = time.perf_counter() - t0
    t0 = time.perf_counter()
    ns2 = Namespace.restore(snap)
    gc.collect(1)  # the first young-generation pass over the new objects is part of the cost
    t_load = time.perf_counter() - t0
    ok = None
    if verify:
        ok = ns2.snapshot() == snap and ns2.query("statfs") == ns.query("statfs")
    # page through the first directory (per_dir entries) as `ls` would
    t0 = time.perf_counter()
    r = ns2.query("readdir", {"path": "/d0000", "limit": 1000})
    t_first = time.perf_counter() - t0
    pages, listed = 0, len(r["entries"])
    t0 = time.perf_counter()
    while r["more"]:
        r = ns2.query(
            "readdir", {"path": "/d0000", "after": r["entries"][-1]["name"], "limit": 1000}
        )
        pages += 1
        listed += len(r["entries"])
    t_pages = time.perf_counter() - t0
    assert listed == min(per_dir, files), listed
    st = ns2.query("statfs")
    assert st["files"] == files, st
    out = {
        "files": files,
        "dirs": st["dirs"] - 1,
        "mem_method": mem,
        "ram_bytes_per_file": round(mem_bytes / files, 1),
        "build_s": round(t_build, 2),
        "apply_per_s": round((files + st["dirs"]) / t_build),
        "snapshot_bytes": len(snap),
        "snapshot_bytes_per_million_files": round(len(snap) * 1_000_000 / files),
        "snapshot_write_s": round(t_dump, 2),
        "snapshot_restore_s": round(t_load, 2),
        "restore_identical": ok,
        "readdir_entries": listed,
        "readdir_first_page_ms": round(t_first * 1000, 2),
        "readdir_next_page_ms": round(t_pages * 1000 / pages, 2) if pages else None,
        "python": sys.version.split()[0],
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--files", type=int, default=1_000_000, help="files to create")
    p.add_argument("--per-dir", type=int, default=1000, help="files per directory")
    p.add_argument(
        "--mem",
        choices=["tracemalloc", "rss"],
        default="tracemalloc",
        help="how to measure RAM (tracemalloc: exact Python allocations, slower build)",
    )
    p.add_argument(
        "--verify", action="store_true", help="check the restored state re-snapshots identically"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.files < 1 or a.per_dir < 1:
        p.error("--files and --per-dir must be positive")
    res = run(a.files, a.per_dir, a.mem, a.verify)
    if a.json:
        print(json.dumps(res))
        return 0
    rows = [
        ("files", f"{res['files']:,} in {res['dirs']:,} dirs"),
        (f"RAM per file ({res['mem_method']})", f"{res['ram_bytes_per_file']:.0f} B"),
        ("build (apply commit)", f"{res['build_s']:.1f} s, {res['apply_per_s']:,} ops/s"),
        ("snapshot size", f"{res['snapshot_bytes'] / 2**20:.1f} MiB"),
        ("snapshot per 1M files", f"{res['snapshot_bytes_per_million_files'] / 2**20:.1f} MiB"),
        ("snapshot write", f"{res['snapshot_write_s']:.2f} s"),
        ("snapshot restore", f"{res['snapshot_restore_s']:.2f} s"),
    ]
    rd = f"first page {res['readdir_first_page_ms']:.1f} ms"
    if res["readdir_next_page_ms"] is not None:
        rd += f", next pages {res['readdir_next_page_ms']:.2f} ms each"
    rows.append((f"readdir of {res['readdir_entries']:,} entries, 1000/page", rd))
    if res["restore_identical"] is not None:
        rows.append(("restore re-snapshots identically", str(res["restore_identical"])))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
