"""Namespace snapshots: the whole state as zstd-compressed msgpack, byte-identical
for identical states.

The tree is written column-wise in one depth-first walk with names sorted, so
a million files become a handful of large byte strings (fast to pack and to
compress) instead of a million small maps. Derived state (chunk reference
counts, inode counters) is not stored: restore recounts it from the files,
which also keeps the two from ever disagreeing.
"""

from __future__ import annotations

import gc
import sys
from array import array
from typing import Any

import msgpack
import zstandard

from dfs import inline as inline_codec
from metadata.inodes import (
    M_MODE,
    M_REP,
    S_IFLNK,
    S_IFMT,
    S_IFREG,
    TIME_BASE,
    Dir,
    Inline,
    Inode,
    meta,
    small,
)
from metadata.sessions import Sessions

FORMAT = "dfs-namespace"
VERSION = 3  # 3: inline files (n_ext -1, "inline"); 2 still loads
ZSTD_LEVEL = 3

K_DIR, K_INODE, K_LINK = 0, 1, 2  # entry kinds: directory, other inode, extra hard link
N_EXT_INLINE = -1  # n_ext of a file whose content is inline (its blob is in "inline")
_HOLE = b"\0" * 32


def _col(a: array) -> bytes:
    if sys.byteorder == "big":
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _uncol(b: bytes) -> list[int]:
    a = array("q")
    a.frombytes(b)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()


