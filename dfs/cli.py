"""The ``dfs`` command: upload, fetch and manage files on a cluster.

Errors read like coreutils (``dfs: cannot stat '/x': No such file or
directory``); the exit code is 0 on success, 1 when an operation failed and
2 for a usage error. ``--json`` gives machine-readable output where a script
would parse it.
"""

from __future__ import annotations

import argparse
import json
import os
import stat as statmod
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dfs import inline, paths
from dfs.bulk import LocalTree, RemoteTree, batches, get_tree, put_tree
from dfs.client import Client, connect
from dfs.errors import DfsError, errno_for

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
# stat says where a file's content lives (inline or chunks) up to this size: past
# ~25 GiB a chunk list alone would not fit one reply (and such a file is chunks)
STAT_STORAGE_MAX = 16 << 30
NO_INLINE_HELP = (
    f"store small files (at most {inline.INLINE_MAX // 1024} KiB) as chunks on the chunkservers,"
    " not inline in the metadata service (also: DFS_INLINE=0)"
)


class CliError(Exception):
    """A failure already phrased for the user."""


def fail(action: str, path: str, exc: DfsError) -> CliError:
    reason = os.strerror(errno_for(exc.code)) if exc.code.startswith("E") else exc.message
    if exc.code in ("EINVAL", "E2BIG") or not exc.code.startswith("E"):
        reason = exc.message
    return CliError(f"cannot {action} '{path}': {reason}")


# ---------------------------------------------------------------- progress


