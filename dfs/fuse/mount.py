"""``dfs mount`` and ``dfs umount``: start, daemonize and stop a mount.

mount checks that the cluster answers, then forks: the child starts its own
client (no ZeroMQ state crosses a fork), runs the FUSE loop and logs to a
file; the parent returns 0 once the mount shows in /proc/self/mountinfo.

umount tries ``fusermount3 -u``; if the daemon does not answer (or the mount
is busy) it aborts the FUSE connection through /sys/fs/fuse/connections and
detaches the mount lazily, so it never hangs on a dead daemon.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

from dfs import inline
from dfs.config import ClusterConfig, resolve
from dfs.errors import DfsError
from dfs.process import pid_alive

log = logging.getLogger("dfs.fuse.mount")

FSNAME = "dfs"
MOUNT_WAIT = 30.0  # seconds the parent waits for the mount to appear
META_DEADLINE = 15.0  # seconds a metadata call retries before the mount says EIO
MAX_RW = 1 << 20
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local/state")
    d = Path(base) / "dfs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _tag(mountpoint: str) -> str:
    mp = os.path.abspath(mountpoint)  # never realpath: that would stat a hung mount
    name = Path(mp).name or "root"
    return f"mount-{name}-{hashlib.sha1(mp.encode()).hexdigest()[:8]}"


def pid_file(mountpoint: str) -> Path:
    return state_dir() / f"{_tag(mountpoint)}.pid"


def default_log(mountpoint: str) -> Path:
    return state_dir() / f"{_tag(mountpoint)}.log"


# ---------------------------------------------------------------- mount table


def _unescape(field: str) -> str:
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def find_mount(mountpoint: str) -> dict[str, Any] | None:
    """This mountpoint's entry of /proc/self/mountinfo, without touching the mount."""
    mp = os.path.abspath(mountpoint)  # no realpath/stat: the mount may hang
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        left, _, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        if len(f) < 5 or not r:
            continue
        if _unescape(f[4]) == mp:
            major, minor = f[2].split(":")
            found = {
                "dev": (int(major), int(minor)),
                "fstype": r[0],
                "source": r[1] if len(r) > 1 else "",
            }
    return found  # the last one is on top


def is_dfs_mount(mountpoint: str) -> bool:
    m = find_mount(mountpoint)
    return m is not None and m["fstype"] in ("fuse.dfs", "fuse")


# ---------------------------------------------------------------- mounting


def mount_main(args: argparse.Namespace) -> int:
    mp = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mp):
        print(f"dfs: cannot mount on '{args.mountpoint}': not a directory", file=sys.stderr)
        return 1
    if is_dfs_mount(mp):
        print(f"dfs: '{args.mountpoint}' is already mounted", file=sys.stderr)
        return 1
    try:
        config = resolve(getattr(args, "cluster", None), getattr(args, "key", None))
    except DfsError as exc:
        print(f"dfs: {exc.message}", file=sys.stderr)
        return 2
    err = check_cluster(config)
    if err:
        print(f"dfs: cannot mount: cluster unreachable ({err})", file=sys.stderr)
        return 1
    log_file = Path(args.log) if getattr(args, "log", None) else default_log(mp)
    opts = {
        "cache_mb": getattr(args, "cache_mb", 256),
        "attr_timeout": getattr(args, "attr_timeout", 1.0),
        "entry_timeout": getattr(args, "entry_timeout", 1.0),
        "inline": inline.wanted(getattr(args, "no_inline", False)),
    }
    if getattr(args, "foreground", False):
        _setup_logging(log_file, also_stderr=True)
        return serve(config, mp, **opts)
    return _daemonize(config, mp, log_file, opts)


def check_cluster(config: ClusterConfig, timeout: float = 10.0) -> str | None:
    """None if the metadata service answers within ``timeout``, else why not."""
    from dfs import client as client_mod

    saved = client_mod.META_DEADLINE
    client_mod.META_DEADLINE = timeout
    try:
        with client_mod.Client(config, timeout=min(timeout, 5.0), workers=1) as c:
            c.stat("/")
        return None
    except DfsError as exc:
        return exc.message
    finally:
        client_mod.META_DEADLINE = saved


def _daemonize(config: ClusterConfig, mp: str, log_file: Path, opts: dict[str, Any]) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            os.setsid()
            if os.fork() != 0:  # the grandchild is the daemon: never a session leader
                os._exit(0)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.write(w, f"{os.getpid()}\n".encode())
            os.close(w)
            os.chdir("/")
            _setup_logging(log_file, also_stderr=False)
            code = serve(config, mp, **opts)
        except BaseException:
            logging.getLogger("dfs.fuse").exception("mount daemon failed")
            code = 1
        os._exit(code)
    os.close(w)
    os.waitpid(pid, 0)
    daemon_pid = 0
    with os.fdopen(r) as f:
        line = f.readline().strip()
        if line.isdigit():
            daemon_pid = int(line)
    deadline = time.monotonic() + MOUNT_WAIT
    while time.monotonic() < deadline:
        if is_dfs_mount(mp):
            return 0
        if daemon_pid and not pid_alive(daemon_pid):
            break
        time.sleep(0.05)
    print(f"dfs: mount on '{mp}' did not come up; see {log_file}", file=sys.stderr)
    if daemon_pid and pid_alive(daemon_pid):
        os.kill(daemon_pid, signal.SIGTERM)
    return 1


