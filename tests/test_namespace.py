"""Namespace state machine: POSIX semantics of each op, chunk references and
garbage, exactly-once sessions, paging, and snapshots."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from metadata.namespace import DEFAULT_SESSION_TIMEOUT, MAX_PAGE, Namespace


def cid(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


class NS:
    """A namespace with a command clock, for terse tests."""

    def __init__(self, **kw: Any) -> None:
        self.ns = Namespace(**kw)
        self.ts = 1_000_000

    def __call__(self, op: str, client: str | None = None, seq: int | None = None, **args: Any):
        self.ts += 1
        return self.ns.apply({"op": op, "args": args, "client": client, "seq": seq, "ts": self.ts})

    def ok(self, op: str, **args: Any) -> dict:
        r = self(op, **args)
        assert r["ok"], r
        return r

    def err(self, op: str, **args: Any) -> str:
        before = self.ns.snapshot()
        r = self(op, **args)
        assert not r["ok"], r
        assert isinstance(r["msg"], str) and r["msg"]
        assert self.ns.snapshot() == before, f"failed {op} changed the state"
        return r["code"]

    def q(self, op: str, **args: Any) -> dict:
        return self.ns.query(op, args)

    def attrs(self, path: str) -> dict:
        r = self.q("getattr", path=path)
        assert r["ok"], r
        return r["attrs"]


@pytest.fixture
def fs() -> NS:
    return NS()


def test_root(fs: NS) -> None:
    a = fs.attrs("/")
    assert a["type"] == "dir" and a["ino"] == 1 and a["nlink"] == 2 and a["rep"] == 3
    assert fs.q("readdir", path="/") == {"ok": True, "entries": [], "more": False}


def test_mkdir_rmdir(fs: NS) -> None:
    a = fs.ok("mkdir", path="/a", mode=0o700, uid=5, gid=6)["attrs"]
    assert a["type"] == "dir" and a["mode"] == 0o40700 and (a["uid"], a["gid"]) == (5, 6)
    assert fs.attrs("/")["nlink"] == 3
    assert fs.err("mkdir", path="/a") == "EEXIST"
    assert fs.err("mkdir", path="/") == "EEXIST"
    assert fs.err("mkdir", path="/x/y") == "ENOENT"
    fs.ok("mkdir", path="/a/b/c", parents=True)
    fs.ok("mkdir", path="/a/b/c", parents=True)  # mkdir -p of an existing dir
    assert fs.attrs("/a")["nlink"] == 3 and fs.attrs("/a/b")["nlink"] == 3
    fs.ok("create", path="/a/f")
    assert fs.err("mkdir", path="/a/f/g") == "ENOTDIR"
    assert fs.err("mkdir", path="/a/f/g", parents=True) == "ENOTDIR"
    assert fs.err("mkdir", path="/a/f", parents=True) == "EEXIST"
    assert fs.err("rmdir", path="/a") == "ENOTEMPTY"
    assert fs.err("rmdir", path="/a/f") == "ENOTDIR"
    assert fs.err("rmdir", path="/") == "EBUSY"
    assert fs.err("rmdir", path="/nope") == "ENOENT"
    fs.ok("rmdir", path="/a/b/c")
    assert fs.attrs("/a/b")["nlink"] == 2
    assert fs.q("statfs")["dirs"] == 3


def test_create_unlink(fs: NS) -> None:
    r = fs.ok("create", path="/f", mode=0o600, uid=1, gid=2)
    assert r["created"] and r["attrs"]["mode"] == 0o100600 and r["attrs"]["size"] == 0
    assert r["attrs"]["version"] == 1 and r["attrs"]["nlink"] == 1
    assert fs.err("create", path="/f") == "EEXIST"
    r2 = fs.ok("create", path="/f", exclusive=False)
    assert not r2["created"] and r2["attrs"]["ino"] == r["attrs"]["ino"]
    fs.ok("mkdir", path="/d")
    assert fs.err("create", path="/d", exclusive=False) == "EISDIR"
    assert fs.err("create", path="/", exclusive=False) == "EISDIR"
    assert fs.err("create", path="/", exclusive=True) == "EEXIST"
    assert fs.err("create", path="/f/g") == "ENOTDIR"
    assert fs.err("create", path="/f", mode=0o40644) == "EINVAL"  # dir type bits
    assert fs.err("unlink", path="/d") == "EISDIR"
    assert fs.err("unlink", path="/") == "EISDIR"
    assert fs.err("unlink", path="/zz") == "ENOENT"
    fs.ok("unlink", path="/f")
    assert fs.q("getattr", path="/f")["code"] == "ENOENT"
    assert fs.q("statfs")["files"] == 0


def test_parent_mtime_and_version(fs: NS) -> None:
    fs.ok("mkdir", path="/d")
    v = fs.attrs("/d")["version"]
    fs.ok("create", path="/d/f")
    a = fs.attrs("/d")
    assert a["mtime"] == a["ctime"] == fs.ts and a["version"] == v + 1


def test_commit_and_refs(fs: NS) -> None:
    r = fs.ok("commit", path="/f", extents=[[cid(1), 100], [None, 10], [cid(2), 5]], size=115)
    assert r["created"] and r["attrs"]["size"] == 115 and r["attrs"]["version"] == 1
    fc = fs.q("file_chunks", path="/f")
    assert fc["extents"] == [[cid(1), 100], [None, 10], [cid(2), 5]]
    assert (fc["size"], fc["rep"], fc["version"]) == (115, 3, 1)
    assert fs.q("exists", chunk_ids=[cid(1), cid(3)])["referenced"] == [True, False]
    # same content in another file: shared, counted twice
    fs.ok("commit", path="/g", extents=[[cid(1), 100]])
    cr = fs.q("chunk_refs", chunk_ids=[cid(1), cid(2), cid(3)])
    assert cr["counts"] == [2, 1, 0] and cr["chunks"] == 2 and cr["refs"] == 3
    assert cr["referenced_bytes"] == 205
    # replace content: cid(2) drops to garbage, cid(1) stays referenced
    r = fs.ok("commit", path="/f", extents=[[cid(1), 50]], expect_version=1)
    assert r["attrs"]["version"] == 2 and r["attrs"]["size"] == 50 and not r["created"]
    st = fs.q("statfs")
    assert st["chunks"] == 1 and st["garbage"] == 1 and st["logical_bytes"] == 150
    assert fs.err("commit", path="/f", extents=[], expect_version=1) == "ESTALE"
    assert fs.err("commit", path="/f", extents=[], expect_version=0) == "ESTALE"
    assert fs.err("commit", path="/new", extents=[], expect_version=3) == "ESTALE"
    fs.ok("commit", path="/new", extents=[], expect_version=0)
    assert fs.err("commit", path="/nope", extents=[], create=False) == "ENOENT"
    assert fs.err("commit", path="/f", extents=[[cid(1), 50]], size=51) == "EINVAL"
    fs.ok("mkdir", path="/d")
    assert fs.err("commit", path="/d", extents=[]) == "EISDIR"
    assert fs.err("commit", path="/", extents=[]) == "EISDIR"
    fs.ok("symlink", target="x", path="/s")
    assert fs.err("commit", path="/s", extents=[]) == "EINVAL"
    # re-referencing a garbage candidate takes it out of the candidate set
    fs.ok("commit", path="/h", extents=[[cid(2), 5]])
    assert fs.q("statfs")["garbage"] == 0
    # unlinking the last names drops references
    for p in ("/f", "/g", "/h"):
        fs.ok("unlink", path=p)
    st = fs.q("statfs")
    assert st["chunks"] == 0 and st["chunk_refs"] == 0 and st["garbage"] == 2
    assert st["referenced_bytes"] == 0 and st["logical_bytes"] == 0


def test_commit_same_chunk_twice_in_one_file(fs: NS) -> None:
    fs.ok("commit", path="/f", extents=[[cid(1), 10], [cid(1), 10]])
    assert fs.q("chunk_refs", chunk_ids=[cid(1)])["counts"] == [2]
    fs.ok("commit", path="/f", extents=[[cid(1), 10]])
    assert fs.q("chunk_refs", chunk_ids=[cid(1)])["counts"] == [1]
    assert fs.q("statfs")["garbage"] == 0


def test_gc_mark_expire(fs: NS) -> None:
    fs.ok("commit", path="/f", extents=[[cid(1), 10]])
    t0 = fs.ts
    r = fs.ok("gc_mark", chunk_ids=[cid(1), cid(2), cid(3)], ts=t0)
    assert r["marked"] == 2  # cid(1) is referenced
    fs.ok("gc_mark", chunk_ids=[cid(2)], ts=t0 + 100)  # keeps the older mark
    assert fs.ok("gc_expire", before_ts=t0)["chunks"] == []
    # an upload that gets committed before expiry is saved
    fs.ok("commit", path="/g", extents=[[cid(3), 10]])
    assert fs.ok("gc_expire", before_ts=t0 + 1)["chunks"] == [cid(2)]
    assert fs.ok("gc_expire", before_ts=t0 + 1)["chunks"] == []
    fs.ok("unlink", path="/f")  # cid(1) becomes a candidate stamped now
    now = fs.ts
    assert fs.ok("gc_expire", before_ts=now)["chunks"] == []
    assert fs.ok("gc_expire", before_ts=now + 1)["chunks"] == [cid(1)]
    # limit takes the oldest first
    fs.ok("gc_mark", chunk_ids=[cid(9)], ts=5)
    fs.ok("gc_mark", chunk_ids=[cid(8)], ts=6)
    assert fs.ok("gc_expire", before_ts=100, limit=1)["chunks"] == [cid(9)]


def test_rename_semantics(fs: NS) -> None:
    fs.ok("mkdir", path="/a/b", parents=True)
    fs.ok("mkdir", path="/e")
    fs.ok("mkdir", path="/full/x", parents=True)
    fs.ok("commit", path="/f", extents=[[cid(1), 1]])
    fs.ok("commit", path="/g", extents=[[cid(2), 1]])
    ino_f = fs.attrs("/f")["ino"]
    # file over file replaces; the replaced file's chunks are dropped
    fs.ok("rename", src="/f", dst="/g")
    assert fs.attrs("/g")["ino"] == ino_f and fs.q("getattr", path="/f")["code"] == "ENOENT"
    assert fs.q("exists", chunk_ids=[cid(2)])["referenced"] == [False]
    assert fs.err("rename", src="/g", dst="/a") == "EISDIR"
    assert fs.err("rename", src="/a", dst="/g") == "ENOTDIR"
    assert fs.err("rename", src="/e", dst="/full") == "ENOTEMPTY"
    assert fs.err("rename", src="/a", dst="/a/b/c") == "EINVAL"
    assert fs.err("rename", src="/a", dst="/a/b") == "EINVAL"
    assert fs.err("rename", src="/nope", dst="/x") == "ENOENT"
    assert fs.err("rename", src="/g", dst="/nope/x") == "ENOENT"
    assert fs.err("rename", src="/g", dst="/g/x") == "ENOTDIR"
    assert fs.err("rename", src="/", dst="/x") == "EBUSY"
    assert fs.err("rename", src="/a", dst="/") == "EBUSY"
    assert fs.err("rename", src="/full/x", dst="/full") == "ENOTEMPTY"
    fs.ok("commit", path="/h", extents=[])
    assert fs.err("rename", src="/h", dst="/g", noreplace=True) == "EEXIST"
    # rename to itself: no-op, nothing changes
    snap = fs.ns.snapshot()
    fs.ok("rename", src="/g", dst="/g")
    fs.ok("rename", src="/a", dst="//a/")
    assert fs.ns.snapshot() == snap
    # dir over empty dir
    root_nlink = fs.attrs("/")["nlink"]
    fs.ok("rename", src="/a", dst="/e")
    assert fs.attrs("/e/b")["type"] == "dir" and fs.q("getattr", path="/a")["code"] == "ENOENT"
    assert fs.attrs("/")["nlink"] == root_nlink - 1
    # move a dir to another parent: nlink moves
    fs.ok("rename", src="/e/b", dst="/full/b")
    assert fs.attrs("/e")["nlink"] == 2 and fs.attrs("/full")["nlink"] == 4
    assert fs.q("statfs")["dirs"] == 5


def test_rename_hardlinks_same_inode_is_noop(fs: NS) -> None:
    fs.ok("commit", path="/f", extents=[[cid(1), 1]])
    fs.ok("link", src="/f", dst="/g")
    fs.ok("rename", src="/f", dst="/g")
    assert fs.attrs("/f")["nlink"] == 2 and fs.attrs("/g")["nlink"] == 2


def test_hard_links(fs: NS) -> None:
    fs.ok("commit", path="/f", extents=[[cid(1), 7]])
    fs.ok("mkdir", path="/d")
    a = fs.ok("link", src="/f", dst="/d/f2")["attrs"]
    assert a["nlink"] == 2
    assert fs.attrs("/d/f2")["ino"] == fs.attrs("/f")["ino"]
    assert fs.q("chunk_refs", chunk_ids=[cid(1)])["counts"] == [1]  # one inode, one ref
    assert fs.err("link", src="/d", dst="/d2") == "EPERM"
    assert fs.err("link", src="/f", dst="/d/f2") == "EEXIST"
    assert fs.err("link", src="/f", dst="/") == "EEXIST"
    assert fs.err("link", src="/nope", dst="/x") == "ENOENT"
    assert fs.err("link", src="/f", dst="/nope/x") == "ENOENT"
    fs.ok("commit", path="/d/f2", extents=[[cid(2), 3]])  # content shared by both names
    assert fs.q("file_chunks", path="/f")["extents"] == [[cid(2), 3]]
    fs.ok("unlink", path="/f")
    assert fs.attrs("/d/f2")["nlink"] == 1
    assert fs.q("exists", chunk_ids=[cid(2)])["referenced"] == [True]
    fs.ok("unlink", path="/d/f2")
    assert fs.q("exists", chunk_ids=[cid(2)])["referenced"] == [False]
    assert fs.q("statfs")["files"] == 0


def test_symlink_mknod(fs: NS) -> None:
    a = fs.ok("symlink", target="../some/where", path="/s", uid=3)["attrs"]
    assert a["type"] == "symlink" and a["size"] == len("../some/where") and a["uid"] == 3
    assert fs.q("readlink", path="/s")["target"] == "../some/where"
    assert fs.err("symlink", target="x", path="/s") == "EEXIST"
    assert fs.err("symlink", target="", path="/t") == "EINVAL"
    assert fs.err("symlink", target="a\0b", path="/t") == "EINVAL"
    assert fs.err("symlink", target="x" * 4097, path="/t") == "ENAMETOOLONG"
    assert fs.err("mkdir", path="/s/x") == "ENOTDIR"  # links are not followed
    fs.ok("create", path="/f")
    assert fs.q("readlink", path="/f")["code"] == "EINVAL"
    a = fs.ok("mknod", path="/fifo", mode=0o10600)["attrs"]
    assert a["type"] == "fifo" and a["mode"] == 0o10600
    a = fs.ok("mknod", path="/dev0", mode=0o20644, rdev=(8 << 8) | 1)["attrs"]
    assert a["type"] == "chardev" and a["rdev"] == 2049
    a = fs.ok("mknod", path="/sock", mode=0o140755)["attrs"]
    assert a["type"] == "socket"
    a = fs.ok("mknod", path="/reg", mode=0o644)["attrs"]
    assert a["type"] == "file"
    assert fs.err("mknod", path="/dd", mode=0o40755) == "EINVAL"
    assert fs.err("mknod", path="/fifo", mode=0o10600) == "EEXIST"
    st = fs.q("statfs")
    assert (st["files"], st["symlinks"], st["specials"]) == (2, 1, 3)
    fs.ok("unlink", path="/dev0")
    fs.ok("unlink", path="/s")
    st = fs.q("statfs")
    assert (st["symlinks"], st["specials"]) == (0, 2)


def test_setattr(fs: NS) -> None:
    fs.ok("commit", path="/f", extents=[[cid(1), 100], [cid(2), 100]])
    a = fs.ok("setattr", path="/f", mode=0o600, uid=7, gid=8, atime=5, mtime=6)["attrs"]
    assert a["mode"] == 0o100600 and (a["uid"], a["gid"]) == (7, 8)
    assert (a["atime"], a["mtime"], a["ctime"]) == (5, 6, fs.ts) and a["version"] == 1
    a = fs.ok("setattr", path="/f", atime="now")["attrs"]
    assert a["atime"] == fs.ts and a["mtime"] == 6
    # truncate down: cut inside the second extent; cid(2)'s ref stays (shortened)
    a = fs.ok("setattr", path="/f", size=150)["attrs"]
    assert a["size"] == 150 and a["version"] == 2 and a["mtime"] == fs.ts
    assert fs.q("file_chunks", path="/f")["extents"] == [[cid(1), 100], [cid(2), 50]]
    # down to within the first: cid(2) becomes garbage
    fs.ok("setattr", path="/f", size=40)
    assert fs.q("file_chunks", path="/f")["extents"] == [[cid(1), 40]]
    assert fs.q("statfs")["garbage"] == 1
    # up: a trailing hole, merged when growing again
    fs.ok("setattr", path="/f", size=60)
    fs.ok("setattr", path="/f", size=90)
    fc = fs.q("file_chunks", path="/f")
    assert fc["extents"] == [[cid(1), 40], [None, 50]] and fc["size"] == 90
    assert fc["version"] == 5
    fs.ok("setattr", path="/f", size=90)  # same size: no new version
    assert fs.attrs("/f")["version"] == 5
    fs.ok("setattr", path="/f", size=0)
    assert fs.q("file_chunks", path="/f")["extents"] == []
    assert fs.q("statfs")["chunks"] == 0
    fs.ok("mkdir", path="/d")
    assert fs.err("setattr", path="/d", size=0) == "EISDIR"
    fs.ok("symlink", target="t", path="/s")
    assert fs.err("setattr", path="/s", size=0) == "EINVAL"
    assert fs.err("setattr", path="/f", mode=0o40755) == "EINVAL"
    assert fs.ok("setattr", path="/d", mode=0o40700)["attrs"]["mode"] == 0o40700
    assert fs.err("setattr", path="/f", size=1 << 61) == "EFBIG"
    assert fs.err("setattr", path="/f", size=-1) == "EINVAL"
    assert fs.err("setattr", path="/nope", mode=0o600) == "ENOENT"


def test_xattrs(fs: NS) -> None:
    fs.ok("create", path="/f")
    fs.ok("setxattr", path="/f", name="user.b", value=b"2")
    fs.ok("setxattr", path="/f", name="user.a", value=b"\x00\xff")
    assert fs.q("getxattr", path="/f", name="user.a")["value"] == b"\x00\xff"
    assert fs.q("listxattr", path="/f")["names"] == ["user.a", "user.b"]
    assert fs.err("setxattr", path="/f", name="user.a", value=b"x", flags=1) == "EEXIST"
    assert fs.err("setxattr", path="/f", name="user.c", value=b"x", flags=2) == "ENODATA"
    fs.ok("setxattr", path="/f", name="user.a", value=b"x", flags=2)
    assert fs.q("getxattr", path="/f", name="user.a")["value"] == b"x"
    assert fs.err("setxattr", path="/f", name="user.a", value="str") == "EINVAL"
    assert fs.err("setxattr", path="/f", name="u" * 256, value=b"") == "ERANGE"
    assert fs.err("setxattr", path="/f", name="user.a", value=b"x" * 65537) == "E2BIG"
    fs.ok("removexattr", path="/f", name="user.a")
    assert fs.err("removexattr", path="/f", name="user.a") == "ENODATA"
    assert fs.q("getxattr", path="/f", name="user.a")["code"] == "ENODATA"
    # xattrs belong to the inode: visible through a hard link, gone with the inode
    fs.ok("link", src="/f", dst="/g")
    assert fs.q("listxattr", path="/g")["names"] == ["user.b"]
    fs.ok("unlink", path="/f")
    fs.ok("unlink", path="/g")
    assert fs.ns.xattrs == {}


def test_setrep(fs: NS) -> None:
    fs.ok("mkdir", path="/d/e", parents=True)
    fs.ok("commit", path="/d/e/f", extents=[[cid(1), 10]])
    fs.ok("commit", path="/g", extents=[[cid(1), 10]])
    assert fs.q("all_chunks")["chunks"] == [[cid(1), 3]]
    r = fs.ok("setrep", path="/d", rep=5, recursive=True)
    assert r["changed"] == 3
    assert fs.attrs("/d/e/f")["rep"] == 5
    assert fs.q("all_chunks")["chunks"] == [[cid(1), 5]]  # the highest wins
    fs.ok("setrep", path="/d/e/f", rep=1)
    assert fs.q("all_chunks")["chunks"] == [[cid(1), 3]]
    fs.ok("setrep", path="/d", rep=2)
    fs.ok("create", path="/d/new")
    assert fs.attrs("/d/new")["rep"] == 2  # inherited from the parent
    assert fs.err("setrep", path="/d", rep=0) == "EINVAL"
    assert fs.err("setrep", path="/d", rep=17) == "EINVAL"
    assert fs.q("chunk_refs", chunk_ids=[cid(1)])["counts"] == [2]


def test_readdir_paging() -> None:
    fs = NS()
    names = [f"n{i:05d}" for i in range(2500)]
    for n in reversed(names):
        fs.ok("create", path="/" + n)
    got: list[str] = []
    after = None
    while True:
        r = fs.q("readdir", path="/", after=after, limit=1000)
        got += [e["name"] for e in r["entries"]]
        if not r["more"]:
            break
        after = got[-1]
    assert got == names
    # mutations between pages are reflected
    fs.ok("unlink", path="/n00001")
    fs.ok("create", path="/n00000a")
    r = fs.q("readdir", path="/", after="n00000", limit=2)
    assert [e["name"] for e in r["entries"]] == ["n00000a", "n00002"]
    assert r["entries"][0]["attrs"]["type"] == "file"
    r = fs.q("readdir", path="/", limit=10**9)
    assert len(r["entries"]) == min(2500, MAX_PAGE) and not r["more"]
    assert fs.q("readdir", path="/n00002")["code"] == "ENOTDIR"
    assert fs.q("readdir", path="/", limit=0)["code"] == "EINVAL"


def test_all_chunks_paging(fs: NS) -> None:
    ids = sorted(cid(i) for i in range(300))
    for i in range(300):
        fs.ok("commit", path=f"/f{i}", extents=[[cid(i), 1]])
    got: list[str] = []
    after = None
    while True:
        r = fs.q("all_chunks", after=after, limit=64)
        got += [c for c, _rep in r["chunks"]]
        if not r["more"]:
            break
        after = got[-1]
    assert got == ids
    fs.ok("unlink", path="/f0")
    r = fs.q("all_chunks", limit=1000)
    assert [c for c, _ in r["chunks"]] == sorted(cid(i) for i in range(1, 300))


def test_exactly_once() -> None:
    fs = NS()
    r1 = fs("create", client="c1", seq=1, path="/f")
    assert r1["ok"]
    snap = fs.ns.snapshot()
    r2 = fs("create", client="c1", seq=1, path="/f")  # a retry: same reply, no second apply
    assert r2 == r1
    assert fs.ns.snapshot() == snap
    assert fs.q("statfs")["files"] == 1
    # a failed request is remembered too
    e1 = fs("mkdir", client="c1", seq=2, path="/x/y")
    assert fs("mkdir", client="c1", seq=2, path="/x/y") == e1 and e1["code"] == "ENOENT"
    old = fs("create", client="c1", seq=1, path="/g")
    assert old["ok"] is False and old["code"] == "EOLDSEQ"
    assert fs.q("getattr", path="/g")["code"] == "ENOENT"
    # other clients are independent; no client means no dedup
    assert fs("create", client="c2", seq=1, path="/g")["ok"]
    assert fs("create", path="/h")["ok"]
    assert fs("create", path="/h")["code"] == "EEXIST"
    # a stored reply cannot be changed by the caller
    r = fs("create", client="c3", seq=9, path="/k")
    r["attrs"]["size"] = 99
    assert fs("create", client="c3", seq=9, path="/k")["attrs"]["size"] == 0


def test_sessions_expire_by_command_time() -> None:
    fs = NS(session_timeout_ns=1000)
    assert fs("create", client="a", seq=1, path="/f")["ok"]
    fs.ts += 500
    assert fs("create", client="b", seq=1, path="/g")["ok"]
    assert len(fs.ns.sessions) == 2
    fs.ts += 600  # a idle 1100 > 1000, b idle 600
    fs("statfs_is_not_a_mutation")  # unknown ops change nothing, not even sessions
    assert len(fs.ns.sessions) == 2
    fs("mkdir", path="/d")
    assert list(fs.ns.sessions.table) == ["b"]
    # after expiry the retry is applied again (documented limitation)
    assert fs("create", client="a", seq=1, path="/f")["code"] == "EEXIST"


def test_session_order_survives_restore() -> None:
    """Sessions stamped with equal times expire together on a replica and on a
    restored copy, even if the leader's clock stepped back."""
    fs = NS(session_timeout_ns=100)
    for c in ("z", "y", "x"):
        fs.ts = 5000
        fs.ns.apply({"op": "mkdir", "args": {"path": "/" + c}, "client": c, "seq": 1, "ts": 5000})
    fs.ns.apply({"op": "mkdir", "args": {"path": "/w"}, "client": "w", "seq": 1, "ts": 4990})
    other = Namespace.restore(fs.ns.snapshot())
    for ns in (fs.ns, other):
        ns.apply({"op": "mkdir", "args": {"path": "/q"}, "ts": 5101})
    assert fs.ns.snapshot() == other.snapshot()
    assert len(fs.ns.sessions) == 0


