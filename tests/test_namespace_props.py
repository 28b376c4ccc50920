"""Property tests: random operation sequences against a plain POSIX model.

The model below is a naive tree of Python objects written from POSIX (and
Linux's choice of error when several apply). Every step must agree with the
state machine on success and error code; afterwards the whole tree, the chunk
reference counts and the garbage set must agree, replicas that apply the same
log must have byte-identical snapshots, and a restored snapshot must be the
same state (same bytes, same answers), also when restored mid-log and driven
on from there.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfs import inline
from metadata.inodes import S_IFMT, S_IFREG, Dir
from metadata.namespace import Namespace

CHUNKS = [hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]


class Err(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class MDir:
    def __init__(self, rep: int) -> None:
        self.children: dict[str, Any] = {}
        self.rep = rep


class MFile:
    def __init__(self, exts: list[tuple[str | None, int]], rep: int) -> None:
        self.exts = exts
        self.inline = False  # content kept inline: to the model, zeros (no chunks)
        self.nlink = 1
        self.version = 1
        self.rep = rep

    @property
    def size(self) -> int:
        return sum(n for _c, n in self.exts)


class MSym:
    def __init__(self, target: str, rep: int) -> None:
        self.target = target
        self.rep = rep
        self.nlink = 1


def comps(path: str) -> list[str]:
    return [c for c in path.split("/") if c not in ("", ".")]


class Model:
    """POSIX semantics, the obvious way."""

    def __init__(self) -> None:
        self.root = MDir(3)
        self.ever: set[str] = set()  # chunks ever referenced: the rest of them is garbage

    def walk(self, cs: list[str]) -> Any:
        node: Any = self.root
        for c in cs:
            if not isinstance(node, MDir):
                raise Err("ENOTDIR")
            if c not in node.children:
                raise Err("ENOENT")
            node = node.children[c]
        return node

    def parent(self, path: str) -> tuple[MDir, str]:
        cs = comps(path)
        if not cs:
            return self.root, ""
        d = self.walk(cs[:-1])
        if not isinstance(d, MDir):
            raise Err("ENOTDIR")
        return d, cs[-1]

    def files(self) -> list[MFile]:
        out: dict[int, MFile] = {}
        stack = [self.root]
        while stack:
            d = stack.pop()
            for ch in d.children.values():
                if isinstance(ch, MDir):
                    stack.append(ch)
                elif isinstance(ch, MFile):
                    out[id(ch)] = ch
        return list(out.values())

    def refcounts(self) -> Counter:
        c: Counter = Counter()
        for f in self.files():
            for cid, _n in f.exts:
                if cid is not None:
                    c[cid] += 1
        return c

    @staticmethod
    def drop(node: Any) -> None:
        if not isinstance(node, MDir):
            node.nlink -= 1

    # -- operations: return the attrs subset to compare (or None), or raise Err --

    def mkdir(self, path: str, parents: bool) -> Any:
        cs = comps(path)
        if not cs:
            if parents:
                return None
            raise Err("EEXIST")
        if not parents:
            d, name = self.parent(path)
            if name in d.children:
                raise Err("EEXIST")
            d.children[name] = MDir(d.rep)
            return None
        node: Any = self.root
        for c in cs:
            if not isinstance(node, MDir):
                raise Err("ENOTDIR")
            if c not in node.children:
                node.children[c] = MDir(node.rep)
            node = node.children[c]
        if not isinstance(node, MDir):
            raise Err("EEXIST")
        return None

    def rmdir(self, path: str) -> Any:
        if path == "/":
            raise Err("EBUSY")
        d, name = self.parent(path)
        node = d.children.get(name)
        if node is None:
            raise Err("ENOENT")
        if not isinstance(node, MDir):
            raise Err("ENOTDIR")
        if node.children:
            raise Err("ENOTEMPTY")
        del d.children[name]

    def create(self, path: str, exclusive: bool) -> Any:
        d, name = self.parent(path)
        node = d.children.get(name) if name else d
        if node is not None:
            if exclusive:
                raise Err("EEXIST")
            if isinstance(node, MDir):
                raise Err("EISDIR")
            if not isinstance(node, MFile):
                raise Err("EEXIST")
            return node
        d.children[name] = f = MFile([], d.rep)
        return f

    def commit(self, path: str, exts: list, expect: int | None, inline: bool = False) -> Any:
        d, name = self.parent(path)
        node = d.children.get(name) if name else d
        if node is None:
            if expect not in (None, 0):
                raise Err("ESTALE")
            d.children[name] = f = MFile(list(exts), d.rep)
            f.inline = inline and bool(exts)
            self.ever.update(c for c, _n in exts if c)
            return f
        if isinstance(node, MDir):
            raise Err("EISDIR")
        if not isinstance(node, MFile):
            raise Err("EINVAL")
        if expect is not None and expect != node.version:
            raise Err("ESTALE")
        node.exts = list(exts)
        node.inline = inline and bool(exts)
        node.version += 1
        self.ever.update(c for c, _n in exts if c)
        return node

    def unlink(self, path: str) -> Any:
        if path == "/":
            raise Err("EISDIR")
        d, name = self.parent(path)
        node = d.children.get(name)
        if node is None:
            raise Err("ENOENT")
        if isinstance(node, MDir):
            raise Err("EISDIR")
        del d.children[name]
        self.drop(node)

    def rename(self, src: str, dst: str, noreplace: bool) -> Any:
        if src == "/" or dst == "/":
            raise Err("EBUSY")
        sd, sn = self.parent(src)
        dd, dn = self.parent(dst)
        if sn not in sd.children:
            raise Err("ENOENT")
        node = sd.children[sn]
        src, dst = "/" + "/".join(comps(src)), "/" + "/".join(comps(dst))
        if dst.startswith(src.rstrip("/") + "/") and src != "/":
            raise Err("EINVAL")
        target = dd.children.get(dn)
        if target is node:
            return None
        if target is not None:
            if noreplace:
                raise Err("EEXIST")
            if isinstance(node, MDir):
                if not isinstance(target, MDir):
                    raise Err("ENOTDIR")
                if target.children:
                    raise Err("ENOTEMPTY")
            elif isinstance(target, MDir):
                raise Err("EISDIR")
            self.drop(target)
        del sd.children[sn]
        dd.children[dn] = node

    def link(self, src: str, dst: str) -> Any:
        node = self.walk(comps(src))
        dd, dn = self.parent(dst)
        if not dn or dn in dd.children:
            raise Err("EEXIST")
        if isinstance(node, MDir):
            raise Err("EPERM")
        node.nlink += 1
        dd.children[dn] = node
        return node

    def symlink(self, target: str, path: str) -> Any:
        d, name = self.parent(path)
        if not name or name in d.children:
            raise Err("EEXIST")
        d.children[name] = s = MSym(target, d.rep)
        return s

    def truncate(self, path: str, size: int) -> Any:
        node = self.walk(comps(path))
        if isinstance(node, MDir):
            raise Err("EISDIR")
        if not isinstance(node, MFile):
            raise Err("EINVAL")
        old = node.size
        if size == old:
            return node
        if size > old:
            if node.exts and node.exts[-1][0] is None:
                node.exts[-1] = (None, node.exts[-1][1] + size - old)
            else:
                node.exts.append((None, size - old))
        else:
            out, left = [], size
            for c, n in node.exts:
                if left <= 0:
                    break
                out.append((c, min(n, left)))
                left -= min(n, left)
            node.exts = out
            if not size:
                node.inline = False  # nothing left to keep inline
        node.version += 1
        return node

    def setrep(self, path: str, rep: int, recursive: bool) -> Any:
        node = self.walk(comps(path))
        changed: set[int] = set()

        def set_one(n: Any) -> None:
            if n.rep != rep:
                n.rep = rep
                changed.add(id(n))

        set_one(node)
        if recursive and isinstance(node, MDir):
            stack = [node]
            while stack:
                d = stack.pop()
                for ch in d.children.values():
                    set_one(ch)
                    if isinstance(ch, MDir):
                        stack.append(ch)
        return len(changed)


# -- strategies ------------------------------------------------------------------

_NAMES = ["a", "b", "c"]
_P1 = [f"/{x}" for x in _NAMES]
_P2 = [f"{p}/{x}" for p in _P1 for x in _NAMES]
_P3 = [f"{p}/{x}" for p in _P2 for x in _NAMES[:2]]
# shallow paths more often, so that most operations find what they act on
_path = st.one_of(
    st.sampled_from(_P1),
    st.sampled_from(_P1),
    st.sampled_from(_P2),
    st.sampled_from(_P2),
    st.sampled_from(_P3),
    st.sampled_from(["/", "//a/./b/"]),
)
_exts = st.lists(
    st.tuples(st.sampled_from([*CHUNKS, None]), st.integers(1, 9)), min_size=0, max_size=3
)
_op = st.one_of(
    st.tuples(st.just("mkdir"), _path, st.booleans()),
    st.tuples(st.just("mkdir"), _path, st.just(True)),
    st.tuples(st.just("rmdir"), _path),
    st.tuples(st.just("create"), _path, st.booleans()),
    st.tuples(st.just("commit"), _path, _exts, st.sampled_from([None, None, 0, 1, 2])),
    st.tuples(st.just("commit"), _path, _exts, st.just(None)),
    st.tuples(st.just("commit_inline"), _path, st.binary(max_size=300), st.sampled_from([None, 0])),
    st.tuples(st.just("unlink"), _path),
    st.tuples(st.just("rename"), _path, _path, st.booleans()),
    st.tuples(st.just("rename"), _path, _path, st.just(False)),
    st.tuples(st.just("link"), _path, _path),
    st.tuples(st.just("symlink"), st.sampled_from(["x", "../a", "/b/c"]), _path),
    st.tuples(st.just("truncate"), _path, st.integers(0, 20)),
    st.tuples(st.just("setrep"), _path, st.integers(1, 4), st.booleans()),
    st.tuples(st.just("retry")),  # resend the previous command (same client and seq)
)


# a populated tree to start from, so that random operations find things to act on
PRELUDE: list[tuple] = [
    ("mkdir", "/a/b", True),
    ("mkdir", "/b", False),
    ("commit", "/c", [(CHUNKS[0], 5)], None),
    ("commit", "/a/a", [(CHUNKS[1], 3), (None, 2), (CHUNKS[0], 5)], None),
    ("link", "/c", "/a/c"),
    ("symlink", "x", "/b/c"),
]


def to_cmd(op: tuple, ts: int, seq: int) -> dict:
    name = op[0]
    if name == "mkdir":
        args: dict[str, Any] = {"path": op[1], "parents": op[2]}
    elif name in ("rmdir", "unlink"):
        args = {"path": op[1]}
    elif name == "create":
        args = {"path": op[1], "exclusive": op[2]}
    elif name == "commit":
        args = {"path": op[1], "extents": [list(e) for e in op[2]], "expect_version": op[3]}
    elif name == "commit_inline":
        name = "commit"
        args = {"path": op[1], "extents": [], "inline": inline.encode(op[2])}
        args["expect_version"] = op[3]
    elif name == "rename":
        args = {"src": op[1], "dst": op[2], "noreplace": op[3]}
    elif name == "link":
        args = {"src": op[1], "dst": op[2]}
    elif name == "symlink":
        args = {"target": op[1], "path": op[2]}
    elif name == "truncate":
        name, args = "setattr", {"path": op[1], "size": op[2]}
    elif name == "setrep":
        args = {"path": op[1], "rep": op[2], "recursive": op[3]}
    else:
        raise AssertionError(name)
    client = f"c{seq % 3}" if seq % 2 else None
    return {"op": name, "args": args, "client": client, "seq": seq if client else None, "ts": ts}


def run_model(m: Model, op: tuple) -> tuple[str | None, Any]:
    name = op[0]
    try:
        if name == "mkdir":
            return None, m.mkdir(op[1], op[2])
        if name == "rmdir":
            return None, m.rmdir(op[1])
        if name == "create":
            return None, m.create(op[1], op[2])
        if name == "commit":
            return None, m.commit(op[1], op[2], op[3])
        if name == "commit_inline":  # no chunks: to the model, a hole of its length
            return None, m.commit(op[1], [(None, len(op[2]))] if op[2] else [], op[3], True)
        if name == "unlink":
            return None, m.unlink(op[1])
        if name == "rename":
            return None, m.rename(op[1], op[2], op[3])
        if name == "link":
            return None, m.link(op[1], op[2])
        if name == "symlink":
            return None, m.symlink(op[1], op[2])
        if name == "truncate":
            return None, m.truncate(op[1], op[2])
        if name == "setrep":
            return None, m.setrep(op[1], op[2], op[3])
    except Err as e:
        return e.code, None
    raise AssertionError(name)


# -- checks ----------------------------------------------------------------------


def compare_result(op: tuple, r: dict, code: str | None, obj: Any) -> None:
    assert r["ok"] == (code is None), (op, r, code)
    if code is not None:
        assert r["code"] == code, (op, r, code)
        return
    if op[0] == "setrep":
        assert r["changed"] == obj, (op, r, obj)
    elif isinstance(obj, MFile):
        a = r["attrs"]
        assert (a["type"], a["size"], a["nlink"], a["version"], a["rep"]) == (
            "file",
            obj.size,
            obj.nlink,
            obj.version,
            obj.rep,
        ), (op, r)
    elif isinstance(obj, MSym):
        assert r["attrs"]["type"] == "symlink" and r["attrs"]["size"] == len(obj.target)


def compare_tree(m: Model, ns: Namespace) -> None:
    inos: dict[int, int] = {}  # id(model object) -> ino
    seen_ino: dict[int, int] = {}

    def same_identity(obj: Any, ino: int) -> None:
        assert inos.setdefault(id(obj), ino) == ino
        assert seen_ino.setdefault(ino, id(obj)) == id(obj)

    stack: list[tuple[str, MDir]] = [("/", m.root)]
    while stack:
        path, d = stack.pop()
        r = ns.query("readdir", {"path": path, "limit": 10_000})
        assert r["ok"] and not r["more"]
        got = {e["name"]: e["attrs"] for e in r["entries"]}
        assert list(got) == sorted(d.children), path
        da = ns.query("getattr", {"path": path})["attrs"]
        subdirs = sum(isinstance(c, MDir) for c in d.children.values())
        assert da["nlink"] == 2 + subdirs and da["rep"] == d.rep and da["size"] == len(got)
        for name, ch in d.children.items():
            p = path.rstrip("/") + "/" + name
            a = got[name]
            same_identity(ch, a["ino"])
            assert a["rep"] == ch.rep, p
            if isinstance(ch, MDir):
                assert a["type"] == "dir"
                stack.append((p, ch))
            elif isinstance(ch, MSym):
                assert a["type"] == "symlink" and a["nlink"] == ch.nlink
                assert ns.query("readlink", {"path": p})["target"] == ch.target
            else:
                assert (a["type"], a["size"], a["nlink"], a["version"]) == (
                    "file",
                    ch.size,
                    ch.nlink,
                    ch.version,
                ), p
                fc = ns.query("file_chunks", {"path": p})
                if ch.inline:  # no extents: content and zeros past it, all inline
                    assert fc["extents"] == [] and len(inline.decode(fc["inline"])) <= ch.size
                else:
                    assert fc["extents"] == [[c, n] for c, n in ch.exts] and "inline" not in fc, p


def recount(ns: Namespace) -> Counter:
    """Chunk references recounted from the files themselves (each inode once)."""
    c: Counter = Counter()
    seen: set[int] = set()
    stack = [ns.root]
    while stack:
        d = stack.pop()
        for ch in d.entries.values():
            if type(ch) is Dir:
                stack.append(ch)
            elif ch.meta[0] & S_IFMT == S_IFREG and ch.ino not in seen:
                seen.add(ch.ino)
                for cid, _n in ch.extents():
                    if cid is not None:
                        c[cid.hex()] += 1
    return c


def check_refs(m: Model, ns: Namespace) -> None:
    want = recount(ns)
    have = Counter({k.hex(): v for k, v in ns.refs.counts().items()})
    assert have == want
    assert want == m.refcounts()
    st_ = ns.query("statfs", {})
    assert st_["chunks"] == len(want) and st_["chunk_refs"] == sum(want.values())
    garbage = {c.hex() for c in ns.refs.garbage}
    assert garbage == m.ever - set(want)
    files = m.files()
    assert st_["files"] == len(files)
    assert st_["logical_bytes"] == sum(f.size for f in files)
    assert st_["inline_files"] == sum(f.inline for f in files)
    assert st_["referenced_bytes"] == sum(n for f in files for c, n in f.exts if c)


def query_answers(ns: Namespace) -> list:
    out: list = [ns.query("statfs", {}), ns.query("all_chunks", {"limit": 100})]
    stack = ["/"]
    while stack:
        p = stack.pop()
        r = ns.query("readdir", {"path": p, "limit": 10_000})
        out.append(r)
        for e in r["entries"]:
            q = p.rstrip("/") + "/" + e["name"]
            if e["attrs"]["type"] == "dir":
                stack.append(q)
            elif e["attrs"]["type"] == "file":
                out.append(ns.query("file_chunks", {"path": q}))
            else:
                out.append(ns.query("readlink", {"path": q}))
    return out


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=st.lists(_op, min_size=10, max_size=100), restore_at=st.integers(0, 100))
def test_random_ops_match_posix_model(ops: list[tuple], restore_at: int) -> None:
    m = Model()
    ns = Namespace()
    log: list[dict] = []
    replies: list[dict] = []
    midway: Namespace | None = None
    midway_at = 0
    last: tuple[dict, dict] | None = None
    ts = 1_000
    ops = PRELUDE + ops
    for i, op in enumerate(ops):
        if i == restore_at:
            midway = Namespace.restore(ns.snapshot())
            midway_at = len(log)
        if op[0] == "retry":
            if last is None or last[0]["client"] is None:
                continue
            before = ns.snapshot()
            r = ns.apply(last[0])
            assert r == last[1], "a retried command must get the stored reply"
            assert ns.snapshot() == before, "a retried command must not apply again"
            log.append(last[0])
            replies.append(r)
            continue
        ts += 1
        cmd = to_cmd(op, ts, i + 1)
        code, obj = run_model(m, op)
        r = ns.apply(cmd)
        compare_result(op, r, code, obj)
        log.append(cmd)
        replies.append(r)
        last = (cmd, r)
        check_refs(m, ns)
    compare_tree(m, ns)

    snap = ns.snapshot()
    # a second replica applying the same log ends byte-identical, with the same replies
    other = Namespace()
    assert [other.apply(c) for c in log] == replies
    assert other.snapshot() == snap
    # a restored snapshot is the same state
    restored = Namespace.restore(snap)
    assert restored.snapshot() == snap
    assert query_answers(restored) == query_answers(ns)
    assert Counter({k.hex(): v for k, v in restored.refs.counts().items()}) == recount(restored)
    assert restored.refs.garbage == ns.refs.garbage
    # restored mid-log and driven on with the rest of the log: same end state
    if midway is not None:
        for c in log[midway_at:]:
            midway.apply(c)
        assert midway.snapshot() == snap


_dir_op = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 40)),
    st.tuples(st.just("unlink"), st.integers(0, 40)),
    st.tuples(st.just("rename"), st.integers(0, 40), st.integers(0, 40)),
    st.tuples(st.just("page"), st.integers(-1, 40), st.integers(1, 7)),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_dir_op, min_size=1, max_size=120))
def test_readdir_pages_track_mutations(ops: list[tuple]) -> None:
    """Paged listings stay right while the directory changes between pages
    (the sorted index is patched, or rebuilt, underneath)."""
    ns = Namespace()
    names: set[str] = set()
    ts = 1
    for op in ops:
        ts += 1
        if op[0] == "create":
            n = f"f{op[1]:02d}"
            r = ns.apply({"op": "create", "args": {"path": "/" + n}, "ts": ts})
            assert r["ok"] == (n not in names)
            names.add(n)
        elif op[0] == "unlink":
            n = f"f{op[1]:02d}"
            r = ns.apply({"op": "unlink", "args": {"path": "/" + n}, "ts": ts})
            assert r["ok"] == (n in names)
            names.discard(n)
        elif op[0] == "rename":
            a, b = f"f{op[1]:02d}", f"f{op[2]:02d}"
            r = ns.apply({"op": "rename", "args": {"src": "/" + a, "dst": "/" + b}, "ts": ts})
            assert r["ok"] == (a in names)
            if a in names:
                names.discard(a)
                names.add(b)
        else:
            after = None if op[1] < 0 else f"f{op[1]:02d}"
            r = ns.query("readdir", {"path": "/", "after": after, "limit": op[2]})
            want = sorted(n for n in names if after is None or n > after)
            assert [e["name"] for e in r["entries"]] == want[: op[2]]
            assert r["more"] == (len(want) > op[2])


@settings(max_examples=100, deadline=None)
@given(
    start=st.sets(st.integers(0, 3000), max_size=300),
    changes=st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=400),
    after=st.none() | st.integers(-1, 3001),
    limit=st.integers(1, 50),
)
def test_sorted_index_patch_and_rebuild(
    start: set[int], changes: list[tuple[bool, int]], after: int | None, limit: int
) -> None:
    from metadata.sortedindex import SortedIndex

    src = set(start)
    idx = SortedIndex(src)
    for add, k in changes:
        if add and k not in src:
            src.add(k)
            idx.add(k)
        elif not add and k in src:
            src.discard(k)
            idx.discard(k)
    got, more = idx.page(after, limit, lambda: src)
    want = sorted(k for k in src if after is None or k > after)
    assert got == want[:limit] and more == (len(want) > limit)
    assert idx.keys == sorted(src)