def _setup_logging(log_file: Path, also_stderr: bool) -> None:
    handlers: list[logging.Handler] = []
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    except OSError:
        pass
    if also_stderr or not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=os.environ.get("DFS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.getLogger("fuse").setLevel(logging.WARNING)  # mfusepy's per-op debug lines


def serve(
    config: ClusterConfig,
    mountpoint: str,
    cache_mb: int = 256,
    attr_timeout: float = 1.0,
    entry_timeout: float = 1.0,
    inline: bool = True,
) -> int:
    """Run the mount in this process until it is unmounted."""
    from dfs.client import Client
    from dfs.fuse.ops import DfsFUSE, DfsOperations, set_metadata_deadline

    deadline = float(os.environ.get("DFS_FUSE_TIMEOUT") or META_DEADLINE)
    set_metadata_deadline(deadline)
    _keep_freed_memory()
    client = Client(config, timeout=min(10.0, deadline), workers=8, inline=inline)
    ops = DfsOperations(client, cache_bytes=cache_mb << 20, attr_timeout=attr_timeout)
    pf = pid_file(mountpoint)
    pf.write_text(f"{os.getpid()}\n")
    log.info(
        "mounting %s on %s (cache %d MiB, attr %.2fs, entry %.2fs, inline %s)",
        ",".join(config.metadata),
        mountpoint,
        cache_mb,
        attr_timeout,
        entry_timeout,
        "on" if inline else "off",
    )
    _tune_later(mountpoint)
    try:
        DfsFUSE(
            ops,
            mountpoint,
            foreground=True,
            nothreads=False,
            fsname=FSNAME,
            subtype=FSNAME,
            default_permissions=True,
            allow_other=os.geteuid() == 0,
            use_ino=True,
            hard_remove=True,
            attr_timeout=attr_timeout,
            entry_timeout=entry_timeout,
            negative_timeout=0,
        )
    except RuntimeError as exc:
        log.error("FUSE exited: %s", exc)
        return 1
    finally:
        log.info("unmounted %s", mountpoint)
        try:
            pf.unlink()
        except OSError:
            pass
        client.close()
    return 0


def _keep_freed_memory() -> None:
    """Chunk-sized buffers (received frames, chunk bytes) come and go all the time:
    keep freed ones in the heap for reuse. By default glibc maps and unmaps each,
    paying a page fault and a page clear per 4 KiB every time (~10% of a read's CPU)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # the most glibc allows
        libc.mallopt(M_TRIM_THRESHOLD, 512 << 20)
    except (OSError, AttributeError) as exc:
        log.debug("mallopt: %s", exc)


def _tune_later(mountpoint: str) -> None:
    """Once mounted, let the kernel read ahead 1 MiB (one chunk-sized request) at a time."""
    import threading

    def tune() -> None:
        for _ in range(200):
            m = find_mount(mountpoint)
            if m is not None and m["fstype"].startswith("fuse"):
                major, minor = m["dev"]
                bdi = Path(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb")
                try:
                    bdi.write_text("1024")
                except OSError as exc:
                    log.debug("read_ahead_kb: %s", exc)
                return
            time.sleep(0.05)

    threading.Thread(target=tune, name="dfs-tune", daemon=True).start()


# ---------------------------------------------------------------- unmounting


def umount_main(args: argparse.Namespace) -> int:
    mp = os.path.abspath(args.mountpoint)
    if find_mount(mp) is None:
        print(f"dfs: '{args.mountpoint}' is not mounted", file=sys.stderr)
        return 1
    ok = unmount(mp)
    if not ok:
        print(f"dfs: could not unmount '{args.mountpoint}'", file=sys.stderr)
        return 1
    return 0


def unmount(mp: str, timeout: float = 20.0) -> bool:
    """Unmount cleanly if the daemon answers; abort the connection if it does not."""
    pid = _read_pid(mp)
    m = find_mount(mp)
    if m is None:
        return True
    try:
        r = subprocess.run(["fusermount3", "-u", mp], capture_output=True, timeout=5, check=False)
        clean = r.returncode == 0
    except (subprocess.TimeoutExpired, FileNotFoundError):
        clean = False
    if not clean:
        abort_connection(m["dev"][1])
        for cmd in (["fusermount3", "-uz", mp], ["umount", "-l", mp]):
            try:
                if (
                    subprocess.run(cmd, capture_output=True, timeout=10, check=False).returncode
                    == 0
                ):
                    break
            except (subprocess.TimeoutExpired, FileNotFoundError):
                continue
    if pid:  # wait for the daemon to finish its last commits and exit
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return find_mount(mp) is None


def abort_connection(minor: int) -> None:
    """Fail every pending and future request of this FUSE connection (a hung daemon)."""
    conns = Path("/sys/fs/fuse/connections")
    p = conns / str(minor) / "abort"
    if not p.exists() and conns.is_dir():  # the fusectl file system is not mounted yet
        subprocess.run(
            ["mount", "-t", "fusectl", "none", str(conns)], capture_output=True, check=False
        )
    try:
        p.write_text("1")
    except OSError as exc:
        log.warning("abort %s: %s", p, exc)


def _read_pid(mp: str) -> int:
    try:
        return int(pid_file(mp).read_text().strip())
    except (OSError, ValueError):
        return 0