def test_snapshot_roundtrip_everything() -> None:
    fs = NS()
    fs.ok("mkdir", path="/a/b/c", parents=True)
    fs.ok("commit", path="/a/f", extents=[[cid(1), 10], [None, 5], [cid(2), 3]])
    fs.ok("commit", path="/a/b/g", extents=[[cid(1), 10]])
    fs.ok("link", src="/a/f", dst="/a/b/c/f-link")
    fs.ok("link", src="/a/f", dst="/z-link")
    fs.ok("symlink", target="/a/f", path="/a/s")
    fs.ok("mknod", path="/a/dev", mode=0o60600, rdev=(1 << 64) - 1)
    fs.ok("setxattr", path="/a/f", name="user.k", value=b"v")
    fs.ok("setxattr", path="/a", name="user.d", value=b"")
    fs.ok("setattr", path="/a/b/g", atime=1, mtime=2)
    fs.ok("setrep", path="/a/b", rep=7, recursive=True)
    fs.ok("gc_mark", chunk_ids=[cid(50), cid(51)])
    fs.ok("create", path="/u", client="cl", seq=3)
    fs.ok("mkdir", path="/ünï cødé")
    snap = fs.ns.snapshot()
    ns2 = Namespace.restore(snap)
    assert ns2.snapshot() == snap
    queries: list[tuple[str, dict]] = [
        ("statfs", {}),
        ("all_chunks", {}),
        ("chunk_refs", {"chunk_ids": [cid(1), cid(2), cid(50)]}),
        ("readlink", {"path": "/a/s"}),
        ("listxattr", {"path": "/a/b/c/f-link"}),
        ("getxattr", {"path": "/a", "name": "user.d"}),
    ]
    for d in ("/", "/a", "/a/b", "/a/b/c"):
        queries.append(("readdir", {"path": d}))
    for p in ("/a/f", "/a/b/g", "/z-link", "/a/b/c/f-link"):
        queries.append(("file_chunks", {"path": p}))
    for op, args in queries:
        assert ns2.query(op, args) == fs.ns.query(op, args), op
    assert ns2.refs.counts() == fs.ns.refs.counts()
    # the restored copy behaves the same from here on
    for ns in (fs.ns, ns2):
        assert ns.apply(
            {"op": "create", "args": {"path": "/u"}, "client": "cl", "seq": 3, "ts": 1}
        )["ok"]
        ns.apply({"op": "unlink", "args": {"path": "/a/f"}, "ts": 2_000_000})
        ns.apply({"op": "unlink", "args": {"path": "/z-link"}, "ts": 2_000_001})
        ns.apply({"op": "unlink", "args": {"path": "/a/b/c/f-link"}, "ts": 2_000_002})
        ns.apply({"op": "create", "args": {"path": "/new"}, "ts": 2_000_003})
    assert fs.ns.snapshot() == ns2.snapshot()
    assert ns2.query("getattr", {"path": "/new"})["attrs"]["ino"] == fs.attrs("/new")["ino"]


