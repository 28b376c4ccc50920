"""The chunkserver's on-disk chunk store: content-addressed, checksummed, crash-safe.

Layout under ``root``::

    chunks/abc/<id>            one file per chunk (id = SHA-256 hex of the content), in
                               4096 directories made when the store is created, so a
                               put never creates (and fsyncs) a directory
    chunks/abc/.tmp.<id>.<r>   a write in progress (removed at open after a crash)
    quarantine/<id>.<ns>       chunks that failed a check: moved aside, never deleted

Each chunk file is a 32-byte little-endian header followed by the stored bytes::

    0  4s  magic  b"DFSC"
    4  B   format version (1)
    5  B   codec: 0 = raw, 1 = zstd
    6  H   reserved, must be 0
    8  Q   stored length (bytes after the header)
    16 Q   original (uncompressed) length
    24 Q   xxh3_64 of the stored bytes

Every header field is checked on read (magic, version, codec, reserved, stored length
== file size - 32, raw => stored == original, decompressed length == original), so a
flipped bit anywhere in the file is caught without hashing the whole chunk with SHA-256.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash
import zstandard

from dfs import errors
from dfs.errors import DfsError
from dfs.fsutil import fsync_dir, fsync_path

MAGIC = b"DFSC"
FORMAT_VERSION = 1
CODEC_RAW = 0
CODEC_ZSTD = 1
HEADER = struct.Struct("<4sBBHQQQ")
HEADER_SIZE = HEADER.size  # 32
DEFAULT_MAX_CHUNK = 64 * 1024 * 1024

ZSTD_LEVEL = 1
# keep zstd only when it saves at least 5%
MIN_SAVING = 0.05
# chunks at least this big are probed with a few samples before compressing it all,
# so incompressible (random / already-compressed) data costs next to nothing
SAMPLE_FROM = 256 * 1024
SAMPLE_SIZE = 16 * 1024
SAMPLE_COUNT = 4

TMP_PREFIX = ".tmp."
SYNC_THREADS = 16  # fsyncs of one put_many in flight at once
_ID_RE = re.compile(r"[0-9a-fA-F]{64}")
_LOWER_ID_RE = re.compile(r"[0-9a-f]{64}")
FANOUT_CHARS = 3  # chunks/abc/<id>: 4096 directories
_FANOUT_RE = re.compile(r"[0-9a-f]{3}")


class _Corrupt(Exception):
    """Internal: a stored chunk failed a check (the message says which)."""


def validate_id(chunk_id: object) -> str:
    """Return the chunk id in canonical form (64 lowercase hex chars) or raise EINVAL.

    Uppercase hex is accepted and normalised to lowercase; anything else (other
    lengths, non-hex, whitespace, non-str) is refused, so an id can never name a path.
    """
    if not isinstance(chunk_id, str) or not _ID_RE.fullmatch(chunk_id):
        shown = repr(chunk_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise DfsError("EINVAL", f"invalid chunk id {shown}: want 64 hex characters")
    return chunk_id.lower()


def _as_bytes_view(data: object) -> memoryview:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DfsError("EINVAL", f"chunk data must be bytes-like, got {type(data).__name__}")
    mv = memoryview(data)
    if not mv.c_contiguous:
        raise DfsError("EINVAL", "chunk data must be a contiguous buffer")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def _is_nospace(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _writev_all(fd: int, bufs: list[bytes | memoryview]) -> None:
    while bufs:
        written = os.writev(fd, bufs)
        while bufs and written >= len(bufs[0]):
            written -= len(bufs[0])
            bufs.pop(0)
        if bufs and written:
            bufs[0] = memoryview(bufs[0])[written:]


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class ChunkStore:
    """Chunks on one local disk, keyed by SHA-256; safe to call from many threads."""

    def __init__(
        self,
        root: Path | str,
        capacity: int | None = None,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        compress: bool = True,
    ) -> None:
        self.root = Path(root)
        self.chunks_dir = self.root / "chunks"
        self.quarantine_dir = self.root / "quarantine"
        self.max_chunk = int(max_chunk)
        self.compress = compress
        for d in (self.root, self.chunks_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        if capacity is None:
            st = os.statvfs(self.root)
            capacity = st.f_blocks * st.f_frsize
        if capacity < 0:
            raise DfsError("EINVAL", f"capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)

        self._lock = threading.Lock()  # guards the counters, sets and id-lock table
        self._sync_pool: ThreadPoolExecutor | None = None  # made on first put_many
        self._id_locks: dict[str, list] = {}  # id -> [Lock, users]
        self._local = threading.local()  # per-thread zstd (de)compressors
        self._used = 0
        self._reserved = 0  # bytes of puts in flight, counted against capacity
        self._count = 0
        self._corrupt: set[str] = set()
        self.temp_files_removed = 0
        self._scan()

    # ---- opening -------------------------------------------------------------------

    def _scan(self) -> None:
        """Make the fan-out directories (once), remove temp files left by a crash,
        and count chunks and bytes, once."""
        self._make_fanout()
        used = count = removed = 0
        for d in os.scandir(self.chunks_dir):
            if not (d.is_dir(follow_symlinks=False) and _FANOUT_RE.fullmatch(d.name)):
                continue
            for ent in os.scandir(d.path):
                if ent.name.startswith(TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(ent.path)
                    removed += 1
                elif _LOWER_ID_RE.fullmatch(ent.name) and ent.is_file(follow_symlinks=False):
                    used += ent.stat(follow_symlinks=False).st_size
                    count += 1
        for ent in os.scandir(self.quarantine_dir):
            cid = ent.name.split(".", 1)[0]
            if _LOWER_ID_RE.fullmatch(cid) and not self._path(cid).exists():
                self._corrupt.add(cid)
        self._used, self._count, self.temp_files_removed = used, count, removed

    # ---- helpers -------------------------------------------------------------------

    validate_id = staticmethod(validate_id)

    def _path(self, cid: str) -> Path:
        return self.chunks_dir / cid[:FANOUT_CHARS] / cid

    def _make_fanout(self) -> None:
        marker = self.chunks_dir / ".fanout"
        if marker.exists():
            return
        for i in range(16**FANOUT_CHARS):
            (self.chunks_dir / f"{i:0{FANOUT_CHARS}x}").mkdir(exist_ok=True)
        fsync_dir(self.chunks_dir)
        marker.touch()
        fsync_dir(self.chunks_dir)

    @contextlib.contextmanager
    def _id_lock(self, cid: str) -> Iterator[None]:
        """Serialise writers of one id (put/delete/quarantine); readers need no lock."""
        with self._lock:
            ent = self._id_locks.get(cid)
            if ent is None:
                ent = self._id_locks[cid] = [threading.Lock(), 0]
            ent[1] += 1
        ent[0].acquire()
        try:
            yield
        finally:
            ent[0].release()
            with self._lock:
                ent[1] -= 1
                if ent[1] == 0:
                    del self._id_locks[cid]

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "cctx", None)
        if c is None:
            c = self._local.cctx = zstandard.ZstdCompressor(
                level=ZSTD_LEVEL, write_checksum=False, write_content_size=True
            )
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "dctx", None)
        if d is None:
            d = self._local.dctx = zstandard.ZstdDecompressor()
        return d

    def _encode(self, mv: memoryview) -> tuple[int, memoryview | bytes]:
        """Pick the codec: zstd only when it saves >= MIN_SAVING, else the bytes as given."""
        n = mv.nbytes
        if not self.compress or n == 0:
            return CODEC_RAW, mv
        cctx = self._compressor()
        if n >= SAMPLE_FROM:
            step = (n - SAMPLE_SIZE) // (SAMPLE_COUNT - 1)
            sampled = 0
            for i in range(SAMPLE_COUNT):
                start = i * step
                sampled += len(cctx.compress(mv[start : start + SAMPLE_SIZE]))
            if sampled > SAMPLE_COUNT * SAMPLE_SIZE * (1 - MIN_SAVING / 2):
                return CODEC_RAW, mv
        packed = cctx.compress(mv)
        if len(packed) <= n * (1 - MIN_SAVING):
            return CODEC_ZSTD, packed
        return CODEC_RAW, mv

    def _ensure_dir(self, cid: str) -> Path:
        return self.chunks_dir / cid[:FANOUT_CHARS]  # made when the store was created

    def _reserve(self, cid: str, nbytes: int) -> None:
        with self._lock:
            if self._used + self._reserved + nbytes > self.capacity:
                raise DfsError(
                    "ENOSPC",
                    f"no space for chunk {cid}: needs {nbytes} bytes, "
                    f"{max(0, self.capacity - self._used - self._reserved)} free "
                    f"of capacity {self.capacity}",
                    needed=nbytes,
                    capacity=self.capacity,
                    used=self._used,
                )
            self._reserved += nbytes

    # ---- put -----------------------------------------------------------------------

    def put(self, chunk_id: str, data: bytes | bytearray | memoryview, verify: bool = True) -> bool:
        """Store a chunk durably; False when it was already stored (nothing written)."""
        cid = validate_id(chunk_id)
        mv = _as_bytes_view(data)
        n = mv.nbytes
        if n > self.max_chunk:
            raise DfsError(errors.TOO_BIG, f"chunk of {n} bytes over the limit {self.max_chunk}")
        if verify:
            actual = hashlib.sha256(mv).hexdigest()
            if actual != cid:
                raise DfsError(
                    errors.HASH_MISMATCH,
                    f"content hashes to {actual}, not to the id {cid}",
                )
        path = self._path(cid)
        with self._id_lock(cid):
            if path.exists():
                self._touch(path)  # a re-put keeps the copy from GC for its writer
                # its name may come from a put_many whose directory fsync is still to
                # come: make it durable before saying "stored" (durability contract)
                fsync_dir(path.parent)
                return False
            codec, payload = self._encode(mv)
            stored = len(payload) if isinstance(payload, bytes) else payload.nbytes
            header = HEADER.pack(
                MAGIC, FORMAT_VERSION, codec, 0, stored, n, xxhash.xxh3_64_intdigest(payload)
            )
            total = HEADER_SIZE + stored
            self._reserve(cid, total)
            try:
                self._write_file(cid, path, header, payload)
            except BaseException:
                with self._lock:
                    self._reserved -= total
                raise
            with self._lock:
                self._reserved -= total
                self._used += total
                self._count += 1
                self._corrupt.discard(cid)
        return True

    def put_many(self, items: list[tuple[str, memoryview]], verify: bool = True) -> list[bool]:
        """Store many (small) chunks durably, their fsyncs issued all at once so the
        file system commits them together: write every temp file, fsync them in
        parallel, rename them into place, fsync their directories in parallel.
        The order is the one of put (content durable before its name appears,
        the name durable before we answer). Returns created flags."""
        staged: list[tuple[int, str, Path, int]] = []  # (index, id, temp, bytes)
        present: set[Path] = set()  # directories of chunks found already stored
        created = [False] * len(items)
        try:
            for i, (cid, mv) in enumerate(items):
                cid = validate_id(cid)
                if verify and hashlib.sha256(mv).hexdigest() != cid:
                    raise DfsError(errors.HASH_MISMATCH, f"chunk #{i} does not hash to {cid}")
                if mv.nbytes > self.max_chunk:
                    raise DfsError(errors.TOO_BIG, f"chunk #{i} is over {self.max_chunk} bytes")
                if self._path(cid).exists():
                    self._touch(self._path(cid))
                    present.add(self._path(cid).parent)  # fsync'd below, as in put
                    continue
                codec, payload = self._encode(mv)
                stored = len(payload) if isinstance(payload, bytes) else payload.nbytes
                header = HEADER.pack(
                    MAGIC, FORMAT_VERSION, codec, 0, stored, mv.nbytes,
                    xxhash.xxh3_64_intdigest(payload),
                )  # fmt: skip
                total = HEADER_SIZE + stored
                self._reserve(cid, total)
                try:
                    tmp = self._write_temp(cid, header, payload)
                except BaseException:
                    with self._lock:
                        self._reserved -= total
                    raise
                staged.append((i, cid, tmp, total))
            self._in_parallel(fsync_path, [tmp for _i, _c, tmp, _n in staged])
            for i, cid, tmp, _n in staged:
                with self._id_lock(cid):
                    path = self._path(cid)
                    if path.exists():  # a concurrent put stored it meanwhile
                        os.unlink(tmp)
                    else:
                        os.rename(tmp, path)
                        created[i] = True
            dirs = present | {tmp.parent for _i, _c, tmp, _n in staged}
            self._in_parallel(fsync_dir, list(dirs))
        except OSError as exc:
            if _is_nospace(exc):
                raise DfsError("ENOSPC", f"disk full while writing chunks under {self.root}")
            raise DfsError("EIO", f"writing chunks: {exc}")
        finally:
            with self._lock:
                for i, cid, _tmp, n in staged:
                    self._reserved -= n
                    if created[i]:
                        self._used += n
                        self._count += 1
                        self._corrupt.discard(cid)
            for i, _cid, tmp, _n in staged:
                if not created[i]:  # a temp file not renamed into place
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
        return created

    def _in_parallel(self, fn: Callable[[Path], None], items: list[Path]) -> None:
        """fn on each item from a small thread pool (fsyncs wait on the disk, not
        the GIL, and the file system's journal commits concurrent ones together)."""
        if len(items) <= 1:
            for it in items:
                fn(it)
            return
        with self._lock:
            if self._sync_pool is None:
                self._sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="fsync")
        for fut in [self._sync_pool.submit(fn, it) for it in items]:
            fut.result()

    @staticmethod
    def _touch(path: Path) -> None:
        """Mark a copy fresh (atime), so GC's delete_unless_newer keeps it for the
        writer about to commit; content and mtime stay."""
        with contextlib.suppress(OSError):
            os.utime(path, ns=(time.time_ns(), os.stat(path).st_mtime_ns))

    def _write_temp(self, cid: str, header: bytes, payload: bytes | memoryview) -> Path:
        """A chunk's bytes in a temp file of its directory, not yet fsync'd."""
        tmp = self._ensure_dir(cid) / f"{TMP_PREFIX}{cid}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _writev_all(fd, [header, memoryview(payload)])
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _write_file(self, cid: str, path: Path, header: bytes, payload: bytes | memoryview) -> None:
        tmp: Path | None = None
        try:
            d = self._ensure_dir(cid)
            tmp = d / f"{TMP_PREFIX}{cid}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _writev_all(fd, [header, memoryview(payload)])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            tmp = None
            fsync_dir(d)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if _is_nospace(exc):
                raise DfsError(
                    "ENOSPC", f"disk full while writing chunk {cid} under {self.root}: {exc}"
                )
            raise DfsError("EIO", f"writing chunk {cid}: {exc}")
        except BaseException:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise

    # ---- reading -------------------------------------------------------------------

    def _open(self, cid: str) -> int:
        try:
            return os.open(self._path(cid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if cid in self._corrupt:
                raise DfsError(errors.CORRUPT, f"chunk {cid} is corrupt (quarantined)")
            raise DfsError("ENOENT", f"no chunk {cid}")

    def _check_header(self, raw: bytes, file_size: int) -> tuple[int, int, int, int]:
        if len(raw) < HEADER_SIZE:
            raise _Corrupt(f"file of {file_size} bytes is shorter than the header")
        magic, version, codec, reserved, stored, orig, checksum = HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise _Corrupt(f"bad magic {magic!r}")
        if version != FORMAT_VERSION:
            raise _Corrupt(f"unknown format version {version}")
        if codec not in (CODEC_RAW, CODEC_ZSTD) or reserved != 0:
            raise _Corrupt(f"bad codec {codec} / reserved {reserved}")
        if stored != file_size - HEADER_SIZE:
            raise _Corrupt(
                f"header says {stored} stored bytes, file holds {file_size - HEADER_SIZE}"
            )
        if codec == CODEC_RAW and stored != orig:
            raise _Corrupt(f"raw chunk with stored {stored} != original {orig}")
        return codec, stored, orig, checksum

    def _load(self, cid: str) -> tuple[bytes, int]:
        """The chunk's full content, checksum-verified; quarantines it on failure."""
        fd = self._open(cid)
        try:
            st = os.fstat(fd)
            try:
                codec, stored, orig, checksum = self._check_header(
                    _pread_exact(fd, HEADER_SIZE, 0), st.st_size
                )
                payload = _pread_exact(fd, stored, HEADER_SIZE)
                if len(payload) != stored:
                    raise _Corrupt("file shorter than its header says")
                if xxhash.xxh3_64_intdigest(payload) != checksum:
                    raise _Corrupt("xxh3 checksum of the stored bytes does not match")
                if codec == CODEC_ZSTD:
                    try:
                        content = self._decompressor().decompress(payload, max_output_size=orig)
                    except zstandard.ZstdError as exc:
                        raise _Corrupt(f"zstd: {exc}")
                    if len(content) != orig:
                        raise _Corrupt(f"decompressed to {len(content)} bytes, want {orig}")
                else:
                    content = payload
            except _Corrupt as exc:
                self._quarantine(cid, st, str(exc))
                raise DfsError(errors.CORRUPT, f"chunk {cid} is corrupt: {exc}; quarantined")
        finally:
            os.close(fd)
        return content, st.st_ino

    def get(self, chunk_id: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes [offset, offset+length) of a chunk (short at the end, like pread)."""
        cid = validate_id(chunk_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise DfsError("EINVAL", f"bad offset {offset!r}")
        if length is not None and (
            isinstance(length, bool) or not isinstance(length, int) or length < 0
        ):
            raise DfsError("EINVAL", f"bad length {length!r}")
        content, _ = self._load(cid)
        size = len(content)
        if offset > size:
            raise DfsError("EINVAL", f"offset {offset} past the end of chunk {cid} ({size} bytes)")
        end = size if length is None else min(size, offset + length)
        if offset == 0 and end == size:
            return content
        return content[offset:end]

    def verify(self, chunk_id: str) -> bool:
        """Full check for the scrubber: checksum, header and SHA-256 of the content."""
        cid = validate_id(chunk_id)
        try:
            content, ino = self._load(cid)
        except DfsError as exc:
            if exc.code == errors.CORRUPT:
                return False
            raise
        if hashlib.sha256(content).hexdigest() != cid:
            try:
                st = os.stat(self._path(cid))
            except FileNotFoundError:
                return False
            if st.st_ino == ino:
                self._quarantine(cid, st, "SHA-256 of the content does not match the id")
            return False
        return True

    def _quarantine(self, cid: str, seen: os.stat_result, reason: str) -> None:
        """Move a bad chunk file aside (never delete it) and stop serving the id."""
        path = self._path(cid)
        with self._id_lock(cid):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return
            if (st.st_ino, st.st_dev) != (seen.st_ino, seen.st_dev):
                return  # replaced meanwhile (deleted and put again): not ours to move
            dest = self.quarantine_dir / f"{cid}.{time.time_ns()}"
            os.rename(path, dest)
            # a note for whoever reads the quarantine directory later
            with contextlib.suppress(OSError):
                (self.quarantine_dir / f"{dest.name}.reason").write_text(reason + "\n")
            with contextlib.suppress(OSError):
                fsync_dir(self.quarantine_dir)
                fsync_dir(path.parent)
            with self._lock:
                self._used -= st.st_size
                self._count -= 1
                self._corrupt.add(cid)

    # ---- other operations ------------------------------------------------------------

    def has(self, ids: Iterable[str]) -> list[bool]:
        """For each id, whether a (not known-corrupt) copy is stored."""
        cids = [validate_id(i) for i in ids]
        return [self._path(c).exists() for c in cids]

    def delete(self, ids: Iterable[str]) -> int:
        """Delete chunks; returns how many were stored (missing ids are not an error)."""
        return self.delete_unless_newer(ids, None)[0]

    def delete_unless_newer(
        self, ids: Iterable[str], seconds: float | None
    ) -> tuple[int, list[str]]:
        """Delete chunks, except those written or re-put less than ``seconds`` ago
        (a writer may be about to commit them: a re-put only refreshes the atime,
        so both times count). Returns (deleted, kept ids)."""
        cids = [validate_id(i) for i in ids]
        deleted = 0
        kept: list[str] = []
        dirs: set[Path] = set()
        for cid in cids:
            path = self._path(cid)
            with self._id_lock(cid):
                try:
                    st = os.stat(path)
                    size = st.st_size
                    fresh = max(st.st_mtime, st.st_atime)
                    if seconds is not None and time.time() - fresh < seconds:
                        kept.append(cid)
                        continue
                    os.unlink(path)
                except FileNotFoundError:
                    with self._lock:
                        self._corrupt.discard(cid)
                    continue
                with self._lock:
                    self._used -= size
                    self._count -= 1
                    self._corrupt.discard(cid)
            deleted += 1
            dirs.add(path.parent)
        for d in dirs:
            with contextlib.suppress(OSError):
                fsync_dir(d)
        return deleted, kept

    def size_of(self, chunk_id: str) -> int:
        """The chunk's original (uncompressed) length, from its header."""
        cid = validate_id(chunk_id)
        fd = self._open(cid)
        try:
            st = os.fstat(fd)
            try:
                _, _, orig, _ = self._check_header(_pread_exact(fd, HEADER_SIZE, 0), st.st_size)
            except _Corrupt as exc:
                self._quarantine(cid, st, str(exc))
                raise DfsError(errors.CORRUPT, f"chunk {cid} is corrupt: {exc}; quarantined")
        finally:
            os.close(fd)
        return orig

    def stat(self) -> dict[str, int]:
        """Capacity and usage; free is also bounded by what the filesystem has left."""
        with self._lock:
            used, reserved, count, corrupt = (
                self._used,
                self._reserved,
                self._count,
                len(self._corrupt),
            )
        st = os.statvfs(self.root)
        free = max(0, min(self.capacity - used - reserved, st.f_bavail * st.f_frsize))
        return {
            "capacity": self.capacity,
            "used": used,
            "free": free,
            "chunks": count,
            "corrupt": corrupt,
        }

    def list_ids(self, after: str | None = None, limit: int = 1000) -> tuple[list[str], bool]:
        """Stored ids > after, in sorted order, at most limit; more=True if others follow."""
        if after is not None:
            after = validate_id(after)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise DfsError("EINVAL", f"limit must be a positive int, got {limit!r}")
        out: list[str] = []
        first = after[:FANOUT_CHARS] if after else ""
        for d in self._sorted_hex_dirs(self.chunks_dir):
            if d < first:
                continue
            try:
                names = os.listdir(self.chunks_dir / d)
            except FileNotFoundError:
                continue
            for name in sorted(names):
                if not _LOWER_ID_RE.fullmatch(name) or (after and name <= after):
                    continue
                if len(out) == limit:
                    return out, True
                out.append(name)
        return out, False

    @staticmethod
    def _sorted_hex_dirs(d: Path) -> list[str]:
        try:
            return sorted(n for n in os.listdir(d) if _FANOUT_RE.fullmatch(n))
        except FileNotFoundError:
            return []
