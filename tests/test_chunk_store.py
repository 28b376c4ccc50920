"""ChunkStore on a real disk: contents, integrity, crash leftovers, full disks, threads."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chunkserver.store import (
    CODEC_RAW,
    CODEC_ZSTD,
    HEADER,
    HEADER_SIZE,
    ChunkStore,
    validate_id,
)
from dfs import errors
from dfs.errors import DfsError


def cid_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_files(root: Path) -> list[Path]:
    """Chunk files and leftovers (not the store's own fan-out marker)."""
    return sorted(p for p in (root / "chunks").rglob("*") if p.is_file() and p.name != ".fanout")


def header_of(store: ChunkStore, cid: str) -> tuple:
    return HEADER.unpack((store.chunks_dir / cid[:3] / cid).read_bytes()[:HEADER_SIZE])


def compressible(n: int, seed: int = 0) -> bytes:
    line = f"line {seed}: the quick brown fox jumps over the lazy dog\n".encode()
    return (line * (n // len(line) + 1))[:n]


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path / "data")


def test_put_get_has_delete(store: ChunkStore) -> None:
    data = os.urandom(100_000)
    cid = cid_of(data)
    assert store.put(cid, data) is True
    assert store.get(cid) == data
    assert store.has([cid, "0" * 64]) == [True, False]
    assert store.size_of(cid) == len(data)
    st = store.stat()
    assert st["chunks"] == 1 and st["used"] == HEADER_SIZE + len(data)
    assert st["free"] <= st["capacity"] - st["used"]
    assert store.delete([cid, "0" * 64]) == 1
    assert store.has([cid]) == [False]
    assert store.stat()["chunks"] == 0 and store.stat()["used"] == 0
    with pytest.raises(DfsError) as e:
        store.get(cid)
    assert e.value.code == "ENOENT"
    assert store.delete([cid]) == 0


def test_empty_chunk_and_memoryview(store: ChunkStore) -> None:
    assert store.put(cid_of(b""), b"")
    assert store.get(cid_of(b"")) == b""
    data = bytearray(os.urandom(5000))
    assert store.put(cid_of(bytes(data)), memoryview(data))
    assert store.get(cid_of(bytes(data))) == data


def test_dedup_returns_false_and_does_not_write(store: ChunkStore) -> None:
    data = compressible(50_000)
    cid = cid_of(data)
    assert store.put(cid, data) is True
    path = chunk_files(store.root)[0]
    mtime = path.stat().st_mtime_ns
    assert store.put(cid, data) is False
    assert path.stat().st_mtime_ns == mtime
    assert store.stat()["chunks"] == 1


def test_hash_mismatch_refused_nothing_written(store: ChunkStore) -> None:
    with pytest.raises(DfsError) as e:
        store.put(cid_of(b"other"), b"data")
    assert e.value.code == errors.HASH_MISMATCH
    assert chunk_files(store.root) == []
    assert store.stat()["chunks"] == 0 and store.stat()["used"] == 0


def test_too_big(tmp_path: Path) -> None:
    s = ChunkStore(tmp_path, max_chunk=1000)
    data = os.urandom(1001)
    with pytest.raises(DfsError) as e:
        s.put(cid_of(data), data)
    assert e.value.code == errors.TOO_BIG
    assert chunk_files(tmp_path) == []


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "../" + "a" * 61,
        "a" * 63,
        "a" * 65,
        "g" * 64,
        " " + "a" * 63,
        "a" * 64 + "\n",
        "/" + "a" * 63,
        "",
        None,
        123,
        b"a" * 64,
        ["a" * 64],
    ],
)
def test_bad_ids_refused(store: ChunkStore, bad: object) -> None:
    for call in (
        lambda: validate_id(bad),
        lambda: store.put(bad, b"x"),  # type: ignore[arg-type]
        lambda: store.get(bad),  # type: ignore[arg-type]
        lambda: store.has([bad]),  # type: ignore[list-item]
        lambda: store.delete([bad]),  # type: ignore[list-item]
        lambda: store.verify(bad),  # type: ignore[arg-type]
        lambda: store.size_of(bad),  # type: ignore[arg-type]
    ):
        with pytest.raises(DfsError) as e:
            call()
        assert e.value.code == "EINVAL"
    assert chunk_files(store.root) == []


def test_uppercase_id_is_normalised(store: ChunkStore) -> None:
    data = b"hello"
    cid = cid_of(data)
    assert validate_id(cid.upper()) == cid
    assert store.put(cid.upper(), data) is True
    assert store.put(cid, data) is False
    assert store.get(cid.upper()) == data
    assert store.list_ids(None, 10) == ([cid], False)


