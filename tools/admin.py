"""``dfs-admin``: run a local cluster, see its status, keep it healthy.

Exit codes: 0 success (for fsck: healthy), 1 an operation failed or did not
finish (for fsck: something is under-replicated or missing, or the leader's
picture is incomplete), 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dfs import errors
from dfs.client import Client, connect
from dfs.config import parse_size, resolve
from dfs.errors import DfsError
from dfs.rpc import RpcClient
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


def _connect(a: argparse.Namespace) -> Client:
    return connect(resolve(a.cluster, a.key))


def _admin(c: Client, action: str, **args: Any) -> dict[str, Any]:
    return c.meta.call("md.admin", {"action": action, "args": args})


def _node_statuses(c: Client, extra: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every metadata endpoint's own Raft view (an unreachable node shows as down);
    ``extra``: endpoints beyond the configured ones (voters added since)."""
    out = []
    with RpcClient(security=c.config.security(), timeout=2.0) as rpc:
        for ep in dict.fromkeys([*c.config.metadata, *extra]):
            try:
                out.append(rpc.call(ep, "md.node_status").fields)
            except DfsError as exc:
                out.append({"endpoint": ep, "role": "down", "error": exc.message})
    return out


def cmd_status(a: argparse.Namespace) -> int:
    c = _connect(a)
    try:
        st = c.status()
        st["metadata_nodes"] = _node_statuses(c, [v for v in st.get("voters", {}).values() if v])
    finally:
        c.close()
    # small files kept inline in the namespace (no chunks): beside the chunk figures
    ns_stat = st.get("namespace") or {}
    cl = st.setdefault("cluster", {})
    for k in ("inline_files", "inline_bytes", "inline_budget"):
        cl.setdefault(k, ns_stat.get(k, 0))
    lead_commit = st.get("node", {}).get("commit", 0)
    for n in st["metadata_nodes"]:
        if "applied" in n:
            n["lag"] = max(0, lead_commit - n["applied"])
    if a.json:
        print(json.dumps(st, indent=2, default=str))
        return EXIT_OK
    _print_status(st)
    return EXIT_OK


