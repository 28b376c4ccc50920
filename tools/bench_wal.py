"""The Raft WAL's durable append: RaftStorage.save of one entry, fsync'd, against
a plain append + fdatasync of the same bytes (the baseline, same run, same disk).

Every commit waits for this on a majority of metadata nodes, and on a local
cluster all of them sync on one disk at once: ``--procs 3`` runs three writers
together, as three metadata nodes do.

    python -m tools.bench_wal [--saves 2000] [--bytes 3000] [--procs 1 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from metadata.raft.messages import Entry, HardState
from metadata.raft.storage import RaftStorage


def _plain(root: Path, saves: int, size: int) -> list[float]:
    """Baseline: append the record-sized bytes to a file and fdatasync each time."""
    fd = os.open(root / "plain.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    data, lat = os.urandom(size), []
    try:
        for _ in range(saves):
            t = time.perf_counter()
            os.write(fd, data)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    return lat


def _wal(root: Path, saves: int, size: int) -> list[float]:
    storage = RaftStorage(root / "wal")
    storage.load()
    data, lat = os.urandom(size), []
    try:
        for i in range(1, saves + 1):
            t = time.perf_counter()
            storage.save(HardState(1, 1, i - 1), [Entry(i, 1, data=data)], None)
            lat.append(time.perf_counter() - t)
    finally:
        storage.close()
    return lat


def _writer(kind: str, root: str, saves: int, size: int, out: Any) -> None:
    fn = _wal if kind == "wal" else _plain
    out.put(fn(Path(root), saves, size))


def measure(kind: str, procs: int, saves: int, size: int, base: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    dirs = [Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=base)) for _ in range(procs)]
    ps = [ctx.Process(target=_writer, args=(kind, str(d), saves, size, out)) for d in dirs]
    for p in ps:
        p.start()
    lat = sorted(x for _ in ps for x in out.get(timeout=600))
    for p in ps:
        p.join()
    return {
        "kind": kind,
        "procs": procs,
        "median_us": round(statistics.median(lat) * 1e6),
        "p90_us": round(lat[int(len(lat) * 0.9)] * 1e6),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--saves", type=int, default=2000)
    ap.add_argument("--bytes", type=int, default=3000, help="entry size (a small inline file)")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dfs-bench-wal-", dir=a.dir) as tmp:
        for procs in a.procs:
            for kind in ("plain", "wal", "plain"):
                rows.append(measure(kind, procs, a.saves, a.bytes, Path(tmp)))
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'writer':8} {'procs':>5} {'median us':>10} {'p90 us':>8}")
    for r in rows:
        print(f"{r['kind']:8} {r['procs']:>5} {r['median_us']:>10} {r['p90_us']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