def test_range_reads(store: ChunkStore) -> None:
    for data in (os.urandom(10_000), compressible(10_000)):
        cid = cid_of(data)
        store.put(cid, data)
        assert store.get(cid, 0, 10) == data[:10]
        assert store.get(cid, 9990) == data[9990:]
        assert store.get(cid, 500, 1000) == data[500:1500]
        assert store.get(cid, 9_000, 5_000) == data[9_000:]  # short at the end, like pread
        assert store.get(cid, 10_000) == b""
        assert store.get(cid, 10, 0) == b""
        for off, ln in ((-1, None), (10_001, None), (0, -5), ("1", None), (0, 1.5)):
            with pytest.raises(DfsError) as e:
                store.get(cid, off, ln)  # type: ignore[arg-type]
            assert e.value.code == "EINVAL"


def test_list_paging(store: ChunkStore) -> None:
    ids = set()
    for i in range(57):
        data = f"chunk {i}".encode()
        ids.add(cid_of(data))
        store.put(cid_of(data), data)
    got: list[str] = []
    after = None
    pages = 0
    while True:
        page, more = store.list_ids(after, 10)
        got += page
        pages += 1
        if not more:
            break
        after = page[-1]
    assert got == sorted(ids)
    assert pages == 6
    assert store.list_ids(None, 57) == (sorted(ids), False)
    assert store.list_ids(None, 56) == (sorted(ids)[:56], True)
    mid = sorted(ids)[20]
    assert store.list_ids(mid, 1000) == (sorted(ids)[21:], False)
    assert store.list_ids("f" * 64, 10) == ([], False)
    for bad in (0, -1, "5"):
        with pytest.raises(DfsError):
            store.list_ids(None, bad)  # type: ignore[arg-type]
    with pytest.raises(DfsError):
        store.list_ids("../x", 10)


def test_compressible_stored_smaller_random_raw(store: ChunkStore) -> None:
    text = compressible(1 << 20)
    rnd = os.urandom(1 << 20)
    small_text = compressible(3000, seed=1)
    store.put(cid_of(text), text)
    store.put(cid_of(rnd), rnd)
    store.put(cid_of(small_text), small_text)
    h_text, h_rnd, h_small = (header_of(store, cid_of(d)) for d in (text, rnd, small_text))
    assert h_text[2] == CODEC_ZSTD and h_text[4] < len(text) // 10 and h_text[5] == len(text)
    assert h_small[2] == CODEC_ZSTD and h_small[4] < len(small_text)
    assert h_rnd[2] == CODEC_RAW and h_rnd[4] == len(rnd)
    assert store.stat()["used"] < len(rnd) + len(text) // 5
    assert store.get(cid_of(text)) == text and store.verify(cid_of(text))
    assert store.get(cid_of(rnd)) == rnd


def test_compress_off(tmp_path: Path) -> None:
    s = ChunkStore(tmp_path, compress=False)
    text = compressible(100_000)
    s.put(cid_of(text), text)
    assert header_of(s, cid_of(text))[2] == CODEC_RAW
    assert s.get(cid_of(text)) == text


def flip_byte(path: Path, pos: int) -> None:
    b = bytearray(path.read_bytes())
    b[pos] ^= 0x01
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("kind", ["random", "text"])
@pytest.mark.parametrize("where", ["payload", "last", "magic", "orig_len", "stored_len"])
def test_corrupt_detected_on_get_and_quarantined(store: ChunkStore, kind: str, where: str) -> None:
    data = os.urandom(20_000) if kind == "random" else compressible(20_000)
    cid = cid_of(data)
    other = b"an unrelated chunk"
    store.put(cid, data)
    store.put(cid_of(other), other)
    path = store.chunks_dir / cid[:3] / cid
    size = path.stat().st_size
    pos = {
        "payload": HEADER_SIZE + (size - HEADER_SIZE) // 2,
        "last": size - 1,
        "magic": 0,
        "orig_len": 16,
    }.get(where, 8)
    flip_byte(path, pos)
    with pytest.raises(DfsError) as e:
        store.get(cid)
    assert e.value.code == errors.CORRUPT
    # quarantined, not deleted, and not served any more
    assert not path.exists()
    q = [p for p in store.quarantine_dir.iterdir() if not p.name.endswith(".reason")]
    assert len(q) == 1 and q[0].name.startswith(cid) and q[0].stat().st_size == size
    with pytest.raises(DfsError) as e:
        store.get(cid)
    assert e.value.code == errors.CORRUPT
    assert store.has([cid]) == [False]
    st = store.stat()
    assert st["corrupt"] == 1 and st["chunks"] == 1
    assert st["used"] == HEADER_SIZE + len(other)
    assert store.get(cid_of(other)) == other
    # the known-corrupt set survives a restart
    assert ChunkStore(store.root).stat()["corrupt"] == 1
    # a repair (good copy put again) makes it servable again
    assert store.put(cid, data) is True
    assert store.get(cid) == data
    assert store.stat()["corrupt"] == 0


