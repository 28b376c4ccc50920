"""The metadata namespace: a deterministic state machine replicated by Raft.

apply(cmd) runs one logged mutation; query(op, args) answers reads. Both take
plain msgpack-able dicts and never raise for bad input: every argument is
checked (type, range, path rules) before anything changes, and a bad request
gets {"ok": False, "code": ..., "msg": ...} with the state untouched.

Determinism: apply() reads no clock and no randomness; time comes from the
leader-stamped cmd["ts"]. Results and snapshots never depend on dict or set
iteration order (listings are sorted).

Paths are resolved without following symlinks; a symlink in the middle of a
path gives ENOTDIR (the kernel, or the client library, resolves links).
Error precedence (what wins when several apply) follows Linux: the parents of
the paths are resolved first (ENOENT, ENOTDIR), then the entries themselves.
MUTATIONS and QUERIES below list every op's arguments and defaults; each
_op_<name> method's docstring says what it returns.

Exactly once: a command with both "client" and "seq" is deduplicated (see
sessions.py): a repeat of the client's last seq returns the stored reply, an
older seq gets code EOLDSEQ, and sessions idle for session_timeout_ns of
command time are forgotten.

Chunk references: every chunk extent of every file inode counts once (a chunk
used twice in one file counts twice; hard links share the inode's count).
"""

from __future__ import annotations

import re
from typing import Any

import msgpack

from dfs import inline as inline_codec
from dfs import paths
from dfs.errors import DfsError
from metadata.chunkrefs import ChunkRefs
from metadata.inodes import (
    M_GID,
    M_MODE,
    M_NLINK,
    M_REP,
    M_UID,
    S_IFBLK,
    S_IFCHR,
    S_IFDIR,
    S_IFIFO,
    S_IFLNK,
    S_IFMT,
    S_IFREG,
    S_IFSOCK,
    SPECIAL_TYPES,
    TYPE_NAMES,
    Dir,
    Inline,
    Inode,
    meta,
    pack_extents,
    small,
    truncate_extents,
    unpack_extents,
)
from metadata.sessions import OLD_SEQ, Sessions
from metadata.sortedindex import SortedIndex

ROOT_INO = 1
DEFAULT_REP = 3
MAX_REP = 16
MAX_FILE_SIZE = 1 << 60  # bytes; larger sizes get EFBIG
MAX_CHUNK_LEN = 64 << 20  # bytes of one chunk extent (as dfs.wire.MAX_CHUNK_BYTES)
MAX_EXTENTS = 1 << 20  # extents in one commit
MAX_IDS = 100_000  # chunk ids in one request
MAX_BATCH = 4096  # ops in one batch (one log entry)
MAX_XATTR_NAME = 255  # bytes
MAX_XATTR_VALUE = 64 << 10  # bytes
MAX_XATTRS = 1024  # names per inode
MAX_NLINK = 65000
MAX_SYMLINK = paths.PATH_MAX  # bytes of a symlink target
MAX_CLIENT = 256  # characters of a client id
MAX_PAGE = 10_000  # entries in one readdir / all_chunks page (larger limits are clamped)
# Small files' inline content is in every metadata node's RAM: past this many
# bytes of it (counted at content length, see dfs.inline.charge), commits of
# inline content get ENOSPC and clients store chunks instead. The default of a
# new namespace; `dfs-admin limits` changes it through the log (set_limits), so
# every replica decides alike.
INLINE_BUDGET = 1 << 30
INLINE_REPLY_BUDGET = 1 << 20  # inline bytes in one files_chunks reply (under the header limit)
DEFAULT_SESSION_TIMEOUT = 3600 * 10**9  # ns
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
XATTR_CREATE, XATTR_REPLACE = 1, 2
NOW = "now"

_HEX64 = re.compile(r"[0-9a-f]{64}")


# -- argument checkers ----------------------------------------------------------
# Each takes (arg name, value) and returns the parsed value or raises DfsError.


def _bad(name: str, what: str, v: Any) -> DfsError:
    return DfsError("EINVAL", f"{name} must be {what}, got {type(v).__name__} {str(v)[:80]!r}")


def _int(lo: int, hi: int, over: str = "EINVAL") -> Any:
    def check(name: str, v: Any) -> int:
        if type(v) is not int:
            raise _bad(name, "an integer", v)
        if v < lo:
            raise DfsError("EINVAL", f"{name} must be >= {lo}, got {v}")
        if v > hi:
            raise DfsError(over, f"{name} must be <= {hi}, got {v}")
        return v

    return check


def _bool(name: str, v: Any) -> bool:
    if type(v) is not bool:
        raise _bad(name, "a boolean", v)
    return v


def _path(name: str, v: Any) -> str:
    try:
        return paths.normalize(v)
    except DfsError as e:
        raise DfsError(e.code, f"{name}: {e.message}")


def _time(name: str, v: Any) -> int | str:
    if v == NOW and type(v) is str:
        return NOW
    if type(v) is not int or not I64_MIN <= v <= I64_MAX:
        raise _bad(name, 'a 64-bit time in ns or "now"', v)
    return v


def _utf8(name: str, v: Any, limit: int, too_long: str) -> str:
    """A non-empty UTF-8 string without NUL of at most ``limit`` bytes."""
    if type(v) is not str or not v:
        raise _bad(name, "a non-empty string", v)
    if "\0" in v:
        raise DfsError("EINVAL", f"{name} contains a NUL byte")
    try:
        n = len(v.encode("utf-8"))
    except UnicodeEncodeError:
        raise DfsError("EINVAL", f"{name} is not valid UTF-8")
    if n > limit:
        raise DfsError(too_long, f"{name} longer than {limit} bytes")
    return v


def _target(name: str, v: Any) -> str:
    return _utf8(name, v, MAX_SYMLINK, "ENAMETOOLONG")


def _xname(name: str, v: Any) -> str:
    return _utf8(name, v, MAX_XATTR_NAME, "ERANGE")