def test_restore_rejects_garbage() -> None:
    import zstandard

    with pytest.raises(ValueError):
        Namespace.restore(b"not a snapshot")
    with pytest.raises(ValueError):
        Namespace.restore(zstandard.ZstdCompressor().compress(b"\x80"))


def test_default_session_timeout_is_an_hour() -> None:
    assert DEFAULT_SESSION_TIMEOUT == 3600 * 10**9


def test_commit_carries_times() -> None:
    """tar/cp -p set the times right after writing: one commit does both."""
    from metadata.namespace import Namespace

    ns = Namespace()
    cid = "ab" * 32
    r = ns.apply(
        {
            "op": "commit",
            "args": {
                "path": "/f",
                "extents": [[cid, 10]],
                "mtime": 1_000_000_000,
                "atime": 2_000_000_000,
            },
            "client": None,
            "seq": None,
            "ts": 5_000_000_000,
        }
    )
    assert r["ok"] and r["attrs"]["mtime"] == 1_000_000_000
    assert r["attrs"]["atime"] == 2_000_000_000 and r["attrs"]["ctime"] == 5_000_000_000
    r = ns.apply(
        {
            "op": "commit",
            "args": {"path": "/f", "extents": [], "mtime": "now"},
            "client": None,
            "seq": None,
            "ts": 6_000_000_000,
        }
    )
    assert r["attrs"]["mtime"] == 6_000_000_000 and r["attrs"]["atime"] == 2_000_000_000
    bad = ns.apply(
        {
            "op": "commit",
            "args": {"path": "/f", "extents": [], "mtime": "yesterday"},
            "client": None,
            "seq": None,
            "ts": 7_000_000_000,
        }
    )
    assert not bad["ok"] and bad["code"] == "EINVAL"


