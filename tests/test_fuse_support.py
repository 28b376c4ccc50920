"""Shared pieces of the FUSE tests: a real local cluster and real mounts of it.

Mounts go through the real ``dfs mount`` command (daemonized) and come down
through ``dfs umount``; every fixture unmounts and stops what it started in a
``finally``, so a failing test never leaves a mount or a process behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")


def dfs_cmd(cluster: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dfs.cli", "--cluster", str(cluster), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def mount(cluster: Path, mp: Path, *extra: str, log: Path | None = None) -> None:
    mp.mkdir(parents=True, exist_ok=True)
    log = log or Path(tempfile.gettempdir()) / f"{mp.name}.log"
    r = dfs_cmd(cluster, "mount", str(mp), "--log", str(log), *extra)
    if r.returncode != 0:
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise RuntimeError(f"dfs mount failed ({r.returncode}): {r.stderr}\n{tail}")


def umount(cluster: Path, mp: Path) -> None:
    from dfs.fuse.mount import find_mount, unmount

    if find_mount(str(mp)) is None:
        return
    r = dfs_cmd(cluster, "umount", str(mp))
    if r.returncode != 0 and find_mount(str(mp)) is not None:
        unmount(str(mp))  # last resort: abort the connection


@contextmanager
def mounted(cluster: Path, mp: Path, *extra: str) -> Iterator[Path]:
    mount(cluster, mp, *extra)
    try:
        yield mp
    finally:
        umount(cluster, mp)
        _rmdir(mp)


class Env:
    """A running cluster and one mount of it."""

    def __init__(self, base: Path, cluster: object) -> None:
        self.base = base
        self.cluster = cluster
        self.cluster_file: Path = cluster.cluster_file  # type: ignore[attr-defined]
        # a mountpoint every user can reach (the permission tests run as nobody)
        self.mp = Path(tempfile.mkdtemp(prefix="dfs-mnt-"))
        self.mp.chmod(0o755)

    def remount(self) -> None:
        umount(self.cluster_file, self.mp)
        mount(self.cluster_file, self.mp)


@contextmanager
def cluster_and_mount(tmp: Path, n_chunkservers: int = 3) -> Iterator[Env]:
    from tools.cluster import LocalCluster

    cluster = LocalCluster(tmp / "cluster", n_metadata=3, n_chunkservers=n_chunkservers)
    env = None
    try:
        cluster.start()
        env = Env(tmp, cluster)
        mount(env.cluster_file, env.mp)
        yield env
    finally:
        if env is not None:
            try:
                umount(env.cluster_file, env.mp)
            except Exception as exc:
                print(f"umount failed: {exc}", file=sys.stderr)
            _rmdir(env.mp)
        cluster.stop()


def _rmdir(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass


def wait_for(pred, timeout: float = 10.0, step: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