def _xvalue(name: str, v: Any) -> bytes:
    if type(v) is not bytes:
        raise _bad(name, "bytes", v)
    if len(v) > MAX_XATTR_VALUE:
        raise DfsError("E2BIG", f"{name} longer than {MAX_XATTR_VALUE} bytes")
    return v


def _after(name: str, v: Any) -> str:
    if type(v) is not str or len(v) > 4 * paths.NAME_MAX:
        raise _bad(name, "a name string", v)
    return v


def _limit(name: str, v: Any) -> int:
    if type(v) is not int or v < 1:
        raise _bad(name, "a positive integer", v)
    return min(v, MAX_PAGE)


def _client(name: str, v: Any) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_CLIENT:
        raise _bad(name, f"a string of 1..{MAX_CLIENT} characters", v)
    return v


def chunk_id(name: str, v: Any) -> bytes:
    """Parse a wire chunk id: exactly 64 lowercase hex characters."""
    if type(v) is not str or len(v) != 64 or not _HEX64.fullmatch(v):
        raise _bad(name, "a chunk id (64 lowercase hex characters)", v)
    return bytes.fromhex(v)


def _chunk_ids(name: str, v: Any) -> list[bytes]:
    if type(v) not in (list, tuple):
        raise _bad(name, "a list of chunk ids", v)
    if len(v) > MAX_IDS:
        raise DfsError("E2BIG", f"{name}: more than {MAX_IDS} chunk ids")
    return [chunk_id(f"{name}[{i}]", x) for i, x in enumerate(v)]


def _paths(name: str, v: Any) -> list[Any]:
    """A list of up to MAX_PAGE paths; each is checked when it is looked up, so one
    bad path fails alone."""
    if type(v) not in (list, tuple):
        raise _bad(name, "a list of paths", v)
    if len(v) > MAX_PAGE:
        raise DfsError("E2BIG", f"{name}: more than {MAX_PAGE} paths")
    return list(v)


def _chunk_id_after(name: str, v: Any) -> bytes:
    return chunk_id(name, v)


def _inline(name: str, v: Any) -> tuple[Inline, int]:
    """A dfs.inline blob, checked by decoding it: (the blob, its content's length)."""
    if type(v) is not bytes:
        raise _bad(name, "bytes (an inline content blob)", v)
    try:
        n = len(inline_codec.decode(v))
    except DfsError as e:
        raise DfsError(e.code, f"{name}: {e.message}") from None
    return Inline(v), n


def _extents(name: str, v: Any) -> list[tuple[bytes | None, int]]:
    if type(v) not in (list, tuple):
        raise _bad(name, "a list of [chunk id or None, length] pairs", v)
    if len(v) > MAX_EXTENTS:
        raise DfsError("E2BIG", f"{name}: more than {MAX_EXTENTS} extents")
    out: list[tuple[bytes | None, int]] = []
    total = 0
    for i, e in enumerate(v):
        if type(e) not in (list, tuple) or len(e) != 2:
            raise _bad(f"{name}[{i}]", "a [chunk id or None, length] pair", e)
        cid_hex, n = e
        if cid_hex is None:
            cid = None
            n = _int(1, MAX_FILE_SIZE, "EFBIG")(f"{name}[{i}] hole length", n)
        else:
            cid = chunk_id(f"{name}[{i}] chunk id", cid_hex)
            n = _int(1, MAX_CHUNK_LEN)(f"{name}[{i}] length", n)
        total += n
        if total > MAX_FILE_SIZE:
            raise DfsError("EFBIG", f"{name}: file larger than {MAX_FILE_SIZE} bytes")
        out.append((cid, n))
    return out


# what a client may group into one "batch" log entry: namespace changes, not GC
BATCHABLE = frozenset(
    {"mkdir", "create", "commit", "symlink", "mknod", "setattr", "setxattr", "link", "unlink"}
)


def _batch_ops(name: str, v: Any) -> list[tuple[str, Any]]:
    """[{"op": name, "args": map}, ...]: each op's own arguments are checked when it
    runs, so one bad op fails alone."""
    if type(v) not in (list, tuple):
        raise _bad(name, "a list of {op, args} maps", v)
    if not 0 < len(v) <= MAX_BATCH:
        raise DfsError("E2BIG" if v else "EINVAL", f"{name}: 1..{MAX_BATCH} ops")
    out = []
    for i, e in enumerate(v):
        if type(e) is not dict or type(e.get("op")) is not str:
            raise _bad(f"{name}[{i}]", "an {op, args} map", e)
        if e["op"] not in BATCHABLE:
            raise DfsError("EINVAL", f"{name}[{i}]: {e['op'][:40]!r} cannot be batched")
        out.append((e["op"], e.get("args")))
    return out


_MODE = _int(0, 0o177777)
_ID = _int(0, (1 << 32) - 1)
_SIZE = _int(0, MAX_FILE_SIZE, "EFBIG")
_REP = _int(1, MAX_REP)
_TS = _int(0, I64_MAX)
_SEQ = _int(0, I64_MAX)
_RDEV = _int(0, (1 << 64) - 1)
_XFLAGS = _int(0, 3)
_VERSION = _int(0, I64_MAX)

REQ = object()  # marks a required argument