@contextmanager
def progress_bar(total: int | None, label: str, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with throughput and ETA; silent when not a terminal or -q."""
    if quiet or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


# ---------------------------------------------------------------- commands


def cmd_put(c: Client, a: argparse.Namespace) -> int:
    sources, dest = a.paths[:-1], a.paths[-1]
    if not sources:
        raise CliError("put needs LOCAL... REMOTE")
    if sources == ["-"]:
        target = _remote_target(c, "-", dest, 1)
        with progress_bar(None, "stdin", a.quiet) as tick:
            try:
                c.upload(sys.stdin.buffer, target, progress=tick)
            except DfsError as exc:
                raise fail("put", target, exc) from None
        return EXIT_OK
    dest_is_dir = len(sources) > 1 or dest.endswith("/") or _is_remote_dir(c, dest)
    status = EXIT_OK
    for src in sources:
        local = Path(src)
        target = paths.join(dest, local.name) if dest_is_dir else dest
        if local.is_dir():
            if not a.recursive:
                print(f"dfs: omitting directory '{src}' (use -r)", file=sys.stderr)
                status = EXIT_FAIL
                continue
            status = max(status, _put_tree(c, local, target, a.quiet))
        else:
            try:
                size = local.stat().st_size
            except OSError as exc:
                raise CliError(f"cannot stat '{src}': {exc.strerror}") from None
            with progress_bar(size, local.name, a.quiet) as tick:
                try:
                    c.put(local, target, progress=tick)
                except DfsError as exc:
                    raise fail("put", target, exc) from None
    return status


def _put_tree(c: Client, root: Path, target: str, quiet: bool) -> int:
    """Upload a directory tree in batches (see dfs/bulk.py); report what failed."""
    tree = LocalTree.scan(root)
    label = f"{root.name} ({len(tree.files)} files)"
    with progress_bar(tree.total_bytes, label, quiet) as tick:
        failures = put_tree(c, tree, target, progress=tick)
    for f in failures:
        print(f"dfs: cannot put '{f.path}': {f.why}", file=sys.stderr)
    return EXIT_FAIL if failures else EXIT_OK


def _is_remote_dir(c: Client, path: str) -> bool:
    try:
        return c.stat(path)["type"] == "dir"
    except DfsError:
        return False


def _remote_target(c: Client, src: str, dest: str, n: int) -> str:
    if dest.endswith("/") or _is_remote_dir(c, dest):
        raise CliError("put from stdin needs a file name as REMOTE")
    return dest


def cmd_get(c: Client, a: argparse.Namespace) -> int:
    remote, local = a.remote, a.local
    try:
        attrs = c.stat(remote)
    except DfsError as exc:
        raise fail("stat", remote, exc) from None
    if attrs["type"] == "dir":
        if not a.recursive:
            raise CliError(f"'{remote}' is a directory (use -r)")
        return _get_tree(c, paths.normalize(remote), Path(local), a.quiet)
    if local == "-":
        with progress_bar(attrs["size"], remote, a.quiet) as tick:
            c.download(remote, sys.stdout.buffer, progress=tick)
        sys.stdout.buffer.flush()
        return EXIT_OK
    target = Path(local)
    if target.is_dir():
        target = target / paths.split(paths.normalize(remote))[1]
    with progress_bar(attrs["size"], target.name, a.quiet) as tick:
        try:
            c.get(remote, target, progress=tick)
        except DfsError as exc:
            raise fail("get", remote, exc) from None
    return EXIT_OK


def _get_tree(c: Client, root: str, local: Path, quiet: bool) -> int:
    """Download a directory tree in batches (see dfs/bulk.py); report what failed."""
    tree = RemoteTree.scan(c, root)
    with progress_bar(tree.total_bytes, f"{root} ({len(tree.files)} files)", quiet) as tick:
        failures = get_tree(c, tree, local, progress=tick)
    for f in failures:
        print(f"dfs: cannot get '{f.path}': {f.why}", file=sys.stderr)
    return EXIT_FAIL if failures else EXIT_OK


def cmd_cat(c: Client, a: argparse.Namespace) -> int:
    for p in a.paths:
        try:
            c.download(p, sys.stdout.buffer)
        except DfsError as exc:
            raise fail("read", p, exc) from None
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_ls(c: Client, a: argparse.Namespace) -> int:
    path = a.path
    try:
        attrs = c.stat(path)
        if attrs["type"] == "dir":
            entries = list(c.scandir(path))
        else:
            entries = [{"name": paths.split(paths.normalize(path))[1], "attrs": attrs}]
    except DfsError as exc:
        raise fail("access", path, exc) from None
    if a.json:
        print(json.dumps(entries, indent=2, default=_json_default))
        return EXIT_OK
    for e in entries:
        if a.long:
            at = e["attrs"]
            mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(at["mtime"] / 1e9))
            print(
                f"{statmod.filemode(at['mode'])} {at['nlink']:>3} {at['uid']:>5} "
                f"{at['gid']:>5} {at['size']:>12} {mtime} {e['name']}"
            )
        else:
            print(e["name"])
    return EXIT_OK


def cmd_stat(c: Client, a: argparse.Namespace) -> int:
    try:
        attrs = c.stat(a.path)
    except DfsError as exc:
        raise fail("stat", a.path, exc) from None
    if attrs["type"] == "file" and attrs["size"] <= STAT_STORAGE_MAX:
        try:
            attrs.update(_storage(c.meta.ns("file_chunks", path=paths.normalize(a.path))))
        except DfsError:
            pass  # the attributes stand on their own (the file may be gone meanwhile)
    if a.json:
        print(json.dumps(attrs, indent=2, default=_json_default))
    else:
        width = max(map(len, attrs))
        for k, v in attrs.items():
            print(f"{k:>{width}}: {statmod.filemode(v) if k == 'mode' else v}")
    return EXIT_OK


def cmd_mkdir(c: Client, a: argparse.Namespace) -> int:
    for p in a.paths:
        try:
            c.mkdir(p, parents=a.parents)
        except DfsError as exc:
            raise fail("create directory", p, exc) from None
    return EXIT_OK


def cmd_rm(c: Client, a: argparse.Namespace) -> int:
    for p in a.paths:
        try:
            c.remove(p, recursive=a.recursive)
        except DfsError as exc:
            if exc.code == "ENOENT" and a.force:
                continue
            raise fail("remove", p, exc) from None
    return EXIT_OK


def cmd_mv(c: Client, a: argparse.Namespace) -> int:
    dst = a.dst
    if _is_remote_dir(c, dst):
        dst = paths.join(dst, paths.split(paths.normalize(a.src))[1])
    try:
        c.rename(a.src, dst)
    except DfsError as exc:
        raise fail("move", a.src, exc) from None
    return EXIT_OK


def _storage(info: dict[str, Any]) -> dict[str, Any]:
    """Where a file's content lives, from its file_chunks reply: inline in the
    metadata service (its bytes as the inline budget counts them) or in chunks."""
    blob = info.get("inline")
    if blob is None:
        return {"inline": False, "chunks": sum(1 for cid, _n in info["extents"] if cid)}
    return {"inline": True, "inline_bytes": inline.charge(blob)}


def cmd_du(c: Client, a: argparse.Namespace) -> int:
    try:
        attrs = c.stat(a.path)
    except DfsError as exc:
        raise fail("access", a.path, exc) from None
    files = [(a.path, attrs)] if attrs["type"] != "dir" else RemoteTree.scan(c, a.path).files
    logical = sum(at["size"] for _, at in files)
    chunks: dict[str, int] = {}
    replicated = inline_files = inline_bytes = 0
    attrs_of = dict(files)
    for page in _pages(files):
        infos, _locations = c.files_chunks(page, content=False)
        for p, info in zip(page, infos):
            at = attrs_of[p]
            if info.get("inline_bytes") is not None:  # no chunk: kept by the metadata service
                inline_files += 1
                inline_bytes += info["inline_bytes"]
                continue
            replicated += at["size"] * at["rep"]
            for cid, n in info.get("extents") or ():
                if cid:
                    chunks[cid] = max(chunks.get(cid, 0), n)
    unique = sum(chunks.values())
    out = {
        "path": a.path,
        "files": len(files),
        "logical_bytes": logical,
        "unique_chunk_bytes": unique,
        "replicated_bytes": replicated,
        "inline_files": inline_files,
        "inline_bytes": inline_bytes,
    }
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{_human(logical)}\tlogical\t{a.path} ({len(files)} files)")
        print(f"{_human(unique)}\tafter dedup")
        print(f"{_human(replicated)}\twith replicas")
        if inline_files:
            print(f"{_human(inline_bytes)}\tinline in the metadata service ({inline_files} files)")
    return EXIT_OK


def _pages(
    files: list[tuple[str, dict[str, Any]]], max_bytes: int = 16 << 30
) -> Iterator[list[str]]:
    """Paths in pages of at most 1000 files and ``max_bytes`` of content, so one
    reply (extents and locations, ~100 bytes per MiB-sized chunk) stays far under
    the 4 MiB header limit; a single bigger file goes alone. (Inline content past
    the reply's own budget comes in follow-up calls: Client.files_chunks.)"""
    for page in batches(files, lambda f: f[1]["size"], 1000, max_bytes):
        yield [p for p, _ in page]


def cmd_setrep(c: Client, a: argparse.Namespace) -> int:
    try:
        c.setrep(a.path, a.rep, recursive=a.recursive)
    except DfsError as exc:
        raise fail("set replication of", a.path, exc) from None
    return EXIT_OK


def cmd_mount(c: Client | None, a: argparse.Namespace) -> int:
    from dfs.fuse.mount import mount_main

    return mount_main(a)


def cmd_umount(c: Client | None, a: argparse.Namespace) -> int:
    from dfs.fuse.mount import umount_main

    return umount_main(a)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _json_default(o: object) -> object:
    if isinstance(o, bytes):
        return o.hex()
    raise TypeError(type(o))


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dfs", description="Use a dfs cluster: files in, files out.")
    p.add_argument("--cluster", help="metadata endpoints or cluster.toml (default $DFS_CLUSTER)")
    p.add_argument("--key", help="cluster key file (default $DFS_KEY)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-inline", action="store_true", help=NO_INLINE_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        # -q also after the command (dfs put -q ...); SUPPRESS keeps a global -q
        sp.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
        )
        return sp

    sp = add("put", cmd_put, "upload files (LOCAL... REMOTE; - reads stdin)")
    sp.add_argument("-r", "--recursive", action="store_true", help="upload directories")
    sp.add_argument(
        "--no-inline", action="store_true", default=argparse.SUPPRESS, help=NO_INLINE_HELP
    )
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp = add("get", cmd_get, "download a file (LOCAL - writes to stdout)")
    sp.add_argument("-r", "--recursive", action="store_true", help="download directories")
    sp.add_argument("remote")
    sp.add_argument("local")
    sp = add("cat", cmd_cat, "print files to stdout")
    sp.add_argument("paths", nargs="+")
    sp = add("ls", cmd_ls, "list a directory")
    sp.add_argument("-l", "--long", action="store_true", help="long listing")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("path", nargs="?", default="/")
    sp = add("stat", cmd_stat, "show a file's attributes")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("path")
    sp = add("mkdir", cmd_mkdir, "create directories")
    sp.add_argument("-p", "--parents", action="store_true", help="make parents as needed")
    sp.add_argument("paths", nargs="+")
    sp = add("rm", cmd_rm, "remove files or directories")
    sp.add_argument("-r", "--recursive", action="store_true")
    sp.add_argument("-f", "--force", action="store_true", help="ignore missing files")
    sp.add_argument("paths", nargs="+")
    sp = add("mv", cmd_mv, "rename or move")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp = add("du", cmd_du, "logical, deduplicated and replicated size")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("path", nargs="?", default="/")
    sp = add("setrep", cmd_setrep, "set the replication factor")
    sp.add_argument("-r", "--recursive", action="store_true")
    sp.add_argument("rep", type=int)
    sp.add_argument("path")
    sp = add("mount", cmd_mount, "mount the cluster as a local directory")
    sp.add_argument("mountpoint")
    sp.add_argument(
        "--no-inline", action="store_true", default=argparse.SUPPRESS, help=NO_INLINE_HELP
    )
    sp.add_argument("--foreground", action="store_true", help="stay in the foreground")
    sp.add_argument("--cache-mb", type=int, default=256, help="chunk cache size (MiB)")
    sp.add_argument("--attr-timeout", type=float, default=1.0, help="attribute cache (s)")
    sp.add_argument("--entry-timeout", type=float, default=1.0, help="name cache (s)")
    sp.add_argument("--log", help="log file (default: next to the mountpoint's state dir)")
    sp = add("umount", cmd_umount, "unmount a dfs mount")
    sp.add_argument("mountpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("mount", "umount"):
            return args.fn(None, args)
        client = connect(_cluster_arg(args), inline=_inline_wanted(args))
    except DfsError as exc:
        print(f"dfs: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.fn(client, args)
    except CliError as exc:
        print(f"dfs: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except DfsError as exc:
        print(f"dfs: {exc.message}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


def _inline_wanted(args: argparse.Namespace) -> bool:
    """Small files go inline unless --no-inline or DFS_INLINE=0 (dfs.inline.wanted)."""
    return inline.wanted(args.no_inline)


def _cluster_arg(args: argparse.Namespace) -> Any:
    from dfs.config import resolve

    return resolve(args.cluster, args.key)


if __name__ == "__main__":
    sys.exit(main())