def test_corrupt_detected_by_verify(store: ChunkStore) -> None:
    good, bad = os.urandom(5000), compressible(5000)
    store.put(cid_of(good), good)
    store.put(cid_of(bad), bad)
    assert store.verify(cid_of(good)) is True and store.verify(cid_of(bad)) is True
    flip_byte(store.chunks_dir / cid_of(bad)[:3] / cid_of(bad), HEADER_SIZE + 7)
    assert store.verify(cid_of(bad)) is False
    assert store.verify(cid_of(bad)) is False  # known corrupt
    assert store.verify(cid_of(good)) is True
    assert store.stat()["corrupt"] == 1
    assert any(p.name.startswith(cid_of(bad)) for p in store.quarantine_dir.iterdir())
    with pytest.raises(DfsError) as e:
        store.verify("0" * 64)
    assert e.value.code == "ENOENT"


def test_verify_catches_wrong_content_with_valid_checksum(store: ChunkStore) -> None:
    """A file whose checksum is fine but whose content is not the id (a misplaced file)."""
    a, b = b"content a" * 100, b"content b" * 100
    store.put(cid_of(a), a)
    store.put(cid_of(b), b)
    pa = store.chunks_dir / cid_of(a)[:3] / cid_of(a)
    pb = store.chunks_dir / cid_of(b)[:3] / cid_of(b)
    pa.write_bytes(pb.read_bytes())
    assert store.get(cid_of(a)) == b  # get trusts xxh3; the client checks SHA-256
    assert store.verify(cid_of(a)) is False
    assert not pa.exists() and store.stat()["corrupt"] == 1


def test_restart_keeps_chunks_and_counts(tmp_path: Path) -> None:
    s = ChunkStore(tmp_path)
    datas = [os.urandom(3000 + i) for i in range(20)] + [compressible(9000, i) for i in range(20)]
    for d in datas:
        s.put(cid_of(d), d)
    s.delete([cid_of(datas[0])])
    before = s.stat()
    s2 = ChunkStore(tmp_path)
    assert s2.stat()["chunks"] == before["chunks"] == 39
    assert s2.stat()["used"] == before["used"]
    for d in datas[1:]:
        assert s2.get(cid_of(d)) == d
    assert s2.list_ids(None, 100)[0] == sorted(cid_of(d) for d in datas[1:])


def test_leftover_temp_file_cleaned_at_open(tmp_path: Path) -> None:
    s = ChunkStore(tmp_path)
    data = b"keep me"
    s.put(cid_of(data), data)
    cid = cid_of(data)
    leftover = s.chunks_dir / cid[:3] / f".tmp.{cid_of(b'x')}.deadbeef"
    leftover.write_bytes(b"half a chunk")
    s2 = ChunkStore(tmp_path)
    assert not leftover.exists()
    assert s2.temp_files_removed == 1
    assert s2.stat()["chunks"] == 1 and s2.stat()["used"] == HEADER_SIZE + len(data)
    assert s2.list_ids(None, 10) == ([cid], False)


def test_capacity_enospc(tmp_path: Path) -> None:
    s = ChunkStore(tmp_path, capacity=10_000)
    a = os.urandom(6000)
    b = os.urandom(6000)
    assert s.put(cid_of(a), a)
    with pytest.raises(DfsError) as e:
        s.put(cid_of(b), b)
    assert e.value.code == "ENOSPC" and "no space" in e.value.message
    assert s.has([cid_of(b)]) == [False]
    assert [p.name for p in chunk_files(tmp_path)] == [cid_of(a)]
    assert s.stat()["free"] == 10_000 - HEADER_SIZE - 6000
    assert s.put(cid_of(a), a) is False  # dedup still answers when full
    s.delete([cid_of(a)])
    assert s.put(cid_of(b), b)