# op -> {arg: (checker, default)}; None as a value means "not given" for optional args
MUTATIONS: dict[str, dict[str, tuple[Any, Any]]] = {
    "mkdir": {
        "path": (_path, REQ),
        "mode": (_MODE, 0o755),
        "uid": (_ID, 0),
        "gid": (_ID, 0),
        "parents": (_bool, False),
    },
    "rmdir": {"path": (_path, REQ)},
    "create": {
        "path": (_path, REQ),
        "mode": (_MODE, 0o644),
        "uid": (_ID, 0),
        "gid": (_ID, 0),
        "exclusive": (_bool, True),
    },
    "unlink": {"path": (_path, REQ)},
    "rename": {"src": (_path, REQ), "dst": (_path, REQ), "noreplace": (_bool, False)},
    "link": {"src": (_path, REQ), "dst": (_path, REQ)},
    "symlink": {"target": (_target, REQ), "path": (_path, REQ), "uid": (_ID, 0), "gid": (_ID, 0)},
    "mknod": {
        "path": (_path, REQ),
        "mode": (_MODE, REQ),
        "rdev": (_RDEV, 0),
        "uid": (_ID, 0),
        "gid": (_ID, 0),
    },
    "setattr": {
        "path": (_path, REQ),
        "mode": (_MODE, None),
        "uid": (_ID, None),
        "gid": (_ID, None),
        "atime": (_time, None),
        "mtime": (_time, None),
        "size": (_SIZE, None),
    },
    "setxattr": {
        "path": (_path, REQ),
        "name": (_xname, REQ),
        "value": (_xvalue, REQ),
        "flags": (_XFLAGS, 0),
    },
    "removexattr": {"path": (_path, REQ), "name": (_xname, REQ)},
    "setrep": {"path": (_path, REQ), "rep": (_REP, REQ), "recursive": (_bool, False)},
    "commit": {
        "path": (_path, REQ),
        "extents": (_extents, REQ),
        "size": (_SIZE, None),
        "mode": (_MODE, 0o644),
        "uid": (_ID, 0),
        "gid": (_ID, 0),
        "create": (_bool, True),
        "expect_version": (_VERSION, None),
        "atime": (_time, None),
        "mtime": (_time, None),
        "inline": (_inline, None),
    },
    "batch": {"ops": (_batch_ops, REQ)},
    "set_limits": {"inline_budget": (_int(0, I64_MAX), None)},
    "gc_mark": {"chunk_ids": (_chunk_ids, REQ), "ts": (_TS, None)},
    "gc_expire": {"before_ts": (_TS, REQ), "limit": (_int(1, MAX_IDS), MAX_IDS)},
}

QUERIES: dict[str, dict[str, tuple[Any, Any]]] = {
    "getattr": {"path": (_path, REQ)},
    "lookup": {"path": (_path, REQ)},
    "readdir": {"path": (_path, REQ), "after": (_after, None), "limit": (_limit, 1000)},
    "readlink": {"path": (_path, REQ)},
    "getxattr": {"path": (_path, REQ), "name": (_xname, REQ)},
    "listxattr": {"path": (_path, REQ)},
    "statfs": {},
    "file_chunks": {"path": (_path, REQ), "content": (_bool, True)},
    "files_chunks": {"paths": (_paths, REQ), "content": (_bool, True)},
    "exists": {"chunk_ids": (_chunk_ids, REQ)},
    "chunk_refs": {"chunk_ids": (_chunk_ids, None)},
    "all_chunks": {"after": (_chunk_id_after, None), "limit": (_limit, 1000)},
}


_DEFAULTS = {
    op: {k: d for k, (_c, d) in spec.items()}
    for table in (MUTATIONS, QUERIES)
    for op, spec in table.items()
}
_REQUIRED = {
    op: [k for k, (_c, d) in spec.items() if d is REQ]
    for table in (MUTATIONS, QUERIES)
    for op, spec in table.items()
}


def _parse(op: str, spec: dict[str, tuple[Any, Any]], args: Any) -> dict[str, Any]:
    """Check every argument of op; None stands for "not given"."""
    out = dict(_DEFAULTS[op])
    if args is not None:
        if type(args) is not dict:
            raise _bad("args", "a map", args)
        for k, v in args.items():
            ent = spec.get(k) if type(k) is str else None
            if ent is None:
                raise DfsError("EINVAL", f"unknown argument {str(k)[:40]!r}")
            if v is not None:
                out[k] = ent[0](k, v)
    for k in _REQUIRED[op]:
        if out[k] is REQ:
            raise DfsError("EINVAL", f"missing argument {k!r}")
    return out


def _hex(cid: bytes | None) -> str | None:
    return None if cid is None else cid.hex()


def _err(e: DfsError) -> dict[str, Any]:
    return {"ok": False, "code": e.code, "msg": e.message}


_PACK = msgpack.Packer(use_bin_type=True)


