"""Chunkserver processes on 127.0.0.1: the operations, chains, restarts, corruption."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dfs import errors
from dfs.errors import DfsError
from dfs.rpc import RpcClient


def chunk(n: int = 4096, seed: bytes = b"") -> tuple[str, bytes]:
    data = seed + os.urandom(n)
    return hashlib.sha256(data).hexdigest(), data


def test_put_get_has_delete_stat_list(start_chunkserver, client: RpcClient) -> None:
    cs = start_chunkserver("cs1")
    ids = []
    for _ in range(5):
        cid, data = chunk(100_000)
        reply = client.call(cs.endpoint, "cs.put", {"id": cid}, [data])
        assert reply.fields["stored"] == [cs.endpoint]
        assert reply.fields["created"] is True
        got = client.call(cs.endpoint, "cs.get", {"id": cid})
        assert bytes(got.frames[0]) == data
        ids.append(cid)
    # a second put of the same content is a no-op (dedup)
    assert client.call(cs.endpoint, "cs.put", {"id": cid}, [data]).fields["created"] is False
    missing = "0" * 64
    has = client.call(cs.endpoint, "cs.has", {"ids": [*ids, missing]}).fields["has"]
    assert has == [True] * 5 + [False]
    stat = client.call(cs.endpoint, "cs.stat").fields
    assert stat["chunks"] == 5 and stat["used"] >= 500_000
    page1 = client.call(cs.endpoint, "cs.list", {"limit": 3}).fields
    page2 = client.call(cs.endpoint, "cs.list", {"after": page1["ids"][-1], "limit": 3}).fields
    assert page1["more"] and not page2["more"]
    assert page1["ids"] + page2["ids"] == sorted(ids)
    assert client.call(cs.endpoint, "cs.delete", {"ids": ids[:2]}).fields["deleted"] == 2
    with pytest.raises(DfsError) as exc:
        client.call(cs.endpoint, "cs.get", {"id": ids[0]})
    assert exc.value.code == "ENOENT"
    assert client.call(cs.endpoint, "cs.stat").fields["chunks"] == 3


def test_range_reads(start_chunkserver, client: RpcClient) -> None:
    cs = start_chunkserver("cs1")
    cid, data = chunk(1 << 20)
    client.call(cs.endpoint, "cs.put", {"id": cid}, [data])
    for off, length in [(0, 1), (1000, 5000), ((1 << 20) - 10, 10), (12345, None)]:
        fields = {"id": cid, "offset": off, **({"length": length} if length else {})}
        got = bytes(client.call(cs.endpoint, "cs.get", fields).frames[0])
        assert got == data[off : off + length if length else None]
    with pytest.raises(DfsError) as exc:
        client.call(cs.endpoint, "cs.get", {"id": cid, "offset": (1 << 20) + 1, "length": 5})
    assert exc.value.code == "EINVAL"


def test_chain_put_reaches_all_three(start_chunkserver, client: RpcClient) -> None:
    a, b, c = (start_chunkserver(f"cs{i}") for i in range(3))
    cid, data = chunk(3 << 20)
    reply = client.call(
        a.endpoint, "cs.put", {"id": cid, "forward": [b.endpoint, c.endpoint]}, [data]
    )
    assert reply.fields["stored"] == [a.endpoint, b.endpoint, c.endpoint]
    for cs in (a, b, c):
        assert bytes(client.call(cs.endpoint, "cs.get", {"id": cid}).frames[0]) == data


def test_chain_put_fails_clearly_when_a_link_is_dead(start_chunkserver) -> None:
    a, b = start_chunkserver("cs1"), start_chunkserver("cs2")
    b.kill()
    cid, data = chunk(1000)
    with RpcClient(timeout=15) as c, pytest.raises(DfsError) as exc:
        c.call(a.endpoint, "cs.put", {"id": cid, "forward": [b.endpoint]}, [data])
    assert exc.value.code in (errors.TIMEOUT, errors.UNAVAILABLE)
    assert "chain put failed" in exc.value.message


def test_replicate_copies_between_servers(start_chunkserver, client: RpcClient) -> None:
    a, b = start_chunkserver("cs1"), start_chunkserver("cs2")
    cid, data = chunk(200_000)
    client.call(a.endpoint, "cs.put", {"id": cid}, [data])
    reply = client.call(a.endpoint, "cs.replicate", {"id": cid, "to": [b.endpoint]})
    assert reply.fields["stored"] == [b.endpoint]
    assert bytes(client.call(b.endpoint, "cs.get", {"id": cid}).frames[0]) == data


def test_restart_keeps_every_chunk(start_chunkserver, client: RpcClient, tmp_path: Path) -> None:
    cs = start_chunkserver("cs1")
    stored = dict(chunk(50_000) for _ in range(20))
    for cid, data in stored.items():
        client.call(cs.endpoint, "cs.put", {"id": cid}, [data])
    cs.kill()  # kill -9: everything acknowledged was fsync'd
    cs2 = start_chunkserver("cs1b", data=tmp_path / "cs1")
    assert client.call(cs2.endpoint, "cs.stat").fields["chunks"] == 20
    for cid, data in stored.items():
        assert bytes(client.call(cs2.endpoint, "cs.get", {"id": cid}).frames[0]) == data


def test_corrupt_chunk_is_reported_not_served(
    start_chunkserver, client: RpcClient, tmp_path: Path
) -> None:
    cs = start_chunkserver("cs1")
    cid, data = chunk(100_000)
    client.call(cs.endpoint, "cs.put", {"id": cid}, [data])
    path = tmp_path / "cs1" / "chunks" / cid[:3] / cid
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DfsError) as exc:
        client.call(cs.endpoint, "cs.get", {"id": cid})
    assert exc.value.code == errors.CORRUPT
    # quarantined, not deleted, and no longer claimed
    assert list((tmp_path / "cs1" / "quarantine").iterdir())
    assert client.call(cs.endpoint, "cs.has", {"ids": [cid]}).fields["has"] == [False]
    # a good copy can be put again
    assert client.call(cs.endpoint, "cs.put", {"id": cid}, [data]).fields["created"] is True
    assert bytes(client.call(cs.endpoint, "cs.get", {"id": cid}).frames[0]) == data


def test_verify_finds_corruption(start_chunkserver, client: RpcClient, tmp_path: Path) -> None:
    cs = start_chunkserver("cs1")
    cid, data = chunk(10_000)
    client.call(cs.endpoint, "cs.put", {"id": cid}, [data])
    assert client.call(cs.endpoint, "cs.verify", {"id": cid}).fields["ok"] is True
    path = tmp_path / "cs1" / "chunks" / cid[:3] / cid
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    assert client.call(cs.endpoint, "cs.verify", {"id": cid}).fields["ok"] is False


def test_many_clients_at_once(start_chunkserver) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cs = start_chunkserver("cs1")
    clients = [RpcClient(timeout=20) for _ in range(4)]
    try:
        chunks = [chunk(256 * 1024) for _ in range(32)]

        def roundtrip(i: int) -> bool:
            c = clients[i % 4]
            cid, data = chunks[i]
            c.call(cs.endpoint, "cs.put", {"id": cid}, [data])
            return bytes(c.call(cs.endpoint, "cs.get", {"id": cid}).frames[0]) == data

        with ThreadPoolExecutor(16) as pool:
            assert all(pool.map(roundtrip, range(32)))
    finally:
        for c in clients:
            c.close()


def test_put_many(start_chunkserver, client: RpcClient) -> None:
    cs = start_chunkserver("cs1")
    chunks = [chunk(n) for n in (10, 4096, 200_000)]
    ids = [c for c, _ in chunks]
    blob = b"".join(d for _, d in chunks)
    fields = {"ids": ids, "sizes": [len(d) for _, d in chunks]}
    reply = client.call(cs.endpoint, "cs.put_many", fields, [blob])
    assert reply.fields == {"stored": [cs.endpoint], "created": [True, True, True]}
    for cid, data in chunks:
        assert bytes(client.call(cs.endpoint, "cs.get", {"id": cid}).frames[0]) == data
    again = client.call(cs.endpoint, "cs.put_many", fields, [blob])
    assert again.fields["created"] == [False, False, False]
    # bad input: sizes that do not add up, a wrong hash: refused, nothing stored
    other, odata = chunk(100)
    for bad_fields, frame, code in [
        ({"ids": [other], "sizes": [99]}, odata, "EINVAL"),
        ({"ids": [other], "sizes": [-1]}, odata, "EINVAL"),
        ({"ids": [other, ids[0]], "sizes": [100]}, odata, "EINVAL"),
        ({"ids": [other], "sizes": [100]}, os.urandom(100), errors.HASH_MISMATCH),
    ]:
        with pytest.raises(DfsError) as exc:
            client.call(cs.endpoint, "cs.put_many", bad_fields, [frame])
        assert exc.value.code == code
    assert client.call(cs.endpoint, "cs.has", {"ids": [other]}).fields["has"] == [False]
    assert client.call(cs.endpoint, "cs.stat").fields["chunks"] == 3


def test_get_many(start_chunkserver, client: RpcClient) -> None:
    cs = start_chunkserver("cs1")
    chunks = [chunk(n) for n in (1, 5000, 300_000)]
    for cid, data in chunks:
        client.call(cs.endpoint, "cs.put", {"id": cid}, [data])
    absent = chunk(10)[0]
    ids = [chunks[0][0], absent, chunks[1][0], chunks[2][0]]
    reply = client.call(cs.endpoint, "cs.get_many", {"ids": ids})
    assert reply.fields["sizes"] == [1, -1, 5000, 300_000]
    assert reply.fields["failed"] == {absent: "ENOENT"}
    assert bytes(reply.frames[0]) == b"".join(d for _, d in chunks)
    with pytest.raises(DfsError) as exc:
        client.call(cs.endpoint, "cs.get_many", {"ids": ["../etc/passwd"]})
    assert exc.value.code == "EINVAL"
