"""The FUSE operations: the cluster's namespace as a local directory.

Namespace calls go straight to the metadata service (paths in, attributes
out); file content goes through FileState (write-back, commit at close) and
the chunk cache. Every DfsError becomes the errno its code names; anything
else becomes EIO (and a log line), never a crash of the mount.

Close-to-open: open() always asks the metadata service for the current
version; when it differs from what the kernel was last told about the inode,
the kernel's cached attributes and pages for it are dropped first.

Lazy create: create() only records the new file on this mount (attributes are
answered from that record, readdir here lists it); its first commit, at
flush/fsync/close, creates it on the cluster in one Raft step together with
its content, mode and owner (times set before then follow in one setattr).
So a new file is visible to other mounts from its first close() (or fsync()),
as close-to-open requires, and only on this mount before that. An O_EXCL
create that loses a race with another mount fails at close() with EEXIST.
Until its first commit the file has a provisional inode number; this mount
keeps reporting it afterwards, so st_ino never changes under a program.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy
from mfusepy import FuseOSError, Operations, fuse_get_context

from dfs import client as client_mod
from dfs.client import Client
from dfs.errors import DfsError
from dfs.fuse.cache import ChunkCache
from dfs.fuse.filestate import FileState, Writeback, content_extents

log = logging.getLogger("dfs.fuse")

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 1, 2, 16
BLOCK = 4096
TRACE = bool(os.environ.get("DFS_FUSE_TRACE"))  # log every operation and its time
STATFS_TTL = 2.0

_TYPE_BITS = {
    "dir": stat.S_IFDIR,
    "file": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
}


def _op(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Errors to errnos: DfsError by its code, anything unexpected as EIO."""

    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter() if TRACE else 0.0
        try:
            return fn(*args, **kwargs)
        except FuseOSError:
            raise
        except DfsError as exc:
            if exc.errno == errno.EIO:
                log.warning("%s%r: %s", fn.__name__, args[1:2], exc)
            raise FuseOSError(exc.errno) from None
        except OSError as exc:
            if exc.errno:
                raise FuseOSError(exc.errno) from None
            log.exception("%s%r failed", fn.__name__, args[1:3])
            raise FuseOSError(errno.EIO) from None
        except Exception:
            log.exception("%s%r failed", fn.__name__, args[1:3])
            raise FuseOSError(errno.EIO) from None
        finally:
            if TRACE:
                ms = (time.perf_counter() - t0) * 1e3
                log.info("trace %s %r %.2f ms", name, args[1:2], ms)

    return wrapper


def _ctx() -> tuple[int, int]:
    uid, gid, _pid = fuse_get_context()
    return uid, gid


def _parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


