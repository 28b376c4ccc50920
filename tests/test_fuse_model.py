"""Randomized model tests of the mount.

fsx-style: thousands of random writes, truncates and reads at random offsets
of one file (and of a sparse file past 4 GiB), every read checked against an
in-memory model, with closes (commits) in between; then everything checked
again after a remount.

Differential: a hypothesis state machine runs the same random file-system
operations on the mount and on a local directory and compares every result
and every errno.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from tests.test_fuse_support import cluster_and_mount, needs_fuse

pytestmark = [needs_fuse, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with cluster_and_mount(tmp_path_factory.mktemp("fuse-model")) as e:
        yield e


class Fsx:
    """One file on the mount and its model, driven by random operations."""

    def __init__(self, path: Path, rng: random.Random, max_size: int, max_io: int) -> None:
        self.path = path
        self.rng = rng
        self.max_size = max_size
        self.max_io = max_io
        self.model = bytearray()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.ops = 0

    def check_read(self, off: int, n: int) -> None:
        got = os.pread(self.fd, n, off)
        want = bytes(self.model[off : off + n])
        assert got == want, f"op {self.ops}: read {n}@{off}: mismatch (size {len(self.model)})"

    def step(self) -> None:
        r = self.rng
        self.ops += 1
        kind = r.random()
        size = len(self.model)
        if kind < 0.40:  # write
            off = r.randrange(0, self.max_size)
            n = r.randrange(1, self.max_io)
            data = r.randbytes(n) if r.random() < 0.7 else bytes([r.randrange(256)]) * n
            assert os.pwrite(self.fd, data, off) == n
            if off > size:
                self.model += bytes(off - size)
            self.model[off : off + n] = data
        elif kind < 0.50:  # append
            n = r.randrange(1, self.max_io)
            data = r.randbytes(n)
            assert os.pwrite(self.fd, data, size) == n
            self.model += data
        elif kind < 0.60:  # truncate down or up
            new = r.randrange(0, self.max_size)
            os.ftruncate(self.fd, new)
            if new < size:
                del self.model[new:]
            else:
                self.model += bytes(new - size)
        elif kind < 0.95:  # read somewhere (often across the end)
            off = r.randrange(0, max(1, size + self.max_io))
            self.check_read(off, r.randrange(1, self.max_io))
        else:  # close (commit) and reopen; check the size the kernel reports
            os.close(self.fd)
            assert os.stat(self.path).st_size == len(self.model)
            self.fd = os.open(self.path, os.O_RDWR)

    def close(self) -> None:
        os.close(self.fd)

    def verify_whole(self) -> None:
        with open(self.path, "rb") as f:
            got = f.read()
        assert len(got) == len(self.model)
        assert got == bytes(self.model), "whole-file content differs from the model"


def test_fsx_random_ops_then_remount(env) -> None:  # type: ignore[no-untyped-def]
    seed = int(os.environ.get("FSX_SEED", "1234"))
    rng = random.Random(seed)
    fsx = Fsx(env.mp / "fsx.bin", rng, max_size=6 << 20, max_io=256 << 10)
    for _ in range(3000):
        fsx.step()
    fsx.close()
    fsx.verify_whole()
    env.remount()
    fsx.verify_whole()


def test_fsx_sparse_past_4gib(env) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(99)
    path = env.mp / "fsx-sparse.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    writes: dict[int, bytes] = {}
    size = 0
    try:
        for i in range(120):
            off = rng.randrange(0, 6 << 30)
            data = rng.randbytes(rng.randrange(1, 70_000))
            os.pwrite(fd, data, off)
            # later writes win: drop overlapped earlier ones from the model
            writes = {o: d for o, d in writes.items() if o + len(d) <= off or o >= off + len(data)}
            writes[off] = data
            size = max(size, off + len(data))
            if i % 40 == 39:
                os.close(fd)
                fd = os.open(path, os.O_RDWR)
    finally:
        os.close(fd)

    def check() -> None:
        assert os.stat(path).st_size == size
        with open(path, "rb") as f:
            for off, data in writes.items():
                f.seek(off)
                assert f.read(len(data)) == data
                f.seek(max(0, off - 4096))
                assert len(f.read(8192)) == 8192 or off + 4096 > size

    check()
    env.remount()
    check()


# ---------------------------------------------------------------- differential

NAMES = ["a", "b", "c", "d/x", "d/y", "e/f/g"]
_case = itertools.count()


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno or 0, exc.errno))


class Differential(RuleBasedStateMachine):
    """The same operations on the mount and on a local directory must agree."""

    mount_root: Path = Path("/nonexistent")

    def __init__(self) -> None:
        super().__init__()
        n = next(_case)
        self.m = self.mount_root / f"case{n}"
        self.local = Path(tempfile.mkdtemp(prefix="dfs-diff-"))
        self.m.mkdir()
        self.fds: list[tuple[int, int]] = []  # (mount fd, local fd)

    def both(self, fn, *rel):  # type: ignore[no-untyped-def]
        a = _outcome(fn, *[self.m / r for r in rel])
        b = _outcome(fn, *[self.local / r for r in rel])
        assert a == b, f"{fn.__name__}{rel}: mount {a} != local {b}"
        return a

    @rule(name=st.sampled_from(NAMES), data=st.binary(max_size=3000))
    def write(self, name: str, data: bytes) -> None:
        self.both(lambda p: p.write_bytes(data), name)

    @rule(name=st.sampled_from(NAMES), data=st.binary(min_size=1, max_size=500))
    def append(self, name: str, data: bytes) -> None:
        def app(p: Path) -> int:
            with open(p, "ab") as f:
                return f.write(data)

        self.both(app, name)

    @rule(name=st.sampled_from(NAMES), off=st.integers(0, 5000), data=st.binary(max_size=800))
    def pwrite(self, name: str, off: int, data: bytes) -> None:
        def pw(p: Path) -> int:
            fd = os.open(p, os.O_WRONLY)
            try:
                return os.pwrite(fd, data, off)
            finally:
                os.close(fd)

        self.both(pw, name)

    @rule(name=st.sampled_from(NAMES))
    def read(self, name: str) -> None:
        self.both(lambda p: p.read_bytes(), name)

    @rule(name=st.sampled_from(NAMES), size=st.integers(0, 6000))
    def truncate(self, name: str, size: int) -> None:
        self.both(lambda p: os.truncate(p, size), name)

    @rule(name=st.sampled_from(["d", "e", "e/f", "a", "d/x"]))
    def mkdir(self, name: str) -> None:
        self.both(os.mkdir, name)

    @rule(name=st.sampled_from(["d", "e", "e/f", "a", "d/x"]))
    def rmdir(self, name: str) -> None:
        self.both(os.rmdir, name)

    @rule(name=st.sampled_from(NAMES))
    def unlink(self, name: str) -> None:
        self.both(os.unlink, name)

    @rule(src=st.sampled_from([*NAMES, "d", "e"]), dst=st.sampled_from([*NAMES, "d", "e"]))
    def rename(self, src: str, dst: str) -> None:
        self.both(os.rename, src, dst)

    @rule(src=st.sampled_from(NAMES), dst=st.sampled_from(NAMES))
    def link(self, src: str, dst: str) -> None:
        self.both(os.link, src, dst)

    @rule(name=st.sampled_from(NAMES), dest=st.sampled_from(["a", "d/x", "zz"]))
    def symlink(self, name: str, dest: str) -> None:
        self.both(lambda p: os.symlink(dest, p), name)

    @rule(name=st.sampled_from(NAMES), mode=st.sampled_from([0o600, 0o644, 0o755, 0o4755]))
    def chmod(self, name: str, mode: int) -> None:
        self.both(lambda p: os.chmod(p, mode), name)

    @rule(name=st.sampled_from([*NAMES, "d", "e", "e/f"]))
    def stat(self, name: str) -> None:
        def info(p: Path):  # type: ignore[no-untyped-def]
            s = os.lstat(p)
            size = s.st_size if not stat.S_ISDIR(s.st_mode) else 0
            return (stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode), size, s.st_nlink)

        self.both(info, name)

    @rule(name=st.sampled_from(["", "d", "e", "e/f", "a"]))
    def listdir(self, name: str) -> None:
        self.both(lambda p: sorted(os.listdir(p)), name)

    @rule(name=st.sampled_from(NAMES))
    def readlink(self, name: str) -> None:
        self.both(os.readlink, name)

    @precondition(lambda self: len(self.fds) < 3)
    @rule(name=st.sampled_from(NAMES))
    def open_keep(self, name: str) -> None:
        a = _outcome(os.open, self.m / name, os.O_RDWR)
        b = _outcome(os.open, self.local / name, os.O_RDWR)
        assert a[0] == b[0], f"open {name}: mount {a} != local {b}"
        if a[0] == "ok":
            self.fds.append((a[1], b[1]))
        else:
            assert a == b

    @precondition(lambda self: bool(self.fds))
    @rule(data=st.binary(min_size=1, max_size=300), off=st.integers(0, 4000))
    def write_open(self, data: bytes, off: int) -> None:
        fa, fb = self.fds[-1]
        assert os.pwrite(fa, data, off) == os.pwrite(fb, data, off)
        assert os.pread(fa, 5000, 0) == os.pread(fb, 5000, 0)

    @precondition(lambda self: bool(self.fds))
    @rule()
    def close_one(self) -> None:
        fa, fb = self.fds.pop()
        os.close(fa)
        os.close(fb)

    def teardown(self) -> None:
        for fa, fb in self.fds:
            os.close(fa)
            os.close(fb)
        shutil.rmtree(self.local, ignore_errors=True)


def test_differential_against_local_dir(env) -> None:  # type: ignore[no-untyped-def]
    Differential.mount_root = env.mp
    run = Differential.TestCase
    run.settings = settings(
        max_examples=int(os.environ.get("DFS_DIFF_EXAMPLES", "40")),
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    run().runTest()
