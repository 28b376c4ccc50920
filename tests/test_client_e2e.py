"""End to end on a real local cluster: put/get byte-identical, dedup, streaming."""

from __future__ import annotations

import hashlib
import io
import os
import random

import pytest

from dfs.chunking import MAX_SIZE, MIN_SIZE
from dfs.client import Client
from dfs.errors import DfsError
from dfs.rpc import RpcClient


@pytest.mark.parametrize(
    "size", [0, 1, MIN_SIZE - 1, MIN_SIZE, MIN_SIZE + 1, MAX_SIZE - 1, MAX_SIZE, MAX_SIZE + 1]
)
def test_put_get_sizes(dfs_client: Client, size: int) -> None:
    data = random.Random(size).randbytes(size)
    dfs_client.write_bytes(f"/sizes-{size}", data)
    assert dfs_client.read_bytes(f"/sizes-{size}") == data
    assert dfs_client.stat(f"/sizes-{size}")["size"] == size


def test_100mib_roundtrip_and_dedup(dfs_client: Client, tmp_path, cluster) -> None:
    data = os.urandom(100 << 20)
    src = tmp_path / "big"
    src.write_bytes(data)
    dfs_client.put(src, "/big")
    out = tmp_path / "big.out"
    dfs_client.get("/big", out)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()

    before = cluster_used(cluster)
    sent = dfs_client.stats.bytes_sent
    dfs_client.put(src, "/big-again")
    assert dfs_client.stats.bytes_sent == sent, "a second upload of the same bytes sent data"
    assert cluster_used(cluster) == before

    edited = data[:1000] + os.urandom(100) + data[1000:]
    dfs_client.write_bytes("/big-edited", edited)
    a = {c for c, _ in dfs_client.meta.ns("file_chunks", path="/big")["extents"]}
    b = [c for c, _ in dfs_client.meta.ns("file_chunks", path="/big-edited")["extents"]]
    shared = sum(1 for c in b if c in a) / len(b)
    assert shared > 0.9, shared
    assert dfs_client.read_bytes("/big-edited") == edited


def cluster_used(cluster) -> int:
    """Bytes stored on every chunkserver right now (asked directly, not via heartbeats)."""
    with RpcClient(timeout=5) as rpc:
        return sum(rpc.call(p.endpoint, "cs.stat").fields["used"] for p in cluster.chunkservers)


def test_streams(dfs_client: Client) -> None:
    data = os.urandom(3 << 20)
    with dfs_client.open("/streamed", "wb") as f:
        for i in range(0, len(data), 65536):
            f.write(data[i : i + 65536])
    with dfs_client.open("/streamed", "rb") as f:
        f.seek(1_000_000)
        assert f.read(10) == data[1_000_000:1_000_010]
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:]
        f.seek(0)
        assert f.read() == data


def test_failed_writer_leaves_nothing(dfs_client: Client) -> None:
    with pytest.raises(RuntimeError), dfs_client.open("/never", "wb") as f:
        f.write(b"x" * 1000)
        raise RuntimeError("the writer dies")
    assert not dfs_client.exists("/never")


def test_namespace_ops(dfs_client: Client) -> None:
    dfs_client.mkdir("/d1/d2/d3", parents=True)
    dfs_client.write_bytes("/d1/d2/f", b"hello")
    assert dfs_client.listdir("/d1/d2") == ["d3", "f"]
    dfs_client.rename("/d1/d2/f", "/d1/g")
    assert dfs_client.read_bytes("/d1/g") == b"hello"
    with pytest.raises(DfsError) as exc:
        dfs_client.stat("/d1/d2/f")
    assert exc.value.code == "ENOENT"
    with pytest.raises(DfsError) as exc:
        dfs_client.meta.ns("rmdir", True, path="/d1")
    assert exc.value.code == "ENOTEMPTY"
    dfs_client.remove("/d1", recursive=True)
    assert not dfs_client.exists("/d1")
    with pytest.raises(DfsError) as exc:
        dfs_client.stat("/../etc/passwd")
    assert exc.value.code == "EINVAL"