class DfsOperations(Operations):
    """fusepy-API operations over a dfs cluster (mfusepy on libfuse3)."""

    use_ns = True  # timestamps in nanoseconds

    def __init__(
        self,
        client: Client,
        cache_bytes: int = 256 << 20,
        attr_timeout: float = 1.0,
        writeback_bytes: int = 256 << 20,
    ) -> None:
        self.client = client  # its inline_ok(): small files commit their content inline
        self.cache = ChunkCache(client, cache_bytes)
        self.writeback = Writeback(client, self.cache, writeback_bytes)
        self.attr_timeout = attr_timeout
        self._mu = threading.Lock()
        self._states: dict[int, FileState] = {}
        self._handles: dict[int, FileState] = {}
        self._fh = itertools.count(1)
        self._told: dict[int, tuple[int, int]] = {}  # ino -> (version, size) the kernel has
        # path -> (version, size) the kernel was told for that very name: libfuse gives
        # each name its own kernel inode, so a hard link written through another name
        # leaves this one's cached size behind
        self._told_path: dict[str, tuple[int, int]] = {}
        self._looked: dict[int, tuple[float, dict[str, Any]]] = {}  # file attrs just sent
        self._dirs: dict[str, tuple[float, dict[str, Any]]] = {}  # recent dir attrs
        self._fresh: dict[str, dict[str, Any]] = {}  # attrs a create/mkdir/link just returned
        self._xneg: dict[tuple[str, str], float] = {}  # recent "no such xattr" answers
        self._statfs: tuple[float, dict[str, int]] | None = None
        self._pending: dict[str, FileState] = {}  # path -> created here, not committed yet
        self._direct: set[int] = set()  # handles writing with direct_io (DfsFUSE.create)
        self._fake_ino = itertools.count(1 << 56)  # provisional inode numbers
        self._alias: dict[int, int] = {}  # real ino -> provisional one this mount showed
        # keep_cache: path -> (ino, version, rename generation) of the content the
        # kernel's pages for that path may hold (libfuse keeps one kernel inode per path)
        self._paged: dict[str, tuple[int, int, int]] = {}
        self._renames = 0
        self._opened: dict[
            int, tuple[str, tuple[int, int, int], bool]
        ] = {}  # fh -> path, key, keep

    # ------------------------------------------------------------ helpers

    def ns(self, op: str, mutate: bool = False, **args: Any) -> dict[str, Any]:
        return self.client.meta.ns(op, mutate, **args)

    def _stat(self, a: dict[str, Any]) -> dict[str, Any]:
        mode = a["mode"]
        if not mode & 0o170000:
            mode |= _TYPE_BITS.get(a["type"], stat.S_IFREG)
        size = a["size"]
        mtime = a["mtime"]
        st = self._states.get(a["ino"])
        if st is not None:
            size = st.size
            if st.mtime_ns is not None:
                mtime = st.mtime_ns
        elif a["type"] == "file":
            self._told[a["ino"]] = (a["version"], size)
            if len(self._told) > 500_000:
                self._told.clear()
            self._looked[a["ino"]] = (time.monotonic() + self.attr_timeout, a)
            if len(self._looked) > 10_000:
                self._looked.clear()
        if a["type"] == "dir":
            size = BLOCK
        return {
            "st_mode": mode,
            "st_ino": self._alias.get(a["ino"], a["ino"]),
            "st_nlink": a["nlink"],
            "st_uid": a["uid"],
            "st_gid": a["gid"],
            "st_size": size,
            "st_atime": a["atime"],
            "st_mtime": mtime,
            "st_ctime": a["ctime"],
            "st_rdev": a.get("rdev") or 0,
            "st_blksize": 1 << 20,
            "st_blocks": (size + 511) // 512,
        }

    def _remember_dir(self, path: str, a: dict[str, Any]) -> None:
        """Directory attributes are answered from here for attr_timeout: the kernel
        drops a directory's cached attributes after every change inside it, and
        default_permissions then asks again on the next path walk."""
        if a["type"] == "dir":
            self._dirs[path] = (time.monotonic() + self.attr_timeout, a)
            if len(self._dirs) > 10_000:
                self._dirs.clear()

    def _dir_attrs(self, path: str) -> dict[str, Any]:
        got = self._dirs.get(path)
        if got is not None and got[0] > time.monotonic():
            return got[1]
        a = self.ns("getattr", path=path)["attrs"]
        self._remember_dir(path, a)
        return a

    def _dir_changed(self, path: str, nlink: int = 0) -> None:
        """An entry of this mount's making came or went in ``path``'s parent."""
        parent = _parent(path)
        got = self._dirs.get(parent)
        if got is None:
            return
        a = dict(got[1])
        a["mtime"] = a["ctime"] = time.time_ns()
        a["nlink"] += nlink
        self._dirs[parent] = (got[0], a)

    def _forget(self, path: str) -> None:
        self._dirs.pop(path, None)
        self._fresh.pop(path, None)

    def _forget_tree(self, path: str) -> None:
        self._forget(path)
        prefix = path + "/"
        for d in [k for k in self._dirs if k.startswith(prefix)]:
            self._dirs.pop(d, None)

    def _just_made(self, path: str, a: dict[str, Any]) -> None:
        """Attributes a mutation returned: libfuse looks the entry up right after."""
        self._fresh[path] = a
        if len(self._fresh) > 1000:
            self._fresh.clear()
        self._remember_dir(path, a)

    def _owner(self, path: str, mode: int) -> tuple[int, int, int]:
        """uid, gid and mode for a new inode: the caller's, or a setgid parent's group."""
        uid, gid = _ctx()
        try:
            parent = self._dir_attrs(_parent(path))
        except DfsError:
            return uid, gid, mode
        if parent["mode"] & stat.S_ISGID:
            gid = parent["gid"]
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return uid, gid, mode

    def _state_for_path(self, path: str) -> FileState | None:
        with self._mu:
            for st in self._states.values():
                if st.path == path:
                    return st
        return None

    def _pending_at(self, path: str) -> FileState | None:
        return self._pending.get(path) if self._pending else None

    def _materialize(self, path: str, tree: bool = False) -> None:
        """Commit files created here but not yet on the cluster at ``path`` (and
        under it): the namespace operation about to run must see them."""
        if not self._pending:
            return
        with self._mu:
            prefix = path.rstrip("/") + "/"
            todo = [
                st
                for p, st in self._pending.items()
                if p == path or (tree and (path == "/" or p.startswith(prefix)))
            ]
        for st in todo:
            st.commit(st.path)

    def materialized(self, st: FileState, old_ino: int) -> None:
        """A lazily created file now exists on the cluster (called by its commit)."""
        with self._mu:
            for p, other in list(self._pending.items()):
                if other is st:
                    del self._pending[p]
            if self._states.get(old_ino) is st:
                del self._states[old_ino]
            st.ino = st.attrs["ino"]
            if st.ino not in self._states:
                self._states[st.ino] = st
            if len(self._alias) > 1_000_000:
                self._alias.clear()
            self._alias[st.ino] = old_ino

    def _repath(self, old: str, new: str | None) -> None:
        with self._mu:
            for st in self._states.values():
                if st.path is None:
                    continue
                if st.path == old:
                    st.path = new
                elif new is not None and st.path.startswith(old + "/"):
                    st.path = new + st.path[len(old) :]

    def _invalidate(self, path: str) -> None:
        """Drop the kernel's cached attributes and pages of ``path`` (close-to-open)."""
        try:
            lib = mfusepy._libfuse
            fuse_ptr = lib.fuse_get_context().contents.fuse
            if fuse_ptr:
                fn = lib.fuse_invalidate_path
                fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
                fn.restype = ctypes.c_int
                fn(fuse_ptr, path.encode("utf-8", "surrogateescape"))
        except Exception as exc:
            log.debug("invalidate %s: %s", path, exc)

    def _note_pages(self, fh: int, path: str, ino: int, version: int, clean: bool) -> None:
        """Decide keep_cache for this open: the kernel may keep the pages it holds
        for ``path`` only when they are of this very content (same inode, same
        version, no rename since). Close-to-open holds: any other content drops them."""
        key = (ino, version, self._renames)
        with self._mu:
            keep = clean and self._paged.get(path) == key
            self._paged[path] = key
            if len(self._paged) > 100_000:
                self._paged.clear()
            self._opened[fh] = (path, key, keep)

    def keeps_cache(self, fh: int) -> bool:
        """Whether open() may tell the kernel to keep the file's cached pages."""
        got = self._opened.get(fh)
        return got is not None and got[2]

    def _pages_closed(self, fh: int, st: FileState) -> None:
        """A handle closed: if the content changed while it was open (written here,
        maybe through another name), the pages are not known to match any version."""
        with self._mu:
            got = self._opened.pop(fh, None)
            if got is None:
                return
            path, key, _keep = got
            changed = st.version != key[1] or st.modified or st.ino != key[0]
            if changed and self._paged.get(path) == key:
                del self._paged[path]

    def _set(self, path: str, **args: Any) -> None:
        """setattr on the cluster; its reply answers the getattr libfuse sends next."""
        a = self.ns("setattr", True, path=path, **args).get("attrs")
        if a is not None and a.get("ino") not in self._states:
            self._just_made(path, a)

    # ------------------------------------------------------------ lifecycle

    def destroy(self, path: str) -> None:
        with self._mu:
            states = list(self._states.values())
        for st in states:
            try:
                st.commit(st.path)
            except Exception as exc:
                log.error("unmount: could not commit %s: %s", st.path, exc)
        self.writeback.close()
        self.cache.close()

    # ------------------------------------------------------------ attributes

    @_op
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        st = self._handles.get(fh) if fh is not None else None
        if path is None:
            if st is None:
                raise FuseOSError(errno.ENOENT)
            return self._stat(self._full_attrs(st))
        pend = self._pending_at(path)
        if pend is not None:
            return self._stat(pend.attrs)
        a = self._fresh.pop(path, None)
        if a is None:
            got = self._dirs.get(path)
            if got is not None and got[0] > time.monotonic():
                a = got[1]
            else:
                a = self.ns("getattr", path=path)["attrs"]
                self._remember_dir(path, a)
        out = self._stat(a)
        if a["type"] == "file":
            self._note_told(path, a["version"], out["st_size"])
        return out

    def _note_told(self, path: str, version: int, size: int) -> None:
        self._told_path[path] = (version, size)
        if len(self._told_path) > 100_000:
            self._told_path.clear()

    def _full_attrs(self, st: FileState) -> dict[str, Any]:
        """An open file's attributes. open() does not fetch them (file_chunks has
        what reading needs, and the kernel asks by path): fetched on first use,
        keeping the times set here meanwhile."""
        if "mode" not in st.attrs:
            if st.path is None:
                raise FuseOSError(errno.ENOENT)
            a = self.ns("getattr", path=st.path)["attrs"]
            st.attrs = {**a, **st.attrs}
        return st.attrs

    @_op
    def chmod(self, path: str | None, mode: int) -> int:
        if path is None:
            raise FuseOSError(errno.ENOENT)
        pend = self._pending_at(path)
        if pend is not None:
            with pend.mu:
                if pend.new:  # folded into the creating commit
                    pend.attrs = {**pend.attrs, "mode": stat.S_IFREG | (mode & 0o7777)}
                    pend.upload_early()
                    return 0
        self._forget(path)
        self._set(path, mode=mode & 0o7777)
        return 0

    @_op
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        if path is None:
            raise FuseOSError(errno.ENOENT)
        args: dict[str, Any] = {}
        if uid != -1:
            args["uid"] = uid
        if gid != -1:
            args["gid"] = gid
        if not args:
            return 0
        pend = self._pending_at(path)
        if pend is not None:
            with pend.mu:
                if pend.new:  # folded into the creating commit
                    pend.attrs = {**pend.attrs, **args}
                    pend.upload_early()
                    return 0
        # the kernel clears setuid/setgid itself (ATTR_KILL_SUID/SGID become a mode
        # change sent with this chown), so no extra round trip for it here
        self._forget(path)
        self._set(path, **args)
        return 0

    @_op
    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        if path is None:
            raise FuseOSError(errno.ENOENT)
        if times is None:
            at: Any = "now"
            mt: Any = "now"
        else:
            at, mt = (
                "now" if t == UTIME_NOW else None if t == UTIME_OMIT else int(t) for t in times
            )
        st = self._pending_at(path) or self._state_for_path(path)
        if st is not None:
            with st.mu:
                if st.modified:  # the commit would set mtime again: apply them after it
                    now = time.time_ns()
                    if at is not None:
                        st.deferred["atime"] = at
                        st.attrs = {**st.attrs, "atime": now if at == "now" else at}
                    if mt is not None:
                        st.deferred["mtime"] = mt
                        st.mtime_ns = now if mt == "now" else mt
                    st.upload_early()
                    return 0
        self._forget(path)
        self._set(path, atime=at, mtime=mt)
        return 0

    @_op
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if path is not None:
            self._forget(path)
        st = self._handles.get(fh) if fh is not None else None
        if st is None and path is not None:
            st = self._state_for_path(path)
            if st is None:
                a = self.ns("getattr", path=path)["attrs"]
                st = self._states.get(a["ino"])
                if st is None:
                    if a["type"] == "dir":
                        raise FuseOSError(errno.EISDIR)
                    self.ns("setattr", True, path=path, size=length)
                    return 0
        if st is None:
            raise FuseOSError(errno.ENOENT)
        st.truncate(length)
        return 0

    # ------------------------------------------------------------ directories

    @_op
    def readdir(self, path: str, fh: int) -> list[Any]:
        out: list[Any] = [".", ".."]
        seen = set()
        for e in self.client.scandir(path):
            a = e["attrs"]
            ino = self._alias.get(a["ino"], a["ino"])
            out.append((e["name"], {"st_mode": _TYPE_BITS.get(a["type"], 0), "st_ino": ino}, 0))
            seen.add(e["name"])
        if self._pending:
            with self._mu:
                local = [(p, st.ino) for p, st in self._pending.items() if _parent(p) == path]
            for p, ino in local:
                name = p.rsplit("/", 1)[1]
                if name not in seen:
                    out.append((name, {"st_mode": stat.S_IFREG, "st_ino": ino}, 0))
        return out

    @_op
    def mkdir(self, path: str, mode: int) -> int:
        self._materialize(path)
        uid, gid, mode = self._owner(path, stat.S_IFDIR | (mode & 0o7777))
        r = self.ns("mkdir", True, path=path, mode=mode & 0o7777, uid=uid, gid=gid)
        self._just_made(path, r["attrs"])
        self._forget(_parent(path))
        return 0

    @_op
    def rmdir(self, path: str) -> int:
        self._materialize(path, tree=True)  # a file made here makes it non-empty
        self._forget(path)
        self.ns("rmdir", True, path=path)
        self._forget(_parent(path))
        return 0

    # ------------------------------------------------------------ names

    @_op
    def unlink(self, path: str) -> int:
        with self._mu:
            pend = self._pending.pop(path, None)
        if pend is not None:  # never reached the cluster: nothing to tell it
            self._dir_changed(path)
            self._repath(path, None)
            return 0
        self._forget(path)
        self.ns("unlink", True, path=path)
        self._dir_changed(path)
        self._repath(path, None)
        return 0

    def rename(self, old: str, new: str) -> int:
        return self.rename2(old, new, 0)

    @_op
    def rename2(self, old: str, new: str, flags: int) -> int:
        if flags & RENAME_EXCHANGE or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FuseOSError(errno.EINVAL)
        self._materialize(old, tree=True)
        self._materialize(new, tree=True)
        self._forget_tree(old)
        self._forget_tree(new)
        self.ns("rename", True, src=old, dst=new, noreplace=bool(flags & RENAME_NOREPLACE))
        self._renames += 1  # the kernel's inodes moved with their pages: trust none
        self._forget(_parent(old))
        self._forget(_parent(new))
        self._repath(new, None)
        self._repath(old, new)
        return 0

    @_op
    def link(self, target: str, source: str) -> int:
        """A hard link: ``target`` becomes a new name of ``source``."""
        self._materialize(target)
        st = self._state_for_path(source)
        if st is not None and st.modified:
            st.commit(source)
        self._forget(source)
        r = self.ns("link", True, src=source, dst=target)
        self._just_made(target, r["attrs"])
        self._dir_changed(target)
        return 0

    @_op
    def symlink(self, target: str, source: str) -> int:
        """``target`` becomes a symlink whose content is ``source``."""
        self._materialize(target)
        uid, gid, _ = self._owner(target, stat.S_IFLNK)
        r = self.ns("symlink", True, target=source, path=target, uid=uid, gid=gid)
        self._just_made(target, r["attrs"])
        self._dir_changed(target)
        return 0

    @_op
    def readlink(self, path: str) -> str:
        return self.ns("readlink", path=path)["target"]

    @_op
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._materialize(path)
        uid, gid, mode = self._owner(path, mode)
        r = self.ns("mknod", True, path=path, mode=mode, rdev=dev, uid=uid, gid=gid)
        self._just_made(path, r["attrs"])
        self._dir_changed(path)
        return 0

    # ------------------------------------------------------------ files

    def _attach(self, info: dict[str, Any], path: str, attrs: dict[str, Any] | None) -> int:
        ino = info["ino"]
        with self._mu:
            st = self._states.get(ino)
            if st is None:
                st = FileState(
                    self,
                    ino,
                    path,
                    content_extents(info),
                    info["size"],
                    info["version"],
                    info.get("rep", 3),
                )
                self._states[ino] = st
                fresh = True
            else:
                fresh = False
            st.refs += 1
            st.path = path
            if attrs is not None:
                st.attrs = attrs
            fh = next(self._fh)
            self._handles[fh] = st
        if not fresh:
            st.refresh(info)
        return fh

    @_op
    def open(self, path: str, flags: int) -> int:
        pend = self._pending_at(path)
        if pend is not None:
            with self._mu:
                pend.refs += 1
                fh = next(self._fh)
                self._handles[fh] = pend
            if flags & os.O_TRUNC:
                pend.truncate(0)
            return fh
        info = self.ns("file_chunks", path=path)
        if info.get("locations"):
            self.cache.learn(info["locations"])
        ino = info["ino"]
        now = (info["version"], info["size"])
        told = self._told.get(ino)
        told_here = self._told_path.pop(path, None)
        if (told is not None and told != now) or (told_here is not None and told_here != now):
            self._invalidate(path)  # changed elsewhere (or via another name) since cached
        self._told.pop(ino, None)
        before = self._states.get(ino)
        fh = self._attach(info, path, None)
        st = self._handles[fh]
        self._note_pages(fh, path, ino, info["version"], before is None or not before.modified)
        if flags & os.O_ACCMODE == os.O_RDONLY and not self.keeps_cache(fh):
            st.prefetch_head()  # the first read follows at once: its fetch starts now
        if "mode" not in st.attrs:  # for fstat, even once unlinked: the lookup's, or asked
            got = self._looked.get(ino)
            if (
                got is not None
                and got[0] > time.monotonic()
                and got[1]["version"] == info["version"]
            ):
                st.attrs = {**got[1], **st.attrs}
            else:
                try:
                    self._full_attrs(st)
                except (DfsError, FuseOSError):
                    pass
        if flags & os.O_TRUNC and info["size"] + st.size:
            st.truncate(0)
        return fh

    @_op
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        uid, gid, mode = self._owner(path, mode)
        pend = self._pending_at(path)
        if pend is not None:  # made here a moment ago, not committed yet
            if flags & os.O_EXCL:
                raise FuseOSError(errno.EEXIST)
            return self.open(path, flags)
        try:
            parent = self._dir_attrs(_parent(path))
        except DfsError:
            parent = None
        if parent is not None and parent["type"] == "dir":
            return self._create_local(path, mode, uid, gid, flags, parent)
        r = self.ns(
            "create",
            True,
            path=path,
            mode=mode & 0o7777,
            uid=uid,
            gid=gid,
            exclusive=bool(flags & os.O_EXCL),
        )
        a = r["attrs"]
        self._just_made(path, a)
        self._dir_changed(path)
        if r.get("created", True):
            # a new file has no attributes: the kernel asks for this one on the first write
            self._xneg[(path, "security.capability")] = time.monotonic() + self.attr_timeout
            info = {"ino": a["ino"], "extents": [], "size": 0, "version": a["version"]}
            info["rep"] = a.get("rep", 3)
            return self._attach(info, path, a)
        info = self.ns("file_chunks", path=path)
        fh = self._attach(info, path, a)
        if flags & os.O_TRUNC:
            self._handles[fh].truncate(0)
        return fh

    def _create_local(
        self, path: str, mode: int, uid: int, gid: int, flags: int, parent: dict[str, Any]
    ) -> int:
        """Lazy create: a local record now, the file on the cluster at its first commit."""
        now = time.time_ns()
        ino = next(self._fake_ino)
        rep = int(parent.get("rep") or 3)
        attrs = {
            "ino": ino,
            "type": "file",
            "mode": stat.S_IFREG | (mode & 0o7777),
            "uid": uid,
            "gid": gid,
            "size": 0,
            "nlink": 1,
            "atime": now,
            "mtime": now,
            "ctime": now,
            "rdev": 0,
            "rep": rep,
            "version": 0,
        }
        st = FileState(self, ino, path, [], 0, 0, rep)
        st.attrs = attrs
        st.new = True
        st.exclusive = bool(flags & os.O_EXCL)
        st.modified = True
        with self._mu:
            self._states[ino] = st
            self._pending[path] = st
            st.refs += 1
            fh = next(self._fh)
            self._handles[fh] = st
        self._dir_changed(path)
        # a new file has no attributes: the kernel asks for this one on the first write
        self._xneg[(path, "security.capability")] = time.monotonic() + self.attr_timeout
        return fh

    @_op
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        st = self._handles.get(fh)
        if st is None:
            raise FuseOSError(errno.EBADF)
        return st.read(offset, size)

    @_op
    def read_into(self, size: int, offset: int, fh: int, dst: memoryview) -> int:
        """read() without the intermediate bytes: copies into the kernel's buffer."""
        st = self._handles.get(fh)
        if st is None:
            raise FuseOSError(errno.EBADF)
        return st.read_into(offset, size, dst)

    @_op
    def write(self, path: str | None, data: bytes | memoryview, offset: int, fh: int) -> int:
        """``data`` may view the kernel's buffer (DfsFUSE.write): valid only during
        this call, so it is copied, never kept."""
        st = self._handles.get(fh)
        if st is None:
            raise FuseOSError(errno.EBADF)
        if path is not None:
            st.path = path
        if fh in self._direct and st.attrs.get("mode", 0) & (stat.S_ISUID | stat.S_ISGID):
            self._kill_privs(st)
        return st.write(offset, data)

    def direct_writes(self, fh: int) -> None:
        """This handle writes with direct_io (DfsFUSE.create): the kernel leaves
        clearing setuid/setgid on write to us."""
        with self._mu:
            self._direct.add(fh)

    def _kill_privs(self, st: FileState) -> None:
        """A write by a process without CAP_FSETID (here: not root) clears setuid,
        and setgid when the group may execute, as the kernel would."""
        mode = st.attrs["mode"]
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if not mode & kill or _ctx()[0] == 0:
            return
        with st.mu:
            if st.new:  # folded into the creating commit
                st.attrs = {**st.attrs, "mode": mode & ~kill}
                return
        if st.path is not None:
            self._forget(st.path)
            self._set(st.path, mode=mode & ~kill & 0o7777)
            st.attrs = {**st.attrs, "mode": mode & ~kill}

    @_op
    def flush(self, path: str | None, fh: int) -> int:
        st = self._handles.get(fh)
        if st is not None:
            st.commit(path)
        return 0

    @_op
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        return self.flush(path, fh)

    @_op
    def release(self, path: str | None, fh: int) -> int:
        with self._mu:
            st = self._handles.pop(fh, None)
            self._direct.discard(fh)
        if st is None:
            return 0
        try:
            if st.modified:
                st.commit(path)
        finally:
            self._pages_closed(fh, st)
            with self._mu:
                st.refs -= 1
                if st.refs <= 0 and self._states.get(st.ino) is st and not st.modified:
                    del self._states[st.ino]
                    self._told[st.ino] = (st.version, st.size)
                if path is not None:
                    self._note_told(path, st.version, st.size)
        return 0

    @_op
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        st = self._handles.get(fh)
        if st is None:
            raise FuseOSError(errno.EBADF)
        end = offset + size
        if mode & FALLOC_FL_PUNCH_HOLE or mode & FALLOC_FL_ZERO_RANGE:
            if mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
                raise FuseOSError(errno.EINVAL)
            if min(end, st.size) - offset > (256 << 20):
                raise FuseOSError(errno.EOPNOTSUPP)
            st.zero_range(offset, size)
            if mode & FALLOC_FL_ZERO_RANGE and not mode & FALLOC_FL_KEEP_SIZE and end > st.size:
                st.truncate(end)
            return 0
        if mode & ~FALLOC_FL_KEEP_SIZE:
            raise FuseOSError(errno.EOPNOTSUPP)
        if not mode & FALLOC_FL_KEEP_SIZE and end > st.size:
            st.truncate(end)  # the new range reads as zeros (a hole)
        return 0

    # ------------------------------------------------------------ xattrs

    @_op
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self._materialize(path)
        self._forget(path)
        self.ns("setxattr", True, path=path, name=name, value=bytes(value), flags=options)
        self._xneg.pop((path, name), None)
        return 0

    @_op
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        key = (path, name)
        cached = name.startswith(("security.", "system."))
        if cached:
            until = self._xneg.get(key)
            if until is not None and until > time.monotonic():
                raise FuseOSError(errno.ENODATA)
        self._materialize(path)
        try:
            return self.ns("getxattr", path=path, name=name)["value"]
        except DfsError as exc:
            if cached and exc.code == "ENODATA":
                if len(self._xneg) > 100_000:
                    self._xneg.clear()
                self._xneg[key] = time.monotonic() + self.attr_timeout
            raise

    @_op
    def listxattr(self, path: str) -> list[str]:
        self._materialize(path)
        return self.ns("listxattr", path=path)["names"]

    @_op
    def removexattr(self, path: str, name: str) -> int:
        self._materialize(path)
        self._forget(path)
        self.ns("removexattr", True, path=path, name=name)
        return 0

    # ------------------------------------------------------------ file system

    @_op
    def statfs(self, path: str) -> dict[str, int]:
        now = time.monotonic()
        if self._statfs is not None and self._statfs[0] > now:
            return self._statfs[1]
        st = self.client.status()
        reg = st.get("registry") or {}
        nsinfo = st.get("namespace") or {}
        cap = int(reg.get("capacity") or 0)
        free = int(reg.get("free") or 0)
        used = int(nsinfo.get("inodes") or 0)
        files = max(used * 2, 1 << 20)
        out = {
            "f_bsize": BLOCK,
            "f_frsize": BLOCK,
            "f_blocks": cap // BLOCK,
            "f_bfree": free // BLOCK,
            "f_bavail": free // BLOCK,
            "f_files": files,
            "f_ffree": files - used,
            "f_favail": files - used,
            "f_namemax": 255,
        }
        self._statfs = (now + STATFS_TTL, out)
        return out

    @_op
    def access(self, path: str, amode: int) -> int:
        pend = self._pending_at(path)
        a = pend.attrs if pend is not None else self.ns("getattr", path=path)["attrs"]
        if amode == os.F_OK:
            return 0
        uid, gid = _ctx()
        mode = a["mode"]
        if uid == 0:
            if amode & os.X_OK and a["type"] != "dir" and not mode & 0o111:
                raise FuseOSError(errno.EACCES)
            return 0
        if uid == a["uid"]:
            bits = (mode >> 6) & 7
        elif gid == a["gid"] or a["gid"] in os.getgrouplist(_user_name(uid), gid):
            bits = (mode >> 3) & 7
        else:
            bits = mode & 7
        if amode & ~bits & 7:
            raise FuseOSError(errno.EACCES)
        return 0


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