def dump(ns: Any) -> bytes:
    """The namespace state as bytes, identical for identical states."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _dump(ns)
    finally:
        if enabled:
            gc.enable()


def _dump(ns: Any) -> bytes:
    parent = array("q")
    kind = bytearray()
    names: list[str] = []
    inos = array("q")
    metas = array("q")
    atimes = array("q")
    mtimes = array("q")
    ctimes = array("q")
    versions = array("q")
    sizes = array("q")
    n_ext = array("q")
    ext_ids = bytearray()
    ext_lens = array("q")
    targets: list[str] = []
    rdevs: list[int] = []
    inline: list[bytes] = []
    meta_table: list[tuple] = []
    meta_idx: dict[tuple, int] = {}
    seen_links: set[int] = set()

    pa, na, ia, ma = parent.append, names.append, inos.append, metas.append
    aa, mta, ca, va = atimes.append, mtimes.append, ctimes.append, versions.append
    sa, nea, ela, ka = sizes.append, n_ext.append, ext_lens.append, kind.append
    base = TIME_BASE

    def common(node: Inode, m: tuple) -> None:
        mi = meta_idx.get(m)
        if mi is None:
            mi = meta_idx[m] = len(meta_table)
            meta_table.append(m)
        ma(mi)
        tm = node.times
        if type(tm) is int:
            tm += base
            aa(tm)
            mta(tm)
            ca(tm)
        else:
            aa(tm[0] + base)
            mta(tm[1] + base)
            ca(tm[2] + base)
        va(node.version)

    # Entries in walk order: the root, then each directory's children in name
    # order; a child always comes after its parent directory's entry.
    root = ns.root
    pa(-1)
    na("")
    ia(root.ino)
    common(root, root.meta)
    ka(K_DIR)
    sa(0)
    nea(0)
    stack: list[tuple[Dir, int]] = [(root, 0)]
    while stack:
        d, didx = stack.pop()
        ents = d.entries
        for name in sorted(ents):
            node = ents[name]
            idx = len(names)
            pa(didx)
            na(name)
            ia(node.ino)
            m = node.meta
            if type(node) is Dir:
                common(node, m)
                ka(K_DIR)
                sa(0)
                nea(0)
                stack.append((node, idx))
                continue
            if m[4] > 1:
                if node.ino in seen_links:
                    ka(K_LINK)
                    for col in (metas, atimes, mtimes, ctimes, versions, sizes, n_ext):
                        col.append(0)
                    continue
                seen_links.add(node.ino)
            common(node, m)
            ka(K_INODE)
            size = node.size
            sa(size)
            data = node.data
            t = m[M_MODE] & S_IFMT
            if t == S_IFREG:
                if data is None:
                    nea(0)
                elif type(data) is Inline:
                    nea(N_EXT_INLINE)
                    inline.append(bytes(data))
                elif type(data) is bytes:
                    nea(1)
                    ext_ids += data
                    ela(size)
                else:
                    nea(len(data) // 2)
                    for i in range(0, len(data), 2):
                        c = data[i]
                        if c is None:
                            ext_ids += _HOLE
                            ela(-data[i + 1])
                        else:
                            ext_ids += c
                            ela(data[i + 1])
            else:
                nea(0)
                if t == S_IFLNK:
                    targets.append(data)
                else:
                    rdevs.append(data)

    xattrs = [[ino, [[k, xs[k]] for k in sorted(xs)]] for ino, xs in sorted(ns.xattrs.items())]
    garbage = sorted(ns.refs.garbage.items())
    g_ts = array("q", [t for _c, t in garbage])
    state = {
        "format": FORMAT,
        "version": VERSION,
        "next_ino": ns.next_ino,
        "session_timeout": ns.sessions.timeout_ns,
        "count": len(names),
        "meta": [list(m) for m in meta_table],
        "parent": _col(parent),
        "kind": bytes(kind),
        "names": "/".join(names).encode("utf-8", "surrogatepass"),
        "ino": _col(inos),
        "meta_idx": _col(metas),
        "atime": _col(atimes),
        "mtime": _col(mtimes),
        "ctime": _col(ctimes),
        "ver": _col(versions),
        "size": _col(sizes),
        "n_ext": _col(n_ext),
        "ext_ids": bytes(ext_ids),
        "ext_lens": _col(ext_lens),
        "targets": targets,
        "rdevs": rdevs,
        "inline": inline,
        "inline_budget": ns.inline_budget,
        "xattrs": xattrs,
        "garbage_ids": b"".join(c for c, _t in garbage),
        "garbage_ts": _col(g_ts),
        "sessions": [list(r) for r in ns.sessions.items_sorted()],
    }
    packed = msgpack.packb(state, use_bin_type=True)
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(packed)


def load(cls: Any, data: bytes) -> Any:
    """Rebuild a Namespace from dump() output; ValueError if it is not one."""
    enabled = gc.isenabled()
    gc.disable()  # millions of new objects, none of them garbage: skip the collector
    try:
        return _load(cls, data)
    except (KeyError, IndexError, TypeError, StopIteration, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt namespace snapshot: {type(e).__name__}: {e}") from e
    finally:
        if enabled:
            gc.enable()


def _load(cls: Any, data: bytes) -> Any:
    try:
        raw = zstandard.ZstdDecompressor().decompress(data)
        st = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (zstandard.ZstdError, ValueError) as e:
        raise ValueError(f"corrupt namespace snapshot: {e}") from e
    if type(st) is not dict or st.get("format") != FORMAT or st.get("version") not in (2, VERSION):
        raise ValueError("not a dfs namespace snapshot (or an unknown version)")
    ns = cls(session_timeout_ns=st["session_timeout"])
    ns.next_ino = st["next_ino"]
    metas = [meta(*m) for m in st["meta"]]
    names = st["names"].decode("utf-8", "surrogatepass").split("/")
    count = st["count"]
    parent = _uncol(st["parent"])
    kind = st["kind"]
    inos = _uncol(st["ino"])
    meta_idx = _uncol(st["meta_idx"])
    atimes = _uncol(st["atime"])
    mtimes = _uncol(st["mtime"])
    ctimes = _uncol(st["ctime"])
    versions = _uncol(st["ver"])
    sizes = _uncol(st["size"])
    n_ext = _uncol(st["n_ext"])
    ext_ids: bytes = st["ext_ids"]
    ext_lens = _uncol(st["ext_lens"])
    targets = iter(st["targets"])
    rdevs = iter(st["rdevs"])
    inline = iter(st.get("inline") or ())  # absent in snapshots from before inline files
    if (
        not (len(names) == len(parent) == len(kind) == len(inos) == len(sizes) == count)
        or count < 1
    ):
        raise ValueError("corrupt namespace snapshot: column lengths differ")

    per_rep: dict[int, list[bytes]] = {}  # every chunk reference, by the file's rep
    ref_bytes = 0
    dirs: dict[int, Dir] = {}
    by_ino: dict[int, Inode] = {}
    n_files = n_dirs = n_links = n_specials = 0
    logical = 0
    n_inline = inline_bytes = 0
    e = 0  # next extent
    for i in range(count):
        k = kind[i]
        ino = inos[i]
        if k == K_LINK:
            node = by_ino[ino]
        else:
            m = metas[meta_idx[i]]
            a, mt, c = atimes[i], mtimes[i], ctimes[i]
            tm = a if a == mt == c else (a, mt, c)
            if k == K_DIR:
                node = Dir(ino, m, tm, versions[i])
                dirs[i] = node
                n_dirs += 1
            else:
                t = m[M_MODE] & S_IFMT
                size = sizes[i]
                if t == S_IFREG:
                    ne = n_ext[i]
                    if ne == N_EXT_INLINE:
                        data = Inline(next(inline))
                        ne = 0
                        n_inline += 1
                        inline_bytes += inline_codec.charge(data)
                    elif ne == 0:
                        data = None
                    elif ne == 1 and ext_lens[e] == size and ext_lens[e] > 0:
                        data = ext_ids[e * 32 : e * 32 + 32]
                    else:
                        flat: list[Any] = []
                        for j in range(e, e + ne):
                            n = ext_lens[j]
                            if n < 0:
                                flat.append(None)
                                flat.append(small(-n))
                            else:
                                flat.append(ext_ids[j * 32 : j * 32 + 32])
                                flat.append(small(n))
                        data = tuple(flat)
                    e += ne
                    if data is not None and ne:
                        rep = m[M_REP]
                        lst = per_rep.get(rep)
                        if lst is None:
                            lst = per_rep[rep] = []
                        if type(data) is bytes:
                            lst.append(data)
                            ref_bytes += size
                        else:
                            for j in range(0, len(data), 2):
                                if data[j] is not None:
                                    lst.append(data[j])
                                    ref_bytes += data[j + 1]
                    n_files += 1
                    logical += size
                elif t == S_IFLNK:
                    data = next(targets)
                    n_links += 1
                else:
                    data = next(rdevs)
                    n_specials += 1
                node = Inode(ino, m, size, tm, versions[i], data)
                if m[4] > 1:
                    by_ino[ino] = node
        p = parent[i]
        if p < 0:
            if i != 0 or k != K_DIR:
                raise ValueError("corrupt namespace snapshot: bad root")
            ns.root = node
        else:
            dirs[p].entries[names[i]] = node

    ns.refs.load(per_rep, ref_bytes)
    ns.n_files, ns.n_dirs, ns.n_symlinks, ns.n_specials = n_files, n_dirs, n_links, n_specials
    ns.logical_bytes = logical
    ns.inline_files, ns.inline_bytes = n_inline, inline_bytes
    ns.inline_budget = st.get("inline_budget", ns.inline_budget)
    ns.xattrs = {ino: {k: v for k, v in xs} for ino, xs in st["xattrs"]}
    g_ids: bytes = st["garbage_ids"]
    g_ts = _uncol(st["garbage_ts"])
    ns.refs.garbage = {g_ids[j * 32 : j * 32 + 32]: t for j, t in enumerate(g_ts)}
    ns.sessions = Sessions(st["session_timeout"])
    ns.sessions.load([(c, s, t, r) for c, s, t, r in st["sessions"]])
    return ns