def _print_status(st: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title="metadata nodes")
    voters = st.get("voters") or {}
    t.title = f"metadata nodes (voters: {', '.join(sorted(voters, key=int)) or '-'})"
    cols = ("id", "endpoint", "role", "voter", "term", "commit", "applied", "lag", "to peers")
    for col in cols:
        t.add_column(
            col, justify="right" if col in ("term", "commit", "applied", "lag") else "left"
        )
    for n in st.get("metadata_nodes", []):
        links = n.get("transport") or {}  # peer id -> "stream" / "zmq"
        t.add_row(
            str(n.get("id", "-")),
            n.get("endpoint", "-").removeprefix("tcp://"),
            n.get("role", "-"),
            "yes" if str(n.get("id")) in voters else "no",
            *(str(n.get(k, "-")) for k in ("term", "commit", "applied", "lag")),
            " ".join(f"{p}:{links[p]}" for p in sorted(links, key=int)) or "-",
        )
    con.print(t)

    t = Table(title="chunkservers")
    cols = ("endpoint", "state", "capacity", "used %", "chunks", "last heartbeat", "scrub")
    for col in cols:
        t.add_column(col)
    now = st.get("now") or time.monotonic()
    for s in st.get("chunkservers", []):
        stat = s.get("stat", {})
        cap = stat.get("capacity", 0) or 0
        used = stat.get("used", 0) or 0
        t.add_row(
            s["endpoint"].removeprefix("tcp://"),
            s["state"],
            _human(cap),
            f"{100 * used / cap:.1f}" if cap else "-",
            str(stat.get("chunks", "-")),
            f"{max(0.0, now - s.get('last_seen', now)):.1f}s ago",
            _scrub_text(stat.get("scrub") or {}),
        )
    con.print(t)

    cl = st.get("cluster", {})
    t = Table(title="cluster", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    rows = [
        ("files", str(cl.get("files", 0))),
        ("logical bytes", _human(cl.get("logical_bytes", 0))),
        ("inline files (no chunks)", str(cl.get("inline_files", 0))),
        (
            "inline bytes (in metadata)",
            f"{_human(cl.get('inline_bytes', 0))} of {_human(cl.get('inline_budget', 0))}",
        ),
        ("unique chunk bytes", _human(cl.get("unique_bytes", 0))),
        ("stored bytes (all copies)", _human(cl.get("stored_bytes", 0))),
        ("dedup ratio", f"{cl.get('dedup_ratio', 1.0):.2f}x"),
        ("compression ratio", f"{cl.get('compression_ratio', 1.0):.2f}x"),
        ("chunks", str(cl.get("chunks", 0))),
        ("under-replicated", _flag(cl.get("under_replicated", 0), "yellow")),
        ("missing", _flag(cl.get("missing", 0), "red")),
        ("corrupt copies", _flag(cl.get("corrupt_replicas", 0), "yellow")),
    ]
    if not cl.get("reports_complete", True):
        rows.append(("chunk reports", "[yellow]incomplete (leader just started)[/]"))
    rb = (st.get("maintenance") or {}).get("rebalance")
    if rb and not rb.get("done"):
        rows.append(("rebalance", f"running: {rb.get('moves_done')} moves"))
    for r in rows:
        t.add_row(*r)
    con.print(t)


def _flag(n: int, color: str) -> str:
    return f"[{color}]{n}[/]" if n else "0"


def _scrub_text(sc: dict[str, Any]) -> str:
    if not sc:
        return "-"
    if sc.get("running"):
        return f"running {sc.get('pct') or 0:.0f}%"
    end = sc.get("last_pass_end") or 0
    if not end:
        return "never"
    bad = sc.get("corrupt_found", 0)
    return f"{_ago(time.time() - end)} ago" + (f", {bad} bad" if bad else "")


def _ago(sec: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if sec >= n:
            return f"{sec / n:.0f}{unit}"
    return f"{sec:.0f}s"


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------- fsck


def cmd_fsck(a: argparse.Namespace) -> int:
    c = _connect(a)
    try:
        r = c.meta.call("md.fsck", {"path": a.path, "limit": max(0, a.limit)})
    finally:
        c.close()
    code = EXIT_OK if r.get("ok") else EXIT_FAIL
    if a.json:
        print(json.dumps(r, indent=2, default=str))
        return code
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if r["files_listed"]:
        t = Table(title=f"unhealthy files under {r['path']}")
        for col in ("path", "rep", "chunks", "under-replicated", "missing", "unknown"):
            t.add_column(col)
        for f in r["files_listed"]:
            t.add_row(
                f["path"],
                str(f["rep"]),
                str(f["chunks"]),
                str(f["under_replicated"]),
                str(f["missing"]),
                str(f["unknown"]),
            )
        con.print(t)
    verdict = "[green]HEALTHY[/]" if r.get("ok") else "[red]NOT HEALTHY[/]"
    con.print(
        f"{verdict}: {r['files']} files, {r['chunks']} chunk references: "
        f"{r['healthy']} healthy, {r['under_replicated']} under-replicated, "
        f"{r['missing']} missing"
        + (f", {r['unknown']} unknown" if r["unknown"] else "")
        + ("" if r["complete"] else " (chunk reports still incomplete)")
    )
    return code


# ---------------------------------------------------------------- rebalance


def cmd_rebalance(a: argparse.Namespace) -> int:
    c = _connect(a)
    try:
        r = _admin(
            c,
            "rebalance",
            threshold=a.threshold,
            bandwidth=max(0.0, a.bandwidth) * (1 << 20),
            dry_run=a.dry_run,
        )
        if a.dry_run:
            return _print_plan(r, a)
        if a.no_wait:
            print(json.dumps(r, indent=2) if a.json else "rebalance started")
            return EXIT_OK
        rb = _wait_rebalance(c, r["rebalance"], a)
    finally:
        c.close()
    if a.json:
        print(json.dumps(rb, indent=2, default=str))
    else:
        print(
            f"rebalance {'done' if rb['done'] else 'not finished'}: {rb['moves_done']} moves, "
            f"{_human(rb['bytes_moved'])} copied, {rb['moves_failed']} failed"
        )
    return EXIT_OK if rb["done"] else EXIT_FAIL


def _print_plan(r: dict[str, Any], a: argparse.Namespace) -> int:
    if a.json:
        print(json.dumps(r, indent=2, default=str))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title="chunkservers now")
    for col in ("endpoint", "used", "capacity", "used %"):
        t.add_column(col)
    for s in r["servers"]:
        t.add_row(s["endpoint"], _human(s["used"]), _human(s["capacity"]), f"{s['used_pct']:.1f}")
    con.print(t)
    per: dict[tuple[str, str], list[int]] = {}
    for _cid, src, dst, size in r["moves"]:
        x = per.setdefault((src, dst), [0, 0])
        x[0] += 1
        x[1] += size
    t = Table(title=f"plan (threshold {a.threshold} points): {len(r['moves'])} moves")
    for col in ("from", "to", "chunks", "bytes"):
        t.add_column(col)
    for (src, dst), (n, size) in sorted(per.items()):
        t.add_row(src, dst, str(n), _human(size))
    con.print(t)
    if not r["moves"]:
        con.print("every chunkserver is within the threshold: nothing to move")
    return EXIT_OK


def _wait_rebalance(c: Client, rb: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + a.timeout if a.timeout > 0 else float("inf")
    total = max(1.0, float(rb.get("initial_excess") or 0))
    with Progress(
        TextColumn("rebalance"),
        BarColumn(),
        TextColumn("{task.fields[moves]} moves, {task.fields[moved]}"),
        TimeElapsedColumn(),
        disable=not sys.stderr.isatty() or a.json,
        console=None,
    ) as bar:
        task = bar.add_task("rebalance", total=total, moves=0, moved="0 B")
        while not rb.get("done") and time.monotonic() < deadline:
            time.sleep(0.5)
            got = _admin(c, "rebalance_status")["rebalance"]
            if got is None:  # a new leader: start again where things stand
                got = _admin(c, "rebalance", threshold=a.threshold,
                             bandwidth=max(0.0, a.bandwidth) * (1 << 20))["rebalance"]  # fmt: skip
            rb = got
            bar.update(
                task,
                completed=max(0.0, total - float(rb.get("excess") or 0)),
                moves=rb["moves_done"],
                moved=_human(rb["bytes_moved"]),
            )
    return rb


# ---------------------------------------------------------------- decommission


def cmd_decommission(a: argparse.Namespace) -> int:
    c = _connect(a)
    try:
        if a.cancel:
            r = _admin(c, "recommission", server=a.node)
            print(f"{r['server']} is {r['state']} again")
            return EXIT_OK
        r = _admin(c, "decommission", server=a.node)
        print(f"decommissioning {r['server']}: {r['chunks']} chunks to drain")
        if a.no_wait:
            return EXIT_OK
        r = _wait_decommission(c, r, a)
    finally:
        c.close()
    if r["state"] == "retired":
        print(f"{r['server']} is drained and retired: it can be stopped")
        return EXIT_OK
    print(f"{r['server']} is {r['state']}: {r['remaining']} chunks still to copy")
    return EXIT_FAIL


def _wait_decommission(c: Client, r: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    deadline = time.monotonic() + a.timeout if a.timeout > 0 else float("inf")
    total = max(1, r["chunks"])
    with Progress(
        TextColumn("draining"),
        BarColumn(),
        MofNCompleteColumn(),
        disable=not sys.stderr.isatty(),
    ) as bar:
        task = bar.add_task("drain", total=total)
        while r["state"] != "retired" and time.monotonic() < deadline:
            time.sleep(0.5)
            r = _admin(c, "decommission_status", server=r["server"])
            if r["state"] == "alive":  # a new leader had not learned it yet: ask again
                r = _admin(c, "decommission", server=r["server"])
            bar.update(task, completed=total - min(total, r["remaining"]))
    return r


# ---------------------------------------------------------------- scrub


def cmd_scrub(a: argparse.Namespace) -> int:
    c = _connect(a)
    try:
        before = {s["endpoint"]: s for s in c.status()["chunkservers"]}
        r = _admin(c, "scrub", **({"server": a.server} if a.server else {}))
        servers = r["servers"]
        print(f"scrub started on {len(servers)} chunkservers")
        if a.no_wait:
            return EXIT_OK
        passes = {ep: _scrub(before.get(ep, {})).get("passes", 0) for ep in servers}
        deadline = time.monotonic() + a.timeout if a.timeout > 0 else float("inf")
        while True:
            now = {s["endpoint"]: _scrub(s) for s in c.status()["chunkservers"]}
            done = [ep for ep in servers if now.get(ep, {}).get("passes", 0) > passes[ep]]
            if len(done) == len(servers) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        c.close()
    bad = 0
    for ep in servers:
        sc = now.get(ep, {})
        found = sc.get("corrupt_found", 0) - _scrub(before.get(ep, {})).get("corrupt_found", 0)
        bad += found
        state = "done" if ep in done else f"{sc.get('pct') or 0:.0f}%"
        print(f"  {ep}: {state}, {found} corrupt")
    if len(done) < len(servers):
        print("scrub not finished on every server", file=sys.stderr)
        return EXIT_FAIL
    print(f"scrub done: {bad} corrupt copies found (they are re-copied from good ones)")
    return EXIT_OK


def _scrub(server: dict[str, Any]) -> dict[str, Any]:
    return (server.get("stat") or {}).get("scrub") or {}


# ---------------------------------------------------------------- limits


def cmd_limits(a: argparse.Namespace) -> int:
    """Show (and with --inline-budget change) the cluster-wide limits: the bytes of
    small files' content the metadata service keeps inline (in every node's RAM)."""
    c = _connect(a)
    try:
        if a.inline_budget is not None:
            _admin(c, "set_limits", inline_budget=a.inline_budget)
        fs = c.statfs()
    finally:
        c.close()
    out = {k: fs.get(k, 0) for k in ("inline_budget", "inline_bytes", "inline_files")}
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"inline budget {_human(out['inline_budget'])}: {_human(out['inline_bytes'])} used"
            f" by {out['inline_files']} files (past it, small files are stored as chunks)"
        )
    return EXIT_OK


def _size(text: str) -> int:
    """A byte count: 1048576, 512K, 64M, 1G (binary units), never negative."""
    try:
        n = parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (e.g. 1073741824, 512M, 1G)"
        ) from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (negative)")
    return n


# ---------------------------------------------------------------- setrep, raft


def cmd_setrep(a: argparse.Namespace) -> int:
    if not 1 <= a.rep <= 16:
        print("dfs-admin: rep must be between 1 and 16", file=sys.stderr)
        return EXIT_USAGE
    c = _connect(a)
    try:
        c.setrep(a.path, a.rep, recursive=a.recursive)
    finally:
        c.close()
    print(f"{a.path}: replication {a.rep} (copies are added or trimmed in the background)")
    return EXIT_OK


def cmd_raft_transfer(a: argparse.Namespace) -> int:
    c = _connect(a)
    try:
        args: dict[str, Any] = {}
        if a.to:
            args["to"] = int(a.to) if a.to.isdigit() else a.to
        r = _admin(c, "transfer_leader", **args)
        args.setdefault("to", r["to"])
        deadline = time.monotonic() + 15
        asked = time.monotonic()
        while time.monotonic() < deadline:
            st = _node_statuses(c)
            lead = {n.get("leader") for n in st if n.get("role") != "down"}
            if lead == {r["endpoint"]}:
                print(f"leadership moved to node {r['to']} ({r['endpoint']})")
                return EXIT_OK
            if time.monotonic() - asked > 3:  # aborted after an election timeout: ask again
                asked = time.monotonic()
                try:
                    _admin(c, "transfer_leader", **args)
                except DfsError:
                    pass
            time.sleep(0.2)
    finally:
        c.close()
    print(f"dfs-admin: node {r['to']} did not take over within 15s", file=sys.stderr)
    return EXIT_FAIL


def cmd_raft_member(a: argparse.Namespace) -> int:
    """raft add ID ENDPOINT / raft remove ID: the leader answers once the change is
    committed; a leader that is busy (another change underway) is asked again."""
    if a.member_op == "add" and not a.endpoint:
        print("dfs-admin: raft add needs the new node's ENDPOINT", file=sys.stderr)
        return EXIT_USAGE
    if not a.node.isdigit() or int(a.node) <= 0:
        print("dfs-admin: a metadata node id is a positive integer", file=sys.stderr)
        return EXIT_USAGE
    args: dict[str, Any] = {"node": int(a.node)}
    if a.member_op == "add":
        args["endpoint"] = a.endpoint
    c = _connect(a)
    try:
        r = _member_change(c, a.member_op, args, a.timeout)
    finally:
        c.close()
    if a.json:
        print(json.dumps(r, indent=2, default=str))
    elif r.get("already"):
        print(f"metadata node {r['node']} is already a voter ({r['endpoint']})")
    else:
        done = "added" if a.member_op == "add" else "removed"
        print(
            f"metadata node {r['node']} ({r.get('endpoint')}) {done} at log index {r['index']}; "
            f"voters now {', '.join(map(str, r['voters']))}"
        )
    return EXIT_OK


def _member_change(c: Client, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _admin(c, f"raft_{op}", **args)
        except DfsError as exc:
            if exc.code != errors.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.3)


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

    st = sub.add_parser("status", help="metadata nodes, chunkservers, usage, health")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(fn=cmd_status)

    fs = sub.add_parser(
        "fsck",
        help="per-file replication health (exit 0 only when every chunk has its R copies)",
    )
    fs.add_argument("path", nargs="?", default="/", help="only files under this path")
    fs.add_argument("--json", action="store_true")
    fs.add_argument("--limit", type=int, default=1000, help="unhealthy files listed at most")
    fs.set_defaults(fn=cmd_fsck)

    rb = sub.add_parser(
        "rebalance",
        help="move replicas from fuller to emptier chunkservers (copy first, never below R)",
    )
    rb.add_argument(
        "--threshold",
        type=float,
        default=10.0,
        metavar="PCT",
        help="every server ends within PCT percentage points of the mean use (default 10)",
    )
    rb.add_argument("--dry-run", action="store_true", help="print the plan, move nothing")
    rb.add_argument(
        "--bandwidth", type=float, default=0.0, metavar="MB/S", help="per-server limit, MiB/s"
    )
    rb.add_argument("--no-wait", action="store_true", help="start it and return")
    rb.add_argument("--timeout", type=float, default=0, help="give up waiting after N seconds")
    rb.add_argument("--json", action="store_true")
    rb.set_defaults(fn=cmd_rebalance)

    dc = sub.add_parser(
        "decommission", help="drain a chunkserver (its chunks copied elsewhere), then retire it"
    )
    dc.add_argument("node", help="chunkserver endpoint (or node name, or :PORT)")
    dc.add_argument("--cancel", action="store_true", help="stop draining: make it active again")
    dc.add_argument("--no-wait", action="store_true", help="start it and return")
    dc.add_argument("--timeout", type=float, default=0, help="give up waiting after N seconds")
    dc.set_defaults(fn=cmd_decommission)

    sc = sub.add_parser("scrub", help="start a scrub pass on the chunkservers now, report")
    sc.add_argument("--server", help="only this chunkserver")
    sc.add_argument("--no-wait", action="store_true", help="start it and return")
    sc.add_argument("--timeout", type=float, default=0, help="give up waiting after N seconds")
    sc.set_defaults(fn=cmd_scrub)

    li = sub.add_parser("limits", help="cluster-wide limits: the inline budget of small files")
    li.add_argument(
        "--inline-budget",
        type=_size,
        metavar="SIZE",
        help="bytes of small files' content kept in the metadata service (e.g. 512M; 0: none)",
    )
    li.add_argument("--json", action="store_true")
    li.set_defaults(fn=cmd_limits)

    sr = sub.add_parser("setrep", help="set the replication factor of a file or directory")
    sr.add_argument("rep", type=int)
    sr.add_argument("path")
    sr.add_argument("-r", "--recursive", action="store_true")
    sr.set_defaults(fn=cmd_setrep)

    rf = sub.add_parser("raft", help="metadata (Raft) membership and leadership")
    rsub = rf.add_subparsers(dest="action", required=True, metavar="ACTION")
    tl = rsub.add_parser("transfer-leader", help="hand leadership to another metadata node")
    tl.add_argument("--to", help="node id or endpoint (default: the most caught-up follower)")
    tl.set_defaults(fn=cmd_raft_transfer)
    ad = rsub.add_parser(
        "add",
        help="make a metadata node a voter (start it first: dfs-metadata --join --id ID ...)",
    )
    ad.add_argument("node", help="the new node's id")
    ad.add_argument("endpoint", nargs="?", help="the new node's endpoint, e.g. tcp://10.0.0.4:7001")
    rm = rsub.add_parser(
        "remove", help="remove a metadata node from the voters (the leader too: it steps down)"
    )
    rm.add_argument("node", help="the node's id")
    for x in (ad, rm):
        x.add_argument("--timeout", type=float, default=30.0, help="seconds to keep trying")
        x.add_argument("--json", action="store_true")
        x.set_defaults(fn=cmd_raft_member, member_op=x.prog.rsplit(" ", 1)[-1])
    rm.set_defaults(endpoint=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except DfsError as exc:
        print(f"dfs-admin: {exc.message}", file=sys.stderr)
        usage = exc.code in ("EINVAL", "ENOENT", errors.UNAVAILABLE, errors.TIMEOUT)
        return EXIT_USAGE if usage else EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