class DfsFUSE(mfusepy.FUSE):
    """mfusepy's FUSE, passing rename's flags (RENAME_NOREPLACE) on to the operations,
    and reading into / writing from the kernel's buffers without intermediate copies."""

    def open(self, path: bytes, fip: Any) -> int:
        fi = fip.contents
        fi.fh = self.operations.open(path.decode(self.encoding, self.errors), fi.flags)
        if self.operations.keeps_cache(fi.fh):
            fi.keep_cache = 1
        return 0

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        """A file created write-only (tar, cp, dd, editors' saves) is written with
        direct_io: without it the kernel asks for security.capability before every
        write (a second FUSE round trip each time: 10 KiB writes ran at half the
        passthrough's speed). Nothing can map a write-only handle, and the new
        file has no cached pages to go stale; the daemon clears setuid/setgid on
        writes through it instead of the kernel (see DfsOperations.write)."""
        fi = fip.contents
        fi.fh = self.operations.create(path.decode(self.encoding, self.errors), mode, fi.flags)
        if fi.flags & os.O_ACCMODE == os.O_WRONLY:
            fi.direct_io = 1
            self.operations.direct_writes(fi.fh)
        return 0

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        src = (ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))
        name = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.write(name, memoryview(src).cast("B"), offset, fip.contents.fh)

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        dst = (ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))
        return self.operations.read_into(size, offset, fip.contents.fh, memoryview(dst).cast("B"))

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        ops = self.operations
        return ops.rename2(
            old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors), flags
        )


def set_metadata_deadline(seconds: float) -> None:
    """How long a metadata call keeps retrying before the mount answers EIO."""
    client_mod.META_DEADLINE = seconds
