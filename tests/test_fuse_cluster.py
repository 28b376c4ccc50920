"""The mount against a changing cluster: two mounts (close-to-open), a chunkserver
killed during reads, an unreachable cluster (EIO, not a hang) and a hung daemon
(``dfs umount`` still works)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.test_fuse_support import cluster_and_mount, mount, needs_fuse, umount

pytestmark = [needs_fuse, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with cluster_and_mount(tmp_path_factory.mktemp("fuse-cluster"), n_chunkservers=4) as e:
        yield e


@pytest.fixture
def second(env):  # type: ignore[no-untyped-def]
    mp = Path(tempfile.mkdtemp(prefix="dfs-mnt2-"))
    mount(env.cluster_file, mp)
    try:
        yield mp
    finally:
        umount(env.cluster_file, mp)
        mp.rmdir()


def test_two_mounts_close_to_open(env, second: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = env.mp, second
    (a / "shared").write_bytes(b"v1")
    assert (b / "shared").read_bytes() == b"v1"  # b now caches attributes (size 2)
    with open(a / "shared", "wb") as f:
        f.write(b"version two, longer")
    assert (b / "shared").read_bytes() == b"version two, longer"  # at once, not after 1 s
    with open(b / "shared", "ab") as f:  # and the other way round, appending
        f.write(b" +b")
    assert (a / "shared").read_bytes() == b"version two, longer +b"
    # an open file on b does not change under its reader; a new open sees the new content
    with open(b / "shared", "rb") as held:
        (a / "shared").write_bytes(b"three")
        assert held.read() == b"version two, longer +b"
    assert (b / "shared").read_bytes() == b"three"
    # renames and deletes on a are seen by the next open on b
    os.rename(a / "shared", a / "moved")
    assert (b / "moved").read_bytes() == b"three"
    assert not os.path.exists(b / "shared")
    with pytest.raises(FileNotFoundError):
        (b / "shared").read_bytes()
    os.unlink(a / "moved")
    with pytest.raises(FileNotFoundError):
        (b / "moved").read_bytes()
    (a / "dir").mkdir()
    (a / "dir" / "f").write_bytes(b"in dir")
    assert os.listdir(b / "dir") == ["f"]
    os.unlink(a / "dir" / "f")
    assert os.listdir(b / "dir") == []


def test_chunkserver_killed_while_reading(env) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(40 << 20)
    (env.mp / "victim").write_bytes(data)
    env.remount()  # a cold cache: every chunk comes from the chunkservers
    got = bytearray()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            with open(env.mp / "victim", "rb") as f:
                while block := f.read(1 << 20):
                    got.extend(block)
                    time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    while len(got) < (5 << 20) and t.is_alive():
        time.sleep(0.01)
    victim = env.cluster.chunkservers[0]
    victim.kill()  # SIGKILL, mid-read
    t.join(300)
    assert not errors, errors
    assert bytes(got) == data
    # and a new file can be written and read back with one server gone
    (env.mp / "after").write_bytes(b"still works")
    assert (env.mp / "after").read_bytes() == b"still works"


def test_unreachable_cluster_gives_eio_and_umount_works(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Runs last in this module: it stops the cluster."""
    mp = Path(tempfile.mkdtemp(prefix="dfs-mnt3-"))
    os.environ["DFS_FUSE_TIMEOUT"] = "3"
    try:
        mount(env.cluster_file, mp)
    finally:
        os.environ.pop("DFS_FUSE_TIMEOUT")
    try:
        (mp / "before").write_bytes(b"x")
        for p in env.cluster.metadata + env.cluster.chunkservers:
            p.kill(signal.SIGSTOP)  # frozen: requests go unanswered (worse than refused)
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-c", f"import os; os.stat({str(mp / 'never-seen')!r})"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - t0
        assert r.returncode != 0 and "Input/output error" in r.stderr, r.stderr
        assert took < 60
        # a hung daemon: dfs umount aborts the connection instead of hanging
        from dfs.fuse.mount import _read_pid

        pid = _read_pid(str(mp))
        assert pid > 0
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        umount(env.cluster_file, mp)
        assert time.monotonic() - t0 < 90
        from dfs.fuse.mount import find_mount

        assert find_mount(str(mp)) is None
    finally:
        for p in env.cluster.metadata + env.cluster.chunkservers:
            try:
                os.kill(p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        umount(env.cluster_file, mp)
        try:
            mp.rmdir()
        except OSError as exc:
            assert exc.errno in (errno.EBUSY, errno.ENOTEMPTY)
