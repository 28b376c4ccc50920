"""``dfs-admin``: run a local cluster, see its status, keep it healthy.

Exit codes: 0 success (for fsck: healthy), 1 an operation failed (for fsck:
something is under-replicated or missing), 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dfs.client import connect
from dfs.config import resolve
from dfs.errors import DfsError
from dfs.security import Security
from tools.cluster import LocalCluster

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


# ---------------------------------------------------------------- cluster


def cmd_cluster_up(a: argparse.Namespace) -> int:
    d = Path(a.dir).resolve()
    if (d / "cluster.json").exists():
        old = LocalCluster.load(d)
        if old.running():
            print(
                f"dfs-admin: a cluster is already running in {d} "
                f"({len(old.running())} processes); run 'cluster down' first",
                file=sys.stderr,
            )
            return EXIT_FAIL
    key = Path(a.key).resolve() if a.key else None
    c = LocalCluster(d, a.metadata, a.chunkservers, key_file=key, detach=True)
    try:
        c.start(timeout=60)
    except Exception as exc:
        print(f"dfs-admin: cluster did not come up: {exc}", file=sys.stderr)
        c.save()
        c.stop()
        return EXIT_FAIL
    print(
        f"cluster up: {a.metadata} metadata nodes, {a.chunkservers} chunkservers (logs in {d}/run)"
    )
    print(f"  export DFS_CLUSTER={c.cluster_file}")
    print("  dfs put FILE /  ;  dfs ls -l /  ;  dfs mount /mnt/dfs")
    return EXIT_OK


def cmd_cluster_down(a: argparse.Namespace) -> int:
    d = Path(a.dir).resolve()
    if not (d / "cluster.json").exists():
        print(f"dfs-admin: no cluster in {d}", file=sys.stderr)
        return EXIT_FAIL
    c = LocalCluster.load(d)
    procs = c.running()
    for p in procs:
        if not _is_ours(p.pid, d):
            print(f"dfs-admin: pid {p.pid} is no longer {p.name}; not touching it", file=sys.stderr)
            continue
        p.stop(timeout=10)
    print(f"cluster down: stopped {len(procs)} processes")
    return EXIT_OK


def _is_ours(pid: int, d: Path) -> bool:
    """The PID still runs a dfs server of this cluster (PIDs get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(str(d).encode() in part for part in cmdline)


def cmd_cluster_add(a: argparse.Namespace) -> int:
    d = Path(a.dir).resolve()
    c = LocalCluster.load(d)
    extra = [f"--label={lab}" for lab in a.label]
    p = c.add_chunkserver(wait=True, extra=extra)
    print(f"added chunkserver {p.name} at {p.endpoint}")
    return EXIT_OK


def cmd_keys_generate(a: argparse.Namespace) -> int:
    path = Path(a.out)
    if path.exists() and not a.force:
        print(f"dfs-admin: {path} exists (use --force to replace it)", file=sys.stderr)
        return EXIT_FAIL
    Security.generate().save(path)
    print(f"wrote cluster key {path} (mode 600): give it to every server and client (--key)")
    return EXIT_OK


# ---------------------------------------------------------------- status


def cmd_status(a: argparse.Namespace) -> int:
    c = connect(resolve(a.cluster, a.key))
    try:
        st = c.status()
    finally:
        c.close()
    if a.json:
        print(json.dumps(st, indent=2, default=str))
        return EXIT_OK
    _print_status(st)
    return EXIT_OK


def _print_status(st: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    node = st.get("node", {})
    con.print(
        f"[bold]metadata leader[/] {st.get('leader')}  term {node.get('term')}  "
        f"commit {node.get('commit')}  applied {node.get('applied')}"
    )
    t = Table(title="chunkservers")
    for col in ("endpoint", "state", "capacity", "used %", "chunks", "last seen"):
        t.add_column(col)
    now = time.monotonic()
    for s in st.get("chunkservers", []):
        stat = s.get("stat", {})
        cap = stat.get("capacity", 0) or 0
        used = stat.get("used", 0) or 0
        t.add_row(
            s["endpoint"],
            s["state"],
            _human(cap),
            f"{100 * used / cap:.1f}" if cap else "-",
            str(stat.get("chunks", "-")),
            f"{max(0.0, now - s.get('last_seen', now)):.1f}s ago",
        )
    con.print(t)
    ns = st.get("namespace", {})
    con.print(
        f"files {ns.get('files')}  dirs {ns.get('dirs')}  "
        f"logical {_human(ns.get('logical_bytes', 0))}  chunks {ns.get('chunks')}"
    )


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dfs-admin", description="Administer a dfs cluster.")
    p.add_argument("--cluster", help="metadata endpoints or cluster.toml (default $DFS_CLUSTER)")
    p.add_argument("--key", help="cluster key file (default $DFS_KEY)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cl = sub.add_parser("cluster", help="a local cluster on this machine")
    clsub = cl.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = clsub.add_parser("up", help="start metadata nodes and chunkservers in the background")
    up.add_argument("--dir", required=True, help="where data, logs and cluster.toml go")
    up.add_argument("--metadata", type=int, default=3, help="metadata nodes (3 or 5)")
    up.add_argument("--chunkservers", type=int, default=3)
    up.set_defaults(fn=cmd_cluster_up)
    down = clsub.add_parser("down", help="stop the processes 'cluster up' started")
    down.add_argument("--dir", required=True)
    down.set_defaults(fn=cmd_cluster_down)
    add = clsub.add_parser("add-chunkserver", help="start one more chunkserver")
    add.add_argument("--dir", required=True)
    add.add_argument("--label", action="append", default=[], help="e.g. rack=r2")
    add.set_defaults(fn=cmd_cluster_add)

    keys = sub.add_parser("keys", help="cluster keys (CURVE)")
    ksub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = ksub.add_parser("generate", help="write a new cluster key file")
    gen.add_argument("--out", default="cluster.key")
    gen.add_argument("--force", action="store_true")
    gen.set_defaults(fn=cmd_keys_generate)

    st = sub.add_parser("status", help="metadata nodes, chunkservers, usage")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except DfsError as exc:
        print(f"dfs-admin: {exc.message}", file=sys.stderr)
        return EXIT_USAGE if exc.code in ("EINVAL", "ENOENT") else EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