@contextlib.contextmanager
def tiny_tmpfs(size: str = "2m"):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = Path(tempfile.mkdtemp(prefix="dfs-full-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)])
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)
        os.rmdir(d)


def test_real_full_filesystem_enospc() -> None:
    with tiny_tmpfs("2m") as mnt:
        # capacity larger than the filesystem, so the OS is the one that says ENOSPC
        s = ChunkStore(mnt, capacity=100 << 20)
        a = os.urandom(1_500_000)
        b = os.urandom(1_000_000)
        assert s.put(cid_of(a), a)
        with pytest.raises(DfsError) as e:
            s.put(cid_of(b), b)
        assert e.value.code == "ENOSPC" and "disk full" in e.value.message
        assert [p.name for p in chunk_files(mnt)] == [cid_of(a)]  # no partial/temp file
        assert s.stat()["chunks"] == 1 and s.stat()["used"] == HEADER_SIZE + len(a)
        assert s.get(cid_of(a)) == a
        s.delete([cid_of(a)])
        assert s.put(cid_of(b), b)
        # default capacity is the filesystem's size: refused before writing anything
        s2 = ChunkStore(mnt)
        assert s2.capacity <= 2 << 20
        c = os.urandom(1_500_000)
        with pytest.raises(DfsError) as e:
            s2.put(cid_of(c), c)
        assert e.value.code == "ENOSPC"
        assert [p.name for p in chunk_files(mnt)] == [cid_of(b)]


def test_concurrent_puts_and_gets(tmp_path: Path) -> None:
    s = ChunkStore(tmp_path)
    datas = [os.urandom(50_000 + i) for i in range(40)] + [
        compressible(80_000, i) for i in range(40)
    ]
    same = os.urandom(200_000)
    barrier = threading.Barrier(8)

    def put_same(_: int) -> bool:
        barrier.wait()
        return s.put(cid_of(same), same)

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(put_same, range(8))) == 1  # exactly one writer wins
        assert all(pool.map(lambda d: s.put(cid_of(d), d), datas))
        for _ in range(3):
            got = list(pool.map(lambda d: s.get(cid_of(d)), datas))
            assert got == datas
        # puts, gets and deletes interleaved
        extra = [os.urandom(30_000) for _ in range(40)]
        futs = [pool.submit(s.put, cid_of(d), d) for d in extra]
        futs += [pool.submit(s.get, cid_of(d)) for d in datas]
        futs += [pool.submit(s.delete, [cid_of(d)]) for d in datas[:10]]
        for f in futs:
            f.result()
    st = s.stat()
    assert st["chunks"] == 1 + 80 - 10 + 40
    fresh = ChunkStore(tmp_path).stat()
    assert (fresh["chunks"], fresh["used"]) == (st["chunks"], st["used"])
    assert not [p for p in chunk_files(tmp_path) if p.name.startswith(".tmp.")]


def test_put_many_stores_all_with_one_flush(store: ChunkStore) -> None:
    datas = [os.urandom(n) for n in (0, 1, 5000, 70_000)] + [compressible(50_000)]
    old = os.urandom(300)
    store.put(cid_of(old), old)
    items = [(cid_of(d), memoryview(d)) for d in [*datas, old, datas[2]]]
    created = store.put_many(items)
    # the one already stored and the duplicate inside the batch are not written twice
    assert created == [True] * 5 + [False, False]
    for d in [*datas, old]:
        assert store.get(cid_of(d)) == d
    assert store.stat()["chunks"] == 6
    assert not [p for p in chunk_files(store.root) if p.name.startswith(".tmp")]


def test_put_many_hash_mismatch_writes_nothing(store: ChunkStore) -> None:
    good, bad = os.urandom(100), os.urandom(100)
    with pytest.raises(DfsError) as exc:
        store.put_many([(cid_of(good), memoryview(good)), (cid_of(good), memoryview(bad))])
    assert exc.value.code == "HASH_MISMATCH"
    assert store.stat()["chunks"] == 0 and store.stat()["used"] == 0
    assert not chunk_files(store.root)


def test_put_many_full_filesystem_leaves_no_temp_files() -> None:
    with tiny_tmpfs("2m") as mnt:
        s = ChunkStore(mnt, capacity=100 << 20)
        a, b = os.urandom(900_000), os.urandom(900_000)
        c = os.urandom(900_000)
        assert s.put_many([(cid_of(a), memoryview(a)), (cid_of(b), memoryview(b))]) == [True] * 2
        with pytest.raises(DfsError) as e:
            s.put_many([(cid_of(c), memoryview(c))])
        assert e.value.code == "ENOSPC"
        assert sorted(p.name for p in chunk_files(mnt)) == sorted([cid_of(a), cid_of(b)])
        assert s.stat()["chunks"] == 2 and s.get(cid_of(b)) == b


def test_a_re_put_makes_the_name_durable_before_answering(
    store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk renamed into place by a put_many whose directory fsync is still to
    come must not be reported stored by a concurrent put before it is durable."""
    import chunkserver.store as store_mod

    data = os.urandom(500)
    store.put(cid_of(data), data)
    synced: list[Path] = []
    monkeypatch.setattr(store_mod, "fsync_dir", lambda p: synced.append(Path(p)))
    assert store.put(cid_of(data), data) is False
    assert store.put_many([(cid_of(data), memoryview(data))]) == [False]
    parent = (store.root / "chunks" / cid_of(data)[:3]).resolve()
    assert [p.resolve() for p in synced] == [parent, parent]
