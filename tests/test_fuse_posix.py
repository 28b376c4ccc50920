"""Every operation of the mount, with its POSIX error codes, on a real mount of a real cluster."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import dfs
from tests.test_fuse_support import cluster_and_mount, needs_fuse

pytestmark = [needs_fuse, pytest.mark.timeout(300)]

NOBODY = 65534


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with cluster_and_mount(tmp_path_factory.mktemp("fuse-posix")) as e:
        yield e


@pytest.fixture
def d(env, request) -> Path:  # type: ignore[no-untyped-def]
    """A fresh directory on the mount for one test."""
    p = env.mp / request.node.name.replace("[", "_").replace("]", "")
    p.mkdir(mode=0o777)
    os.chmod(p, 0o777)
    return p


def err(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def as_nobody(code: str) -> subprocess.CompletedProcess:
    """Run Python code as an unprivileged user (permission checks are the kernel's)."""
    pre = f"import os; os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
    return subprocess.run(
        [sys.executable, "-c", pre + code], capture_output=True, text=True, timeout=60
    )


# ---------------------------------------------------------------- data


def test_write_read_append_overwrite(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"hello")
    assert f.read_bytes() == b"hello"
    with open(f, "ab") as fh:
        fh.write(b" world")
    assert f.read_bytes() == b"hello world"
    with open(f, "r+b") as fh:
        fh.seek(6)
        fh.write(b"WORLD")
    assert f.read_bytes() == b"hello WORLD"
    assert f.stat().st_size == 11


def test_big_file_middle_overwrite_keeps_other_chunks(env, d: Path) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(os.urandom(24 << 20))
    f = d / "big"
    f.write_bytes(data)
    c = dfs.connect(str(env.cluster_file))
    try:
        before = c.meta.ns("file_chunks", path=f"/{d.name}/big")["extents"]
        with open(f, "r+b") as fh:
            fh.seek(10 << 20)
            fh.write(b"X" * 5000)
        data[10 << 20 : (10 << 20) + 5000] = b"X" * 5000
        assert f.read_bytes() == data
        after = c.meta.ns("file_chunks", path=f"/{d.name}/big")["extents"]
    finally:
        c.close()
    assert sum(n for _, n in after) == len(data)
    kept = {cid for cid, _ in before} & {cid for cid, _ in after}
    assert len(kept) >= len(before) - 3  # only the chunk(s) around the write changed


def test_cached_pages_never_outlive_their_content(env, d: Path) -> None:  # type: ignore[no-untyped-def]
    """keep_cache on open: re-reads of unchanged files come from the kernel's pages,
    and every way the content behind a name can change here drops them."""
    a, b, c = d / "a", d / "b", d / "c"
    a.write_bytes(b"A" * 100_000)
    assert a.read_bytes() == b"A" * 100_000  # pages cached for a
    assert a.read_bytes() == b"A" * 100_000  # kept: same content
    os.link(a, b)  # a second name, its own kernel inode
    with open(b, "r+b") as fh:
        fh.write(b"B" * 10)
    assert a.read_bytes() == b"B" * 10 + b"A" * 99_990  # written through the other name
    c.write_bytes(b"C" * 100_000)
    assert c.read_bytes() == b"C" * 100_000
    os.rename(c, a)  # a's name now holds c's content
    assert a.read_bytes() == b"C" * 100_000
    c.write_bytes(b"D" * 50)  # a new file at a name whose old pages were read
    assert c.read_bytes() == b"D" * 50
    cl = dfs.connect(str(env.cluster_file))  # changed behind the mount's back
    try:
        cl.write_bytes(f"/{d.name}/c", b"E" * 50)
    finally:
        cl.close()
    assert c.read_bytes() == b"E" * 50


def test_big_sequential_read_twice(d: Path) -> None:
    data = os.urandom(40 << 20)
    f = d / "seq"
    f.write_bytes(data)
    for _ in range(2):  # the second read is from the kernel's pages
        with open(f, "rb") as fh:
            got = b"".join(iter(lambda: fh.read(1 << 20), b""))
        assert got == data


def test_scattered_writes_past_the_seal_threshold(d: Path) -> None:
    """Many small dirty intervals (more than the 16 MiB that start an upload), the
    last one at EOF held back and then appended to: content stays exact."""
    f = d / "scattered"
    size = 40 << 20
    want = bytearray(size)
    with open(f, "wb") as fh:
        fh.truncate(size)
        for k in range(200):  # 200 x 100 KiB, one every 200 KiB
            off = k * (200 << 10)
            piece = os.urandom(100 << 10)
            fh.seek(off)
            fh.write(piece)
            want[off : off + len(piece)] = piece
        tail = os.urandom(3 << 20)
        fh.seek(size)
        fh.write(tail)
        want += tail
        fh.write(b"end")
        want += b"end"
    assert f.read_bytes() == want


def test_truncate_down_and_up_reads_zeros(d: Path) -> None:
    f = d / "t"
    f.write_bytes(b"a" * 10000)
    os.truncate(f, 100)
    assert f.read_bytes() == b"a" * 100
    os.truncate(f, 5000)
    assert f.read_bytes() == b"a" * 100 + bytes(4900)
    with open(f, "r+b") as fh:
        fh.truncate(50)
        fh.seek(0, os.SEEK_END)
        fh.write(b"b")
    assert f.read_bytes() == b"a" * 50 + b"b"


def test_sparse_file_beyond_4gib(d: Path) -> None:
    f = d / "sparse"
    far = (5 << 30) + 123
    with open(f, "wb") as fh:
        fh.write(b"start")
        fh.seek(far)
        fh.write(b"end")
    assert f.stat().st_size == far + 3
    with open(f, "rb") as fh:
        assert fh.read(5) == b"start"
        fh.seek(far - 10)
        assert fh.read(20) == bytes(10) + b"end"
        fh.seek(3 << 30)
        assert fh.read(4096) == bytes(4096)
    with open(f, "r+b") as fh:  # overwrite in the middle of the hole
        fh.seek(4 << 30)
        fh.write(b"middle")
    with open(f, "rb") as fh:
        fh.seek((4 << 30) - 2)
        assert fh.read(10) == b"\0\0middle\0\0"
        fh.seek(far)
        assert fh.read() == b"end"


def test_fallocate(d: Path) -> None:
    f = d / "fa"
    f.write_bytes(b"x" * 10)
    fd = os.open(f, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 1 << 20)
    finally:
        os.close(fd)
    assert f.stat().st_size == 1 << 20
    assert f.read_bytes() == b"x" * 10 + bytes((1 << 20) - 10)


def test_unlinked_open_file_keeps_working(d: Path) -> None:
    f = d / "u"
    f.write_bytes(b"abc")
    with open(f, "r+b") as fh:
        os.unlink(f)
        assert not f.exists()
        fh.seek(0, os.SEEK_END)
        fh.write(b"def")
        fh.flush()
        fh.seek(0)
        assert fh.read() == b"abcdef"
        # (fstat here gives ESTALE: libfuse's high-level API has no path for it)
    assert not f.exists()
    assert os.listdir(d) == []


def test_close_means_committed(env, d: Path) -> None:  # type: ignore[no-untyped-def]
    (d / "c").write_bytes(b"visible to the client library after close")
    c = dfs.connect(str(env.cluster_file))
    try:
        assert c.read_bytes(f"/{d.name}/c") == b"visible to the client library after close"
    finally:
        c.close()


# ---------------------------------------------------------------- names and errors


def test_error_codes(d: Path) -> None:
    (d / "file").write_bytes(b"x")
    (d / "dir").mkdir()
    (d / "full").mkdir()
    (d / "full" / "x").write_bytes(b"")
    assert err(os.stat, d / "missing") == errno.ENOENT
    assert err(open, d / "missing") == errno.ENOENT
    assert err(os.rmdir, d / "missing") == errno.ENOENT
    assert err(os.unlink, d / "missing") == errno.ENOENT
    assert err(os.mkdir, d / "missing" / "x") == errno.ENOENT
    assert err(os.mkdir, d / "dir") == errno.EEXIST
    assert err(os.mkdir, d / "file") == errno.EEXIST
    assert err(os.open, d / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert err(os.link, d / "file", d / "dir") == errno.EEXIST
    assert err(os.symlink, "t", d / "file") == errno.EEXIST
    assert err(os.rmdir, d / "full") == errno.ENOTEMPTY
    assert err(open, d / "dir", "wb") == errno.EISDIR
    assert err(os.unlink, d / "dir") == errno.EISDIR
    assert err(os.mkdir, d / "file" / "x") == errno.ENOTDIR
    assert err(os.rmdir, d / "file") == errno.ENOTDIR
    assert err(os.listdir, d / "file") == errno.ENOTDIR
    assert err(os.link, d / "dir", d / "dirlink") == errno.EPERM
    assert err(os.rename, d / "dir", d / "dir" / "sub") == errno.EINVAL
    assert err(os.readlink, d / "file") == errno.EINVAL
    assert err(os.rename, d / "file", "/tmp/dfs-exdev-target") == errno.EXDEV
    assert err(os.link, d / "file", "/tmp/dfs-exdev-link") == errno.EXDEV


def test_permissions_enforced(d: Path) -> None:
    f = d / "private"
    f.write_bytes(b"secret")
    os.chmod(f, 0o600)
    (d / "ro").mkdir()
    os.chmod(d / "ro", 0o555)
    code = f"""
import errno
for fn in (lambda: open({str(f)!r}, "rb"), lambda: open({str(f)!r}, "ab"),
           lambda: open({str(d / "ro" / "new")!r}, "wb")):
    try:
        fn()
        print("OK")
    except OSError as e:
        print(errno.errorcode[e.errno])
"""
    r = as_nobody(code)
    assert r.stdout.split() == ["EACCES", "EACCES", "EACCES"], r.stderr
    os.chmod(f, 0o644)
    r = as_nobody(f"print(open({str(f)!r}).read())")
    assert r.stdout.strip() == "secret", r.stderr
    assert os.access(f, os.R_OK | os.W_OK)


def test_rename_semantics(d: Path) -> None:
    (d / "a").write_bytes(b"A")
    (d / "b").write_bytes(b"B")
    os.rename(d / "a", d / "b")  # over an existing file: replaced atomically
    assert (d / "b").read_bytes() == b"A" and not (d / "a").exists()
    (d / "d1").mkdir()
    (d / "d1" / "x").write_bytes(b"x")
    (d / "d2").mkdir()
    os.rename(d / "d1", d / "d2")  # over an empty directory
    assert (d / "d2" / "x").read_bytes() == b"x"
    (d / "d3").mkdir()
    assert err(os.rename, d / "d3", d / "d2") == errno.ENOTEMPTY
    assert err(os.rename, d / "b", d / "d3") == errno.EISDIR
    assert err(os.rename, d / "d3", d / "b") == errno.ENOTDIR
    os.rename(d / "b", d / "b")  # same name: nothing happens
    assert (d / "b").read_bytes() == b"A"
    os.rename(d / "d2", d / "d3" / "moved")  # across directories
    assert (d / "d3" / "moved" / "x").read_bytes() == b"x"
    # renameat2(RENAME_NOREPLACE)
    libc = ctypes.CDLL(None, use_errno=True)
    (d / "c").write_bytes(b"C")
    rc = libc.renameat2(-100, str(d / "c").encode(), -100, str(d / "b").encode(), 1)
    assert rc == -1 and ctypes.get_errno() == errno.EEXIST
    assert (d / "b").read_bytes() == b"A"
    # a file renamed while open keeps its writes
    with open(d / "c", "r+b") as fh:
        os.rename(d / "c", d / "c2")
        fh.seek(1)
        fh.write(b"2")
    assert (d / "c2").read_bytes() == b"C2" and not (d / "c").exists()


def test_hard_links_one_inode(d: Path) -> None:
    (d / "a").write_bytes(b"one")
    os.link(d / "a", d / "b")
    sa, sb = os.stat(d / "a"), os.stat(d / "b")
    assert sa.st_ino == sb.st_ino and sa.st_nlink == sb.st_nlink == 2
    with open(d / "a", "r+b") as fh:
        fh.write(b"TWO")
    assert (d / "b").read_bytes() == b"TWO"
    os.unlink(d / "a")
    assert (d / "b").read_bytes() == b"TWO"
    assert os.stat(d / "b").st_nlink == 1


def test_symlink_and_special_files(d: Path) -> None:
    (d / "target").write_bytes(b"t")
    os.symlink("target", d / "link")
    assert os.readlink(d / "link") == "target"
    assert (d / "link").read_bytes() == b"t"
    assert stat.S_ISLNK(os.lstat(d / "link").st_mode)
    os.symlink("nowhere", d / "dangling")
    assert err(os.stat, d / "dangling") == errno.ENOENT
    os.mkfifo(d / "fifo", 0o640)
    st = os.stat(d / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    os.mknod(d / "chr", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.stat(d / "chr")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    os.mknod(d / "sock", 0o600 | stat.S_IFSOCK)
    assert stat.S_ISSOCK(os.stat(d / "sock").st_mode)


def test_chmod_chown_setuid_rules(d: Path) -> None:
    f = d / "prog"
    f.write_bytes(b"#!/bin/sh\n")
    os.chmod(f, 0o6755)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o6755
    os.chown(f, 1000, 1000)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert stat.S_IMODE(st.st_mode) == 0o755  # setuid and (group-exec) setgid cleared
    g = d / "lock"
    g.write_bytes(b"")
    os.chmod(g, 0o2644)  # setgid without group exec: a locking mark, kept
    os.chown(g, 1000, -1)
    assert stat.S_IMODE(os.stat(g).st_mode) == 0o2644
    # a write by another user clears setuid
    h = d / "shared"
    h.write_bytes(b"x")
    os.chmod(h, 0o4777)
    r = as_nobody(f"open({str(h)!r}, 'ab').write(b'y')")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(h).st_mode) == 0o777
    # ... also a file it creates write-only (written with direct_io: the daemon
    # clears the bits, not the kernel), and setgid only with group exec
    os.chmod(d, 0o777)
    for name, mode, left in (("mine", 0o6755, 0o755), ("lockmark", 0o2644, 0o2644)):
        code = (
            f"fd = os.open({str(d / name)!r}, os.O_CREAT | os.O_WRONLY, {mode})\n"
            f"os.fchmod(fd, {mode}); os.write(fd, b'data'); os.close(fd)"
        )
        r = as_nobody(code)
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(os.stat(d / name).st_mode) == left, name
        assert (d / name).read_bytes() == b"data"
    # a setgid directory hands its group to new entries
    sg = d / "sgdir"
    sg.mkdir()
    os.chown(sg, 0, 4242)
    os.chmod(sg, 0o2777)
    (sg / "child").write_bytes(b"")
    (sg / "sub").mkdir()
    assert os.stat(sg / "child").st_gid == 4242
    assert os.stat(sg / "sub").st_gid == 4242
    assert os.stat(sg / "sub").st_mode & stat.S_ISGID


def test_utimens_now_and_omit(d: Path) -> None:
    f = d / "times"
    f.write_bytes(b"")
    os.utime(f, ns=(1_000_000_000_123_456_789, 1_100_000_000_987_654_321))
    st = os.stat(f)
    assert st.st_atime_ns == 1_000_000_000_123_456_789
    assert st.st_mtime_ns == 1_100_000_000_987_654_321
    subprocess.run(["touch", "-m", "-d", "@1200000000", str(f)], check=True)  # atime omitted
    st = os.stat(f)
    assert st.st_mtime_ns == 1_200_000_000 * 10**9
    assert st.st_atime_ns == 1_000_000_000_123_456_789
    subprocess.run(["touch", "-a", str(f)], check=True)  # atime now, mtime omitted
    st = os.stat(f)
    assert st.st_mtime_ns == 1_200_000_000 * 10**9
    assert st.st_atime_ns > 1_700_000_000 * 10**9
    os.utime(f)  # both now
    assert os.stat(f).st_mtime_ns > 1_700_000_000 * 10**9


def test_xattrs(d: Path) -> None:
    f = d / "x"
    f.write_bytes(b"")
    os.setxattr(f, "user.color", b"blue")
    assert os.getxattr(f, "user.color") == b"blue"
    assert "user.color" in os.listxattr(f)
    assert err(os.setxattr, f, "user.color", b"red", os.XATTR_CREATE) == errno.EEXIST
    assert err(os.setxattr, f, "user.other", b"red", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(f, "user.color", b"red", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.color") == b"red"
    os.removexattr(f, "user.color")
    assert err(os.getxattr, f, "user.color") == errno.ENODATA
    assert err(os.removexattr, f, "user.color") == errno.ENODATA
    assert os.listxattr(f) == []


def test_statfs_and_readdir(d: Path) -> None:
    sv = os.statvfs(d)
    assert sv.f_blocks > 0 and 0 < sv.f_bfree <= sv.f_blocks and sv.f_namemax == 255
    names = {f"n{i:03d}" for i in range(300)}
    for n in names:
        (d / n).write_bytes(b"")
    assert set(os.listdir(d)) == names
    with os.scandir(d) as it:
        assert all(e.is_file() for e in it)