class Namespace:
    """The whole namespace state: the tree, chunk references, garbage, sessions."""

    def __init__(self, session_timeout_ns: int = DEFAULT_SESSION_TIMEOUT) -> None:
        self.root = Dir(ROOT_INO, meta(S_IFDIR | 0o755, 0, 0, DEFAULT_REP, 2), 0, 1)
        self.next_ino = ROOT_INO + 1
        self.refs = ChunkRefs()
        self.sessions = Sessions(session_timeout_ns)
        self.xattrs: dict[int, dict[str, bytes]] = {}  # ino -> name -> value
        self.n_files = 0
        self.n_dirs = 1
        self.n_symlinks = 0
        self.n_specials = 0
        self.logical_bytes = 0  # sum of regular file sizes (per inode)
        self.inline_files = 0  # regular files whose content is inline
        self.inline_bytes = 0  # their content's bytes, as charged (see inline.charge)
        self.inline_budget = INLINE_BUDGET

    # == entry points ==============================================================

    def apply(self, cmd: Any) -> dict[str, Any]:
        """Apply one committed log command; never raises for bad input."""
        try:
            if type(cmd) is not dict:
                raise _bad("command", "a map", cmd)
            op = cmd.get("op")
            ts = _TS("ts", cmd.get("ts"))
            client = cmd.get("client")
            seq = cmd.get("seq")
            if client is not None:
                client = _client("client", client)
            if seq is not None:
                seq = _SEQ("seq", seq)
            if type(op) is not str or op not in MUTATIONS:
                raise DfsError("ENOSYS", f"unknown operation {str(op)[:40]!r}")
        except DfsError as e:
            return _err(e)
        sessions = self.sessions
        now = sessions.now(ts)
        if sessions.table:
            sessions.expire(now)
        track = client is not None and seq is not None
        if track:
            got = sessions.lookup(client, seq)
            if got == OLD_SEQ:
                return {
                    "ok": False,
                    "code": OLD_SEQ,
                    "msg": f"seq {seq} is older than this client's last request",
                }
            if got is not None:
                return msgpack.unpackb(got, raw=False)
        result = self._run(MUTATIONS, op, cmd.get("args"), ts)
        if track:
            sessions.record(client, seq, now, _PACK.pack(result))
        return result

    def query(self, op: Any, args: Any = None) -> dict[str, Any]:
        """Answer a read; never raises for bad input and changes no state."""
        if type(op) is not str or op not in QUERIES:
            return _err(DfsError("ENOSYS", f"unknown query {str(op)[:40]!r}"))
        return self._run(QUERIES, op, args, None)

    def _run(self, table: dict, op: str, args: Any, ts: int | None) -> dict[str, Any]:
        try:
            a = _parse(op, table[op], args)
            return getattr(self, "_op_" + op)(a, ts)
        except DfsError as e:
            return _err(e)
        except Exception as e:  # a bug; deterministic, so every replica does the same
            return _err(DfsError("EIO", f"internal error in {op}: {type(e).__name__}: {e}"))

    # == snapshots =================================================================

    def snapshot(self) -> bytes:
        from metadata.ns_snapshot import dump

        return dump(self)

    @classmethod
    def restore(cls, data: bytes) -> Namespace:
        from metadata.ns_snapshot import load

        return load(cls, data)

    # == helpers ===================================================================

    def _walk(self, comps: list[str]) -> Inode:
        node: Inode = self.root
        for c in comps:
            if type(node) is not Dir:
                raise DfsError("ENOTDIR", f"{c!r}: a path component is not a directory")
            child = node.entries.get(c)
            if child is None:
                raise DfsError("ENOENT", f"no such file or directory: {c!r}")
            node = child
        return node

    def _lookup(self, path: str) -> Inode:
        try:
            return self._walk(paths.components(path))
        except DfsError as e:
            raise DfsError(e.code, f"{path}: {e.message}")

    def _parent(self, path: str) -> tuple[Dir, str]:
        """The directory that holds path's last component, and that name."""
        comps = paths.components(path)
        if not comps:
            return self.root, ""
        try:
            d = self._walk(comps[:-1])
        except DfsError as e:
            raise DfsError(e.code, f"{path}: {e.message}")
        if type(d) is not Dir:
            raise DfsError("ENOTDIR", f"{path}: parent is not a directory")
        return d, comps[-1]

    def attrs(self, node: Inode) -> dict[str, Any]:
        mode, uid, gid, rep, nlink = node.meta
        a, m, c = node.get_times()
        t = mode & S_IFMT
        return {
            "ino": node.ino,
            "type": TYPE_NAMES.get(t, "unknown"),
            "mode": mode,
            "uid": uid,
            "gid": gid,
            "size": len(node.entries) if t == S_IFDIR else node.size,
            "nlink": nlink,
            "atime": a,
            "mtime": m,
            "ctime": c,
            "rdev": node.data if t in SPECIAL_TYPES else 0,
            "rep": rep,
            "version": node.version,
        }

    def _new_ino(self) -> int:
        ino = self.next_ino
        self.next_ino += 1
        return ino

    def _add_entry(self, d: Dir, name: str, node: Inode, ts: int) -> None:
        d.entries[name] = node
        if d.index is not None:
            d.index.add(name)
            if d.index.too_stale():
                d.index = None
        if type(node) is Dir:
            d.set_meta(nlink=d.meta[M_NLINK] + 1)
        d.touch(ts)
        d.version += 1

    def _remove_entry(self, d: Dir, name: str, ts: int) -> Inode:
        node = d.entries.pop(name)
        if d.index is not None:
            d.index.discard(name)
            if d.index.too_stale():
                d.index = None
        if type(node) is Dir:
            d.set_meta(nlink=d.meta[M_NLINK] - 1)
        d.touch(ts)
        d.version += 1
        return node

    def _drop_link(self, node: Inode, ts: int) -> None:
        """One name of node went away: count down, and free it at zero."""
        if type(node) is Dir:
            self.n_dirs -= 1
            self.xattrs.pop(node.ino, None)
            return
        nlink = node.meta[M_NLINK] - 1
        if nlink > 0:
            node.set_meta(nlink=nlink)
            node.touch(ts, mtime=False)
            return
        node.set_meta(nlink=0)
        self.xattrs.pop(node.ino, None)
        t = node.meta[M_MODE] & S_IFMT
        if t == S_IFREG:
            self.refs.drop_file(node.data, node.size, node.meta[M_REP], ts)
            self._count_inline(node.data, -1)
            self.n_files -= 1
            self.logical_bytes -= node.size
        elif t == S_IFLNK:
            self.n_symlinks -= 1
        else:
            self.n_specials -= 1

    def _count_inline(self, data: Any, sign: int) -> None:
        """Keep inline_files / inline_bytes in step as inline content comes and goes."""
        if type(data) is Inline:
            self.inline_files += sign
            self.inline_bytes += sign * inline_codec.charge(data)

    def _new_inode(
        self, d: Dir, name: str, mode: int, uid: int, gid: int, ts: int, data: Any, size: int = 0
    ) -> Inode:
        """Make a file, symlink or special inode and link it as d/name."""
        node = Inode(self._new_ino(), meta(mode, uid, gid, d.meta[M_REP], 1), size, ts, 1, data)
        t = mode & S_IFMT
        if t == S_IFREG:
            self.n_files += 1
            self.logical_bytes += size
            self.refs.add_file(data, size, d.meta[M_REP])
            self._count_inline(data, 1)
        elif t == S_IFLNK:
            self.n_symlinks += 1
        else:
            self.n_specials += 1
        self._add_entry(d, name, node, ts)
        return node

    def _new_dir(self, d: Dir, name: str, mode: int, uid: int, gid: int, ts: int) -> Dir:
        node = Dir(self._new_ino(), meta(S_IFDIR | mode, uid, gid, d.meta[M_REP], 2), ts, 1)
        self.n_dirs += 1
        self._add_entry(d, name, node, ts)
        return node

    @staticmethod
    def _perm(mode: int, want_type: int, what: str) -> int:
        t = mode & S_IFMT
        if t and t != want_type:
            raise DfsError("EINVAL", f"mode {mode:o} has the wrong file type for {what}")
        return mode & 0o7777

    # == mutations =================================================================

    def _op_mkdir(self, a: dict, ts: int) -> dict:
        """mkdir(path, mode=0o755, uid=0, gid=0, parents=False) -> attrs.
        EEXIST if path exists (with parents=True only if it is not a directory)."""
        path = a["path"]
        perm = self._perm(a["mode"], S_IFDIR, "mkdir")
        comps = paths.components(path)
        if not comps:
            if a["parents"]:
                return {"ok": True, "attrs": self.attrs(self.root)}
            raise DfsError("EEXIST", "/: file exists")
        if not a["parents"]:
            d, name = self._parent(path)
            if name in d.entries:
                raise DfsError("EEXIST", f"{path}: file exists")
            node = self._new_dir(d, name, perm, a["uid"], a["gid"], ts)
            return {"ok": True, "attrs": self.attrs(node)}
        # parents: find the deepest existing prefix, check it, then create the rest
        node: Inode = self.root
        i = 0
        while i < len(comps):
            if type(node) is not Dir:
                raise DfsError("ENOTDIR", f"{path}: a path component is not a directory")
            child = node.entries.get(comps[i])
            if child is None:
                break
            node = child
            i += 1
        if i == len(comps):
            if type(node) is not Dir:
                raise DfsError("EEXIST", f"{path}: file exists")
            return {"ok": True, "attrs": self.attrs(node)}
        for name in comps[i:]:
            node = self._new_dir(node, name, perm, a["uid"], a["gid"], ts)  # type: ignore[arg-type]
        return {"ok": True, "attrs": self.attrs(node)}

    def _op_rmdir(self, a: dict, ts: int) -> dict:
        """rmdir(path): ENOTDIR, ENOTEMPTY, EBUSY for the root."""
        path = a["path"]
        if path == paths.ROOT:
            raise DfsError("EBUSY", "cannot remove the root directory")
        d, name = self._parent(path)
        node = d.entries.get(name)
        if node is None:
            raise DfsError("ENOENT", f"{path}: no such directory")
        if type(node) is not Dir:
            raise DfsError("ENOTDIR", f"{path}: not a directory")
        if node.entries:
            raise DfsError("ENOTEMPTY", f"{path}: directory not empty")
        self._remove_entry(d, name, ts)
        self._drop_link(node, ts)
        return {"ok": True}

    def _op_create(self, a: dict, ts: int) -> dict:
        """create(path, mode=0o644, uid=0, gid=0, exclusive=True) -> attrs, created.
        An existing regular file is returned as is when exclusive is False."""
        path = a["path"]
        perm = self._perm(a["mode"], S_IFREG, "create")
        d, name = self._parent(path)
        node = d.entries.get(name) if name else d
        if node is not None:
            if a["exclusive"]:
                raise DfsError("EEXIST", f"{path}: file exists")
            if type(node) is Dir:
                raise DfsError("EISDIR", f"{path}: is a directory")
            if node.meta[M_MODE] & S_IFMT != S_IFREG:
                raise DfsError("EEXIST", f"{path}: exists and is not a regular file")
            return {"ok": True, "attrs": self.attrs(node), "created": False}
        node = self._new_inode(d, name, S_IFREG | perm, a["uid"], a["gid"], ts, None)
        return {"ok": True, "attrs": self.attrs(node), "created": True}

    def _op_unlink(self, a: dict, ts: int) -> dict:
        """unlink(path): EISDIR for directories."""
        path = a["path"]
        if path == paths.ROOT:
            raise DfsError("EISDIR", "/: is a directory")
        d, name = self._parent(path)
        node = d.entries.get(name)
        if node is None:
            raise DfsError("ENOENT", f"{path}: no such file")
        if type(node) is Dir:
            raise DfsError("EISDIR", f"{path}: is a directory")
        self._remove_entry(d, name, ts)
        self._drop_link(node, ts)
        return {"ok": True}

    def _op_rename(self, a: dict, ts: int) -> dict:
        """rename(src, dst, noreplace=False), atomic, replacing dst as POSIX does."""
        src, dst = a["src"], a["dst"]
        if src == paths.ROOT or dst == paths.ROOT:
            raise DfsError("EBUSY", "cannot rename the root directory")
        sd, sname = self._parent(src)
        dd, dname = self._parent(dst)
        node = sd.entries.get(sname)
        if node is None:
            raise DfsError("ENOENT", f"{src}: no such file or directory")
        if paths.is_ancestor(src, dst):
            raise DfsError("EINVAL", f"cannot move {src} into its own subtree {dst}")
        target = dd.entries.get(dname)
        if target is node:
            return {"ok": True}  # same name, or two links to one inode: nothing to do
        if target is not None:
            if a["noreplace"]:
                raise DfsError("EEXIST", f"{dst}: file exists")
            if type(node) is Dir:
                if type(target) is not Dir:
                    raise DfsError("ENOTDIR", f"{dst}: not a directory")
                if target.entries:
                    raise DfsError("ENOTEMPTY", f"{dst}: directory not empty")
            elif type(target) is Dir:
                raise DfsError("EISDIR", f"{dst}: is a directory")
            self._remove_entry(dd, dname, ts)
            self._drop_link(target, ts)
        self._remove_entry(sd, sname, ts)
        self._add_entry(dd, dname, node, ts)
        node.touch(ts, mtime=False)
        return {"ok": True}

    def _op_link(self, a: dict, ts: int) -> dict:
        """link(src, dst) -> attrs: a new name for a non-directory inode."""
        src, dst = a["src"], a["dst"]
        node = self._lookup(src)
        dd, dname = self._parent(dst)
        if not dname or dname in dd.entries:
            raise DfsError("EEXIST", f"{dst}: file exists")
        if type(node) is Dir:
            raise DfsError("EPERM", f"{src}: cannot hard-link a directory")
        if node.meta[M_NLINK] >= MAX_NLINK:
            raise DfsError("EMLINK", f"{src}: too many links")
        node.set_meta(nlink=node.meta[M_NLINK] + 1)
        node.touch(ts, mtime=False)
        self._add_entry(dd, dname, node, ts)
        return {"ok": True, "attrs": self.attrs(node)}

    def _op_symlink(self, a: dict, ts: int) -> dict:
        """symlink(target, path, uid=0, gid=0) -> attrs."""
        path, target = a["path"], a["target"]
        d, name = self._parent(path)
        if not name or name in d.entries:
            raise DfsError("EEXIST", f"{path}: file exists")
        node = self._new_inode(
            d, name, S_IFLNK | 0o777, a["uid"], a["gid"], ts, target, len(target.encode())
        )
        return {"ok": True, "attrs": self.attrs(node)}

    def _op_mknod(self, a: dict, ts: int) -> dict:
        """mknod(path, mode, rdev=0, uid=0, gid=0) -> attrs: FIFO, socket, device or
        (type bits 0 or S_IFREG) an empty regular file."""
        path, mode = a["path"], a["mode"]
        t = mode & S_IFMT
        if t not in (0, S_IFREG, S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK):
            raise DfsError("EINVAL", f"mknod cannot make file type {t:o}")
        d, name = self._parent(path)
        if not name or name in d.entries:
            raise DfsError("EEXIST", f"{path}: file exists")
        perm = mode & 0o7777
        if t in (0, S_IFREG):
            node = self._new_inode(d, name, S_IFREG | perm, a["uid"], a["gid"], ts, None)
        else:
            rdev = a["rdev"] if t in (S_IFCHR, S_IFBLK) else 0
            node = self._new_inode(d, name, t | perm, a["uid"], a["gid"], ts, rdev)
        return {"ok": True, "attrs": self.attrs(node)}

    def _op_setattr(self, a: dict, ts: int) -> dict:
        """setattr(path, mode?, uid?, gid?, atime?, mtime?, size?) -> attrs.
        size truncates (regular files only); times take ns or "now"."""
        node = self._lookup(a["path"])
        t = node.meta[M_MODE] & S_IFMT
        mode = a["mode"]
        if mode is not None:
            mode = t | self._perm(mode, t, "this file")
        size = a["size"]
        if size is not None:
            if t == S_IFDIR:
                raise DfsError("EISDIR", f"{a['path']}: is a directory")
            if t != S_IFREG:
                raise DfsError("EINVAL", f"{a['path']}: not a regular file")
        # all checked: change
        old = node.meta
        node.meta = meta(
            old[M_MODE] if mode is None else mode,
            old[M_UID] if a["uid"] is None else a["uid"],
            old[M_GID] if a["gid"] is None else a["gid"],
            old[M_REP],
            old[M_NLINK],
        )
        at, mt, _ct = node.get_times()
        if size is not None:
            if size != node.size:
                self._truncate(node, size, ts)
            mt = ts
        if a["atime"] is not None:
            at = ts if a["atime"] == NOW else a["atime"]
        if a["mtime"] is not None:
            mt = ts if a["mtime"] == NOW else a["mtime"]
        node.set_times(at, mt, ts)
        return {"ok": True, "attrs": self.attrs(node)}

    def _truncate(self, node: Inode, size: int, ts: int) -> None:
        """Cut a regular file down to size, or grow it with zeros. Inline content
        shorter than the file reads as zeros past its end, so growing keeps it."""
        data = node.data
        if type(data) is not Inline:
            self._set_content(node, truncate_extents(node.extents(), node.size, size), size, ts)
            return
        content = inline_codec.decode(data)
        if size < len(content):
            data = Inline(bytes((inline_codec.RAW,)) + content[:size]) if size else None
        self._set_data(node, data, size, ts)

    def _set_content(self, node: Inode, exts: list, size: int, ts: int) -> None:
        """Replace a regular file's extents and bump its version."""
        self._set_data(node, pack_extents(exts, size), size, ts)

    def _set_data(self, node: Inode, data: Any, size: int, ts: int) -> None:
        """Replace a regular file's content (packed extents or Inline): references
        first up, then down, so a chunk kept by both versions never becomes garbage."""
        rep = node.meta[M_REP]
        self.refs.add_file(data, size, rep)
        self.refs.drop_file(node.data, node.size, rep, ts)
        self._count_inline(data, 1)
        self._count_inline(node.data, -1)
        self.logical_bytes += size - node.size
        node.data = data
        node.size = small(size)
        node.version += 1

    def _op_setxattr(self, a: dict, ts: int) -> dict:
        """setxattr(path, name, value: bytes, flags=0): flags 1 = create only
        (EEXIST if set), 2 = replace only (ENODATA if missing)."""
        node = self._lookup(a["path"])
        name, flags = a["name"], a["flags"]
        if flags == 3:
            raise DfsError("EINVAL", "flags cannot be both create and replace")
        xs = self.xattrs.get(node.ino)
        have = xs is not None and name in xs
        if flags == XATTR_CREATE and have:
            raise DfsError("EEXIST", f"{a['path']}: attribute {name!r} exists")
        if flags == XATTR_REPLACE and not have:
            raise DfsError("ENODATA", f"{a['path']}: no attribute {name!r}")
        if not have and xs is not None and len(xs) >= MAX_XATTRS:
            raise DfsError("ENOSPC", f"{a['path']}: too many attributes")
        if xs is None:
            xs = self.xattrs[node.ino] = {}
        xs[name] = a["value"]
        node.touch(ts, mtime=False)
        return {"ok": True}

    def _op_removexattr(self, a: dict, ts: int) -> dict:
        """removexattr(path, name): ENODATA if missing."""
        node = self._lookup(a["path"])
        name = a["name"]
        xs = self.xattrs.get(node.ino)
        if xs is None or name not in xs:
            raise DfsError("ENODATA", f"{a['path']}: no attribute {name!r}")
        del xs[name]
        if not xs:
            del self.xattrs[node.ino]
        node.touch(ts, mtime=False)
        return {"ok": True}

    def _set_rep(self, node: Inode, rep: int) -> bool:
        old = node.meta[M_REP]
        if old == rep:
            return False
        if node.meta[M_MODE] & S_IFMT == S_IFREG and node.data is not None:
            self.refs.add_file(node.data, node.size, rep)
            self.refs.drop_file(node.data, node.size, old, 0)  # never reaches zero
        node.set_meta(rep=rep)
        return True

    def _op_setrep(self, a: dict, ts: int) -> dict:
        """setrep(path, rep 1..16, recursive=False) -> changed: inodes changed.
        A directory's rep is the default its new children inherit."""
        node = self._lookup(a["path"])
        rep = a["rep"]
        changed = int(self._set_rep(node, rep))
        if a["recursive"] and type(node) is Dir:
            stack = [node]
            while stack:
                d = stack.pop()
                for child in d.entries.values():
                    changed += self._set_rep(child, rep)
                    if type(child) is Dir:
                        stack.append(child)
        return {"ok": True, "changed": changed}

    def _op_commit(self, a: dict, ts: int) -> dict:
        """commit(path, extents, size=None, mode=0o644, uid=0, gid=0, create=True,
        expect_version=None, atime=None, mtime=None, inline=None) -> attrs, created.

        Replaces a regular file's whole content at once. extents: [[chunk id hex or
        None (hole), length], ...]; size, if given, must equal their sum. Or, for a
        small file, extents [] and inline: its content as a dfs.inline blob (size
        must then be the content's length); ENOSPC when the namespace's inline
        budget is spent (store chunks instead). A missing
        file is created when create is True (ENOENT otherwise) with mode/uid/gid and
        its parent's rep. expect_version: the version the file must have (ESTALE
        otherwise); 0 means "the file must not exist yet"."""
        path, exts = a["path"], a["extents"]
        size = sum(n for _c, n in exts)
        blob: Inline | None = None
        if a["inline"] is not None:
            if exts:
                raise DfsError("EINVAL", "a commit has either extents or inline content")
            blob, size = a["inline"]
            if not size:
                blob = None  # an empty file holds nothing, inline or not
        if a["size"] is not None and a["size"] != size:
            what = "inline content length" if blob is not None else "sum of extent lengths"
            raise DfsError("EINVAL", f"size {a['size']} != {what} {size}")
        perm = self._perm(a["mode"], S_IFREG, "commit")
        d, name = self._parent(path)
        node = d.entries.get(name) if name else d
        ev = a["expect_version"]
        if node is None:
            if ev is not None and ev != 0:
                raise DfsError("ESTALE", f"{path}: expected version {ev}, file does not exist")
            if not a["create"]:
                raise DfsError("ENOENT", f"{path}: no such file")
            self._check_budget(blob, None)
            data = blob if blob is not None else pack_extents(exts, size)
            node = self._new_inode(d, name, S_IFREG | perm, a["uid"], a["gid"], ts, data, size)
            self._commit_times(node, a, ts)
            return {"ok": True, "attrs": self.attrs(node), "created": True}
        if type(node) is Dir:
            raise DfsError("EISDIR", f"{path}: is a directory")
        if node.meta[M_MODE] & S_IFMT != S_IFREG:
            raise DfsError("EINVAL", f"{path}: not a regular file")
        if ev is not None and ev != node.version:
            raise DfsError("ESTALE", f"{path}: version is {node.version}, expected {ev}")
        if blob is not None:
            self._check_budget(blob, node)
            self._set_data(node, blob, size, ts)
        else:
            self._set_content(node, exts, size, ts)
        node.touch(ts)
        self._commit_times(node, a, ts)
        return {"ok": True, "attrs": self.attrs(node), "created": False}

    def _check_budget(self, blob: Inline | None, replaces: Inode | None) -> None:
        """ENOSPC when storing ``blob`` (in place of ``replaces``' content) would go
        past the inline budget."""
        if blob is None:
            return
        old = replaces.data if replaces is not None else None
        held = inline_codec.charge(old) if type(old) is Inline else 0
        if self.inline_bytes - held + inline_codec.charge(blob) > self.inline_budget:
            raise DfsError("ENOSPC", f"inline budget ({self.inline_budget} B) is spent")

    @staticmethod
    def _commit_times(node: Inode, a: dict, ts: int) -> None:
        """A commit may carry the times the writer set (tar, cp -p, rsync): one Raft
        step instead of a commit and a setattr."""
        if a["atime"] is None and a["mtime"] is None:
            return
        at, mt, ct = node.get_times()
        if a["atime"] is not None:
            at = ts if a["atime"] == NOW else a["atime"]
        if a["mtime"] is not None:
            mt = ts if a["mtime"] == NOW else a["mtime"]
        node.set_times(at, mt, ct)

    def _op_batch(self, a: dict, ts: int) -> dict:
        """batch(ops) -> results: many changes in one log entry (one Raft round and
        one fsync for a whole directory tree of small files). Each op runs in order,
        alone: one that fails (EEXIST, ENOENT...) leaves the others applied; the
        results, one per op, say which."""
        return {
            "ok": True,
            "results": [self._run(MUTATIONS, op, args, ts) for op, args in a["ops"]],
        }

    def _op_set_limits(self, a: dict, ts: int) -> dict:
        """set_limits(inline_budget=None) -> the limits now (an admin action).
        A smaller budget than what is stored already only stops new inline content."""
        if a["inline_budget"] is not None:
            self.inline_budget = a["inline_budget"]
        return {"ok": True, "inline_budget": self.inline_budget}

    def _op_gc_mark(self, a: dict, ts: int) -> dict:
        """gc_mark(chunk_ids, ts=cmd ts) -> marked: make the unreferenced ones
        garbage candidates (an existing mark keeps its older time)."""
        when = ts if a["ts"] is None else a["ts"]
        return {"ok": True, "marked": self.refs.mark(a["chunk_ids"], when)}

    def _op_gc_expire(self, a: dict, ts: int) -> dict:
        """gc_expire(before_ts, limit=100000) -> chunks: candidates marked before
        before_ts, oldest first; they leave the candidate set (delete them)."""
        got = self.refs.expire(a["before_ts"], a["limit"])
        return {"ok": True, "chunks": [c.hex() for c in got]}

    # == queries ===================================================================

    def _op_getattr(self, a: dict, ts: None) -> dict:
        """getattr(path) -> attrs."""
        return {"ok": True, "attrs": self.attrs(self._lookup(a["path"]))}

    _op_lookup = _op_getattr

    def _op_readdir(self, a: dict, ts: None) -> dict:
        """readdir(path, after=None, limit=1000) -> entries [{name, attrs}], more.
        Names in sorted (code point) order, strictly after `after`."""
        d = self._lookup(a["path"])
        if type(d) is not Dir:
            raise DfsError("ENOTDIR", f"{a['path']}: not a directory")
        if d.index is None:
            d.index = SortedIndex(d.entries)
        names, more = d.index.page(a["after"], a["limit"], d.entries.keys)
        ents = d.entries
        out = [{"name": n, "attrs": self.attrs(ents[n])} for n in names]
        return {"ok": True, "entries": out, "more": more}

    def _op_readlink(self, a: dict, ts: None) -> dict:
        """readlink(path) -> target; EINVAL if not a symlink."""
        node = self._lookup(a["path"])
        if node.meta[M_MODE] & S_IFMT != S_IFLNK:
            raise DfsError("EINVAL", f"{a['path']}: not a symbolic link")
        return {"ok": True, "target": node.data}

    def _op_getxattr(self, a: dict, ts: None) -> dict:
        """getxattr(path, name) -> value (bytes); ENODATA if missing."""
        node = self._lookup(a["path"])
        xs = self.xattrs.get(node.ino)
        if xs is None or a["name"] not in xs:
            raise DfsError("ENODATA", f"{a['path']}: no attribute {a['name']!r}")
        return {"ok": True, "value": xs[a["name"]]}

    def _op_listxattr(self, a: dict, ts: None) -> dict:
        """listxattr(path) -> names (sorted)."""
        node = self._lookup(a["path"])
        return {"ok": True, "names": sorted(self.xattrs.get(node.ino, ()))}

    def _op_statfs(self, a: dict, ts: None) -> dict:
        """statfs() -> inode counts, logical bytes, chunk and garbage figures."""
        r = self.refs
        return {
            "ok": True,
            "files": self.n_files,
            "dirs": self.n_dirs,
            "symlinks": self.n_symlinks,
            "specials": self.n_specials,
            "inodes": self.n_files + self.n_dirs + self.n_symlinks + self.n_specials,
            "logical_bytes": self.logical_bytes,
            "inline_files": self.inline_files,
            "inline_bytes": self.inline_bytes,
            "inline_budget": self.inline_budget,
            "chunks": r.distinct,
            "chunk_refs": r.total,
            "referenced_bytes": r.ref_bytes,
            "garbage": len(r.garbage),
        }

    def _op_file_chunks(self, a: dict, ts: None) -> dict:
        """file_chunks(path, content=True) -> extents [[hex or None, length]], size,
        rep, version, ino, and for a file whose content is inline: inline (its
        dfs.inline blob), or with content=False only inline_bytes (what it is
        charged), for callers that count rather than read (du)."""
        node = self._lookup(a["path"])
        t = node.meta[M_MODE] & S_IFMT
        if t == S_IFDIR:
            raise DfsError("EISDIR", f"{a['path']}: is a directory")
        if t != S_IFREG:
            raise DfsError("EINVAL", f"{a['path']}: not a regular file")
        exts = [[_hex(c), n] for c, n in unpack_extents(node.data, node.size)]
        out = {
            "ok": True,
            "extents": exts,
            "size": node.size,
            "rep": node.meta[M_REP],
            "version": node.version,
            "ino": node.ino,
        }
        if type(node.data) is Inline:
            if a["content"]:
                out["inline"] = bytes(node.data)
            else:
                out["inline_bytes"] = inline_codec.charge(node.data)
        return out

    def _op_files_chunks(self, a: dict, ts: None) -> dict:
        """files_chunks(paths) -> files: file_chunks of each path, in order (a reader
        of a whole tree asks once per directory page, not once per file). Past
        INLINE_REPLY_BUDGET bytes of inline content, a file's comes without it
        (inline_omitted): ask file_chunks for that one."""
        files = []
        budget = INLINE_REPLY_BUDGET
        for p in a["paths"]:
            f = self.query("file_chunks", {"path": p, "content": a["content"]})
            blob = f.get("inline")
            if blob is not None:
                if len(blob) > budget:
                    del f["inline"]
                    f["inline_omitted"] = True
                else:
                    budget -= len(blob)
            files.append(f)
        return {"ok": True, "files": files}

    def _op_exists(self, a: dict, ts: None) -> dict:
        """exists(chunk_ids) -> referenced: [bool] in the same order (for dedup)."""
        r = self.refs
        return {"ok": True, "referenced": [r.is_referenced(c) for c in a["chunk_ids"]]}

    def _op_chunk_refs(self, a: dict, ts: None) -> dict:
        """chunk_refs(chunk_ids=None) -> chunks (distinct referenced), refs (total),
        referenced_bytes, garbage (candidates); with chunk_ids also counts: [int]."""
        r = self.refs
        out: dict[str, Any] = {
            "ok": True,
            "chunks": r.distinct,
            "refs": r.total,
            "referenced_bytes": r.ref_bytes,
            "garbage": len(r.garbage),
        }
        if a["chunk_ids"] is not None:
            out["counts"] = [r.count(c) for c in a["chunk_ids"]]
        return out

    def _op_all_chunks(self, a: dict, ts: None) -> dict:
        """all_chunks(after=None, limit=1000) -> chunks [[hex, rep needed]], more.
        Referenced chunk ids in sorted order, strictly after `after`."""
        ids, more = self.refs.page(a["after"], a["limit"])
        r = self.refs
        return {"ok": True, "chunks": [[c.hex(), r.rep_needed(c)] for c in ids], "more": more}
