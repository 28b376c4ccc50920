"""Moving trees of many small files in batches (`dfs put -r`, `dfs get -r`).

One file at a time costs a metadata round trip for placement, an fsync'd put on
every replica and a Raft commit: a few milliseconds each, which caps a source
tree at a few hundred files per second. A batch of files shares all three: one
``md.place`` for every chunk of the batch, one ``cs.put_many`` per chunkserver
(the batch's fsyncs issued together, so the journal commits them at once) and
one ``md.batch`` commit (one log entry, one fsync on each metadata node). The
durability contract is unchanged: a file's commit is sent only after every
chunk of the batch is fsync'd on all the replicas it needs (its directory's
replication, or the higher one of a file it replaces). Downloads mirror it:
one ``md.files_chunks`` read and one ``cs.get_many`` per chunkserver per batch,
every chunk's SHA-256 checked.

Small files go inline when the client writes inline (dfs/inline.py): their
content rides in the batch's commit ops, so a batch of them costs one
``md.batch`` and nothing on the chunkservers. A batch's inline bytes are capped
per ``md.batch`` call (INLINE_CALL_BYTES), far under the wire's 4 MiB header
limit; files the metadata service refuses inline (ENOSPC: its budget is
spent) are stored as chunks instead, in the same batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dfs import errors, inline, paths
from dfs.chunking import split_buffer
from dfs.client import Client, Uploader, commit_args, spread, transfer_timeout
from dfs.errors import DfsError
from dfs.rpc import RpcClient
from dfs.wire import Reply

BATCH_FILES = 256  # files per batch (one log entry)
BATCH_BYTES = 8 << 20  # bytes per batch: one put_many frame per server
BATCHES_IN_FLIGHT = 3  # batches worked on at once (reading, uploading, committing)
OPS_PER_CALL = 1024  # mkdirs / symlinks in one md.batch
INLINE_CALL_BYTES = 1 << 20  # inline content (encoded) in one md.batch request

T = TypeVar("T")


def _call_each(
    client: Client,
    per_server: dict[str, list[str]],
    request: Callable[[list[str]], tuple[str, dict[str, Any], list[Any], int]],
) -> dict[str, Reply | DfsError]:
    """One call per chunkserver, all in flight at once: ``request(ids)`` gives
    (op, fields, frames, bytes moved) for that server's chunk ids. A server that
    times out or is unreachable becomes a suspect (tried last, placed on less)."""
    futs = {}
    for ep, ids in per_server.items():
        op, fields, frames, nbytes = request(ids)
        futs[ep] = client.rpc.call_async(ep, op, fields, frames, timeout=transfer_timeout(nbytes))
    out: dict[str, Reply | DfsError] = {}
    for ep, fut in futs.items():
        try:
            out[ep] = RpcClient.wait(fut)
        except DfsError as exc:
            if exc.code in (errors.TIMEOUT, errors.UNAVAILABLE):
                client.suspect(ep)
            out[ep] = exc
    return out


@dataclass
class _File:
    local: Path
    remote: str
    mode: int
    data: bytes = b""
    chunks: list[tuple[str, bytes | memoryview]] = field(default_factory=list)
    blob: bytes | None = None  # its content inline (a dfs.inline blob), or chunks

    def to_chunks(self, client: Client) -> None:
        """Cut the content into chunks (it is stored on chunkservers, not inline)."""
        self.blob = None
        for piece in split_buffer(self.data, client.chunking):
            self.chunks.append((hashlib.sha256(piece).hexdigest(), piece))


@dataclass
class Failure:
    """A file (or directory, or link) that could not be written, and why."""

    path: str
    why: str


@dataclass
class LocalTree:
    """What a local directory holds, found before anything is sent (for progress)."""

    root: Path
    dirs: list[tuple[Path, int]] = field(default_factory=list)  # (path, mode), parents first
    links: list[Path] = field(default_factory=list)
    files: list[tuple[Path, int]] = field(default_factory=list)  # (path, size)
    specials: list[tuple[Path, int, int]] = field(default_factory=list)  # FIFOs...: mode, rdev

    @classmethod
    def scan(cls, root: Path) -> LocalTree:
        tree = cls(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            here = Path(dirpath)
            for name in dirnames:
                p = here / name
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    tree.links.append(p)  # os.walk does not follow it: a link it stays
                else:
                    tree.dirs.append((p, st.st_mode & 0o7777))
            for name in sorted(filenames):
                p = here / name
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    tree.links.append(p)
                elif stat.S_ISREG(st.st_mode):
                    tree.files.append((p, st.st_size))
                else:  # FIFOs, sockets, devices: kept as metadata, like the mount does
                    tree.specials.append((p, st.st_mode, st.st_rdev))
        return tree

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self.files)

    def remote(self, target: str, local: Path) -> str:
        """The remote path of ``local`` when the tree goes to ``target``."""
        return paths.normalize(f"{target}/{local.relative_to(self.root).as_posix()}")


def put_tree(
    client: Client, tree: LocalTree, target: str, progress: Callable[[int], None] | None = None
) -> list[Failure]:
    """Upload a scanned tree under ``target``: directories and links in batches, small
    files in batches, big files streamed a few at a time. Returns what failed."""
    ids = {"uid": os.getuid(), "gid": os.getgid()}
    top = client.mkdir(target, parents=True)["attrs"]
    bulk = BulkUploader(client, top["rep"], progress)
    remote_dirs = [tree.remote(target, d) for d, _ in tree.dirs]
    mkdirs = [
        {"op": "mkdir", "args": {"path": r, "parents": True, "mode": m, **ids}}
        for r, (_, m) in zip(remote_dirs, tree.dirs)
    ]
    results = bulk.run_ops(mkdirs, remote_dirs)
    failures = [f for f, _ in results if f]
    # a file gets the replication of the directory it lands in
    rep_of = {target: top["rep"]}
    rep_of.update((r, res["attrs"]["rep"]) for (_, res), r in zip(results, remote_dirs) if res)
    links = [
        {"op": "symlink", "args": {"target": os.readlink(p), "path": tree.remote(target, p), **ids}}
        for p in tree.links
    ]
    links += [
        {"op": "mknod", "args": {"path": tree.remote(target, p), "mode": m, "rdev": r, **ids}}
        for p, m, r in tree.specials
    ]
    names = [tree.remote(target, p) for p in tree.links]
    names += [tree.remote(target, p) for p, _m, _r in tree.specials]
    failures += [f for f, _ in bulk.run_ops(links, names) if f]
    small: dict[int, list[tuple[Path, str, int]]] = {}
    big: list[tuple[Path, str]] = []
    for p, size in tree.files:
        remote = tree.remote(target, p)
        rep = rep_of.get(paths.split(remote)[0])
        if rep is None:
            continue  # its directory could not be made: reported already
        if size <= client.chunking.min_size:  # one chunk at most
            small.setdefault(rep, []).append((p, remote, size))
        else:
            big.append((p, remote))
    with ThreadPoolExecutor(1, thread_name_prefix="dfs-put-big") as side:
        big_done = side.submit(_put_big, client, big, progress)  # alongside the batches
        for rep, files in small.items():
            bulk.rep = rep
            failures += bulk.upload(files)
        failures += big_done.result()
    return failures


def _put_big(
    client: Client, files: list[tuple[Path, str]], progress: Callable[[int], None] | None
) -> list[Failure]:
    """Files of several chunks, each streamed with the single-file path."""

    def one(item: tuple[Path, str]) -> Failure | None:
        try:
            client.put(item[0], item[1], progress=progress)
        except DfsError as exc:
            return Failure(item[1], exc.message)
        except OSError as exc:
            return Failure(str(item[0]), exc.strerror or str(exc))
        return None

    with ThreadPoolExecutor(4, thread_name_prefix="dfs-put") as pool:
        return [f for f in pool.map(one, files) if f is not None]


def batches(
    items: Iterable[T],
    size: Callable[[T], int],
    max_items: int = BATCH_FILES,
    max_bytes: int = BATCH_BYTES,
) -> Iterator[list[T]]:
    """Items in order, grouped at most ``max_items`` and ``max_bytes`` (by ``size``)
    a group; an item bigger than max_bytes goes alone."""
    batch: list[T] = []
    nbytes = 0
    for item in items:
        n = size(item)
        if batch and (len(batch) >= max_items or nbytes + n > max_bytes):
            yield batch
            batch, nbytes = [], 0
        batch.append(item)
        nbytes += n
    if batch:
        yield batch


def inline_first(items: Iterable[T], size: Callable[[T], int]) -> list[T]:
    """Files that may be inline first, then the others (each in their order): a
    batch of inline files then costs one metadata call and nothing on the
    chunkservers, instead of every batch paying their round trips for a few."""
    return sorted(items, key=lambda f: not inline.fits(size(f)))  # stable


class BulkUploader:
    """Puts many small files, batch by batch, several batches in flight."""

    def __init__(
        self, client: Client, rep: int, progress: Callable[[int], None] | None = None
    ) -> None:
        self.client = client
        self.rep = rep
        self.progress = progress

    def upload(self, files: Iterable[tuple[Path, str, int]]) -> list[Failure]:
        """Upload (local, remote, size) files; returns those that failed."""
        failures: list[Failure] = []
        if self.client.inline_ok():
            files = inline_first(files, lambda f: f[2])
        with ThreadPoolExecutor(BATCHES_IN_FLIGHT, thread_name_prefix="dfs-bulk") as pool:
            for got in pool.map(self._one_batch, batches(files, lambda f: f[2])):
                failures.extend(got)
        return failures

    def run_ops(
        self, ops: list[dict[str, Any]], what: list[str]
    ) -> list[tuple[Failure | None, dict[str, Any] | None]]:
        """Apply namespace ops (mkdir, symlink...) in few log entries; ``what`` names
        each. One (failure, None) or (None, result) per op, in order."""
        out: list[tuple[Failure | None, dict[str, Any] | None]] = []
        for i in range(0, len(ops), OPS_PER_CALL):
            part = ops[i : i + OPS_PER_CALL]
            r = self.client.meta.call("md.batch", {"args": {"ops": part}}, mutate=True)
            for name, res in zip(what[i : i + len(part)], r["results"]):
                out.append((None, res) if res["ok"] else (Failure(name, res["msg"]), None))
        return out

    # ------------------------------------------------------------ one batch

    def _one_batch(self, batch: list[tuple[Path, str, int]]) -> list[Failure]:
        """One batch; an error that stops it (no servers, the metadata service gone)
        fails each of its files by name, and the other batches go on."""
        try:
            return self._try_batch(batch)
        except DfsError as exc:
            return [Failure(remote, exc.message) for _local, remote, _size in batch]

    def _try_batch(self, batch: list[tuple[Path, str, int]]) -> list[Failure]:
        files, failures = self._read(batch)
        refused = self._send(files, failures)
        if refused:  # the inline budget is spent: these go to the chunkservers
            self.client.inline_spent()
            for f in refused:
                f.to_chunks(self.client)
            self._send(refused, failures)  # chunks now: nothing is refused again
        if self.progress:
            self.progress(sum(len(f.data) for f in files))
        return failures

    def _send(self, files: list[_File], failures: list[Failure]) -> list[_File]:
        """Store the chunked files' chunks, then commit every file (in as few
        md.batch calls as the inline cap allows). Failures are added to
        ``failures``; returns the files refused inline (ENOSPC)."""
        chunked = [f for f in files if f.chunks]
        stored = self._store(chunked, self._rep_for(chunked)) if chunked else {}
        refused: list[_File] = []
        calls = list(batches(files, lambda f: len(f.blob or b""), len(files), INLINE_CALL_BYTES))
        for k, call in enumerate(calls):
            ops = [self._commit_op(f) for f in call]
            mine = {cid: stored[cid] for f in call for cid, _ in f.chunks if cid in stored}
            try:
                r = self.client.meta.call(
                    "md.batch", {"args": {"ops": ops}, "stored": mine}, mutate=True
                )
            except DfsError as exc:  # the calls before it did commit their files
                failures += [Failure(f.remote, exc.message) for c in calls[k:] for f in c]
                return refused
            for f, res in zip(call, r["results"]):
                if res["ok"]:
                    if f.blob is not None:
                        self.client.stats.inline_files += 1
                elif f.blob is not None and res.get("code") == "ENOSPC":
                    refused.append(f)
                else:
                    failures.append(Failure(f.remote, res["msg"]))
        return refused

    def _read(self, batch: list[tuple[Path, str, int]]) -> tuple[list[_File], list[Failure]]:
        files, failures = [], []
        small_inline = self.client.inline_ok()
        for local, remote, _size in batch:
            try:
                with open(local, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    if not stat.S_ISREG(st.st_mode):
                        raise OSError(0, "not a regular file")
                    data = fh.read()
            except OSError as exc:
                failures.append(Failure(str(local), exc.strerror or str(exc)))
                continue
            f = _File(local, remote, st.st_mode & 0o7777, data)
            if small_inline and 0 < len(data) <= inline.INLINE_MAX:  # empty: no content at all
                f.blob = inline.encode(data)
            else:
                f.to_chunks(self.client)
            files.append(f)
        return files, failures

    def _rep_for(self, files: list[_File]) -> int:
        """Copies the batch needs: its directory's replication, or more when a file
        it replaces has its own (setrep on the file), which a commit keeps. Extra
        copies of the others are trimmed by the metadata leader later."""
        if not files:
            return self.rep
        names = [f.remote for f in files]
        infos, _locations = self.client.files_chunks(names, content=False)
        return max([self.rep] + [int(x["rep"]) for x in infos if x.get("ok")])

    def _store(self, files: list[_File], rep: int) -> dict[str, list[str]]:
        """Every chunk of the batch on ``rep`` servers (fsync'd); returns where."""
        unique = {cid: data for f in files for cid, data in f.chunks}
        if not unique:
            return {}
        fields = {"ids": list(unique), "rep": rep, "exclude": self.client.suspects()}
        placed = self.client.meta.call("md.place", fields)
        # group the missing chunks by the server each copy goes to
        per_server: dict[str, list[str]] = {}
        for cid, chain in zip(placed["missing"], placed["chains"]):
            for ep in chain:
                per_server.setdefault(ep, []).append(cid)
        replies = _call_each(
            self.client,
            per_server,
            lambda ids: (
                "cs.put_many",
                {"ids": ids, "sizes": [len(unique[c]) for c in ids]},
                [b"".join(unique[c] for c in ids)],
                sum(len(unique[c]) for c in ids),
            ),
        )
        stored: dict[str, list[str]] = {cid: [] for cid in placed["missing"]}
        failed: dict[str, DfsError] = {}
        for ep, reply in replies.items():
            if isinstance(reply, DfsError):
                if reply.code == errors.HASH_MISMATCH:
                    raise reply
                failed[ep] = reply
                continue
            for cid in per_server[ep]:
                stored[cid].append(ep)
        self._complete(unique, stored, failed, rep)
        self.client.stats.chunks_sent += len(stored)
        self.client.stats.bytes_sent += sum(len(unique[c]) for c in stored)
        self.client.stats.chunks_deduped += len(unique) - len(stored)
        return stored

    def _complete(
        self,
        unique: dict[str, bytes | memoryview],
        stored: dict[str, list[str]],
        failed: dict[str, DfsError],
        rep: int,
    ) -> None:
        """Copies a failed server did not make go to other servers, one by one
        (the single-file path's re-placement), or the batch fails."""
        short = [cid for cid, eps in stored.items() if len(eps) < rep]
        if not short:
            return
        helper = Uploader(self.client, rep)
        last = next(iter(failed.values()), None)
        for cid in short:
            stored[cid] = helper.complete(cid, unique[cid], stored[cid], list(failed), last)

    @staticmethod
    def _commit_op(f: _File) -> dict[str, Any]:
        if f.blob is not None:
            args = commit_args(f.remote, [], len(f.data), f.mode, inline=f.blob)
        else:
            extents = [[cid, len(data)] for cid, data in f.chunks]
            args = commit_args(f.remote, extents, sum(n for _, n in extents), f.mode)
        return {"op": "commit", "args": args}


# ---------------------------------------------------------------- downloads


@dataclass
class RemoteTree:
    """What a remote directory holds (paths relative to ``root``, with attrs)."""

    root: str
    dirs: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    files: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    specials: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @classmethod
    def scan(cls, client: Client, root: str) -> RemoteTree:
        tree = cls(paths.normalize(root))
        stack = [tree.root]
        while stack:
            d = stack.pop()
            for entry in client.scandir(d):
                p, a = paths.join(d, entry["name"]), entry["attrs"]
                if a["type"] == "dir":
                    tree.dirs.append(p)
                    stack.append(p)
                elif a["type"] == "symlink":
                    tree.links.append(p)
                elif a["type"] == "file":
                    tree.files.append((p, a))
                else:
                    tree.specials.append((p, a))
        tree.dirs.sort()
        return tree

    @property
    def total_bytes(self) -> int:
        return sum(a["size"] for _, a in self.files)

    def local(self, dest: Path, remote: str) -> Path:
        rel = remote[len(self.root) :].lstrip("/")
        return dest / rel if rel else dest


def get_tree(
    client: Client, tree: RemoteTree, dest: Path, progress: Callable[[int], None] | None = None
) -> list[Failure]:
    """Download a scanned tree into ``dest``: small files in batches (one metadata
    call and one chunk read per server for a whole batch), big ones streamed."""
    dest.mkdir(parents=True, exist_ok=True)
    for d in tree.dirs:
        tree.local(dest, d).mkdir(parents=True, exist_ok=True)
    failures: list[Failure] = []
    for link in tree.links:
        target = tree.local(dest, link)
        try:
            target.unlink(missing_ok=True)
            os.symlink(client.readlink(link), target)
        except (DfsError, OSError) as exc:
            failures.append(Failure(link, getattr(exc, "message", None) or str(exc)))
    for path, attrs in tree.specials:
        try:
            _make_special(tree.local(dest, path), attrs)
        except OSError as exc:
            failures.append(Failure(path, exc.strerror or str(exc)))
    small = [(p, a) for p, a in tree.files if a["size"] <= client.chunking.min_size]
    small = inline_first(small, lambda f: f[1]["size"])
    big = [(p, a) for p, a in tree.files if a["size"] > client.chunking.min_size]
    fetcher = BulkDownloader(client, tree, dest, progress)
    groups = [small[i : i + BATCH_FILES] for i in range(0, len(small), BATCH_FILES)]
    with ThreadPoolExecutor(1, thread_name_prefix="dfs-get-big") as side:
        big_done = side.submit(fetcher.get_each, big)
        with ThreadPoolExecutor(BATCHES_IN_FLIGHT, thread_name_prefix="dfs-bulk") as pool:
            for got in pool.map(fetcher.get_batch, groups):
                failures += got
        failures += big_done.result()
    return failures


def _make_special(local: Path, attrs: dict[str, Any]) -> None:
    """A FIFO or device node as the tree has it; a socket is skipped (as tar does):
    it is only a name until a program binds it."""
    if attrs["type"] == "socket":
        return
    local.unlink(missing_ok=True)
    if attrs["type"] == "fifo":
        os.mkfifo(local, attrs["mode"] & 0o7777)
    else:  # devices: needs privilege, like mknod(1)
        os.mknod(local, attrs["mode"], attrs["rdev"])


class BulkDownloader:
    """Fetches files of a RemoteTree batch by batch."""

    def __init__(
        self,
        client: Client,
        tree: RemoteTree,
        dest: Path,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.client = client
        self.tree = tree
        self.dest = dest
        self.progress = progress

    def get_batch(self, files: list[tuple[str, dict[str, Any]]]) -> list[Failure]:
        infos, locations = self.client.files_chunks([p for p, _ in files])
        wanted: dict[str, int] = {}
        for info in infos:
            if info["ok"]:
                wanted.update((c, n) for c, n in info["extents"] if c)
        chunks = self._fetch(wanted, locations) if wanted else {}
        failures = []
        for (path, attrs), info in zip(files, infos):
            if not info["ok"]:
                failures.append(Failure(path, info["msg"]))
                continue
            lost = [c for c, _ in info["extents"] if c and c not in chunks]
            if lost:
                failures.append(Failure(path, f"no replica could serve chunk {lost[0][:16]}..."))
                continue
            try:
                local = self.tree.local(self.dest, path)
                if info.get("inline") is not None:
                    # zeros past the content (truncated up) become a sparse tail
                    content = inline.head(info["inline"], info["size"])
                    n = self._write(local, [content], attrs["mode"], size=info["size"])
                else:
                    pieces = [bytes(n) if c is None else chunks[c][:n] for c, n in info["extents"]]
                    n = self._write(local, pieces, attrs["mode"])
            except (DfsError, OSError) as exc:
                failures.append(Failure(path, getattr(exc, "message", None) or str(exc)))
                continue
            if self.progress:
                self.progress(n)
        return failures

    def get_each(self, files: list[tuple[str, dict[str, Any]]]) -> list[Failure]:
        """Big files, a few at a time, each through the streaming read path."""

        def one(item: tuple[str, dict[str, Any]]) -> Failure | None:
            path, attrs = item
            local = self.tree.local(self.dest, path)
            try:
                self.client.get(path, local, progress=self.progress)
                os.chmod(local, attrs["mode"] & 0o7777)
            except (DfsError, OSError) as exc:
                return Failure(path, getattr(exc, "message", None) or str(exc))
            return None

        with ThreadPoolExecutor(4, thread_name_prefix="dfs-get") as pool:
            return [f for f in pool.map(one, files) if f is not None]

    def _fetch(
        self, wanted: dict[str, int], locations: dict[str, list[str]]
    ) -> dict[str, bytes | memoryview]:
        """Every wanted chunk, verified: one cs.get_many per server (each chunk from
        one of its replicas, spread evenly), then one by one for what that missed."""
        per_server: dict[str, list[str]] = {}
        for cid in wanted:
            reps = self.client.healthy_first(spread(locations.get(cid), cid) or [])
            if reps:
                ep = min(reps[:2], key=lambda e: len(per_server.get(e, ())))
                per_server.setdefault(ep, []).append(cid)
        replies = _call_each(
            self.client,
            per_server,
            lambda ids: ("cs.get_many", {"ids": ids}, [], sum(wanted[c] for c in ids)),
        )
        got: dict[str, bytes | memoryview] = {}
        for ep, reply in replies.items():
            if isinstance(reply, DfsError):
                continue  # each of its chunks is fetched alone below
            blob, at = memoryview(reply.frames[0]), 0
            for cid, n in zip(per_server[ep], reply.fields["sizes"]):
                if n < 0:
                    continue
                data = blob[at : at + n]
                at += n
                if hashlib.sha256(data).hexdigest() == cid:
                    got[cid] = data
                else:
                    self.client.stats.bad_replicas += 1
                    self.client.report_bad(cid, ep)
        for cid in wanted:
            if cid not in got:
                with contextlib.suppress(DfsError):  # its files fail, the rest go on
                    got[cid] = self.client.fetch_chunk(cid, locations.get(cid))
        self.client.stats.chunks_fetched += len(got)
        return got

    @staticmethod
    def _write(
        local: Path | str, pieces: Iterable[bytes | memoryview], mode: int, size: int | None = None
    ) -> int:
        """Into a temp file beside ``local``, renamed into place (never half a file),
        zero-extended (sparse) up to ``size`` if given; returns the file's length.
        Plain strings and a counter, not pathlib and os.urandom: per small file those
        cost half as much again as the writing itself."""
        parent, name = os.path.split(local)
        tmp = os.path.join(parent, f".{name}.dfs-part-{os.getpid()}-{next(_SERIAL)}")
        total = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o7777)
        try:
            try:
                for piece in pieces:
                    view = memoryview(piece)
                    total += len(view)
                    while view:
                        view = view[os.write(fd, view) :]
                if size is not None and size > total:
                    os.ftruncate(fd, size)
                    total = size
                os.fchmod(fd, mode & 0o7777)  # not narrowed by the umask
            finally:
                os.close(fd)
            os.replace(tmp, local)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return total


_SERIAL = itertools.count()  # temp file names (next() on a count is atomic in CPython)