def test_batch_applies_each_op_alone(fs: NS) -> None:
    """A batch is one log entry; each op succeeds or fails on its own, in order."""
    c = cid(7)
    r = fs.ok(
        "batch",
        ops=[
            {"op": "mkdir", "args": {"path": "/d"}},
            {"op": "commit", "args": {"path": "/d/a", "extents": [[c, 10]]}},
            {"op": "mkdir", "args": {"path": "/d"}},  # EEXIST: the others stand
            {"op": "commit", "args": {"path": "/nodir/b", "extents": []}},  # ENOENT
            {"op": "symlink", "args": {"target": "a", "path": "/d/l"}},
            {"op": "commit", "args": {"path": "/d/b", "extents": [[c, 10]], "mode": 0o600}},
        ],
    )
    codes = [x.get("code") if not x["ok"] else "ok" for x in r["results"]]
    assert codes == ["ok", "ok", "EEXIST", "ENOENT", "ok", "ok"]
    assert fs.attrs("/d/a")["size"] == 10 and fs.attrs("/d/b")["mode"] & 0o777 == 0o600
    assert fs.q("readlink", path="/d/l")["target"] == "a"
    assert fs.q("chunk_refs", chunk_ids=[c])["counts"] == [2]


def test_batch_exactly_once(fs: NS) -> None:
    ops = [{"op": "create", "args": {"path": f"/f{i}"}} for i in range(3)]
    first = fs("batch", client="c1", seq=1, ops=ops)
    again = fs("batch", client="c1", seq=1, ops=ops)  # a retry: the same reply, no re-run
    assert first == again and all(x["ok"] for x in first["results"])
    assert fs("create", path="/f0", exclusive=True)["code"] == "EEXIST"


@pytest.mark.parametrize(
    "ops, code",
    [
        ([], "EINVAL"),
        ("mkdir", "EINVAL"),
        ([{"op": "batch", "args": {"ops": []}}], "EINVAL"),  # no nesting
        ([{"op": "gc_expire", "args": {"before_ts": 1}}], "EINVAL"),  # GC is not a client op
        ([{"op": 3}], "EINVAL"),
        ([{"op": "create", "args": {"path": "/x"}}] * 5000, "E2BIG"),
    ],
)
def test_batch_bad_input(fs: NS, ops: Any, code: str) -> None:
    assert fs.err("batch", ops=ops) == code


def test_files_chunks(fs: NS) -> None:
    c = cid(9)
    fs.ok("mkdir", path="/d")
    fs.ok("commit", path="/d/a", extents=[[c, 5], [None, 3]])
    r = fs.q("files_chunks", paths=["/d/a", "/d/missing", "/d", "/d/../etc"])
    assert r["ok"]
    a, missing, d, bad = r["files"]
    assert a["extents"] == [[c, 5], [None, 3]] and a["size"] == 8
    assert (missing["code"], d["code"], bad["code"]) == ("ENOENT", "EISDIR", "EINVAL")
    assert fs.q("files_chunks", paths="/d/a")["code"] == "EINVAL"
    assert fs.q("files_chunks", paths=["/x"] * (MAX_PAGE + 1))["code"] == "E2BIG"
