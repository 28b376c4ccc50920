"""Faults under the client: dead chunkservers, a killed metadata leader, bad replicas."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from dfs.client import connect
from dfs.errors import DfsError
from tools.cluster import LocalCluster


@pytest.fixture
def own_cluster(tmp_path: Path):
    c = LocalCluster(tmp_path / "c", 3, 3)
    try:
        c.start(timeout=60)
        yield c
    finally:
        c.stop()


def test_get_survives_a_killed_chunkserver_and_a_corrupt_replica(own_cluster) -> None:
    client = connect(str(own_cluster.cluster_file))
    try:
        data = os.urandom(20 << 20)
        client.write_bytes("/f", data)
        own_cluster.chunkservers[0].kill()  # kill -9
        assert client.read_bytes("/f") == data
        # corrupt every stored chunk file of a second server: reads still verify
        victim = own_cluster.chunkservers[1]
        for path in (own_cluster.dir / victim.name / "chunks").rglob("*"):
            if path.is_file() and len(path.name) == 64:  # chunk files, not the marker
                raw = bytearray(path.read_bytes())
                raw[-1] ^= 0xFF
                path.write_bytes(bytes(raw))
        assert client.read_bytes("/f") == data
        # ask the corrupt server first: the client must notice and use the good copy
        good = own_cluster.chunkservers[2]
        extents = client.meta.ns("file_chunks", path="/f")["extents"]
        for cid, length in extents:
            chunk = client.fetch_chunk(cid, [victim.endpoint, good.endpoint])
            assert hashlib.sha256(chunk).hexdigest() == cid and len(chunk) == length
        assert client.stats.bad_replicas >= len(extents)
    finally:
        client.close()


def test_leader_killed_during_puts_never_shows_a_partial_file(own_cluster) -> None:
    client = connect(str(own_cluster.cluster_file))
    versions: dict[str, set[str]] = {}
    acked: dict[str, str] = {}
    ack_times: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            name = f"/p{i % 6}"
            data = os.urandom(3 << 20)
            digest = hashlib.sha256(data).hexdigest()
            versions.setdefault(name, set()).add(digest)
            try:
                client.write_bytes(name, data)
                acked[name] = digest
                ack_times.append(time.monotonic())
            except DfsError as exc:
                errors.append(exc.code)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(1.5)
        own_cluster.leader().kill()
        killed_at = time.monotonic()
        time.sleep(3.0)
    finally:
        stop.set()
        t.join(timeout=120)
    try:
        # every error was a clear one; the writer got going again after the failover
        assert any(t > killed_at for t in ack_times), "no put succeeded after the failover"
        assert all(code in ("UNAVAILABLE", "TIMEOUT", "NOT_LEADER") for code in errors), errors
        for name, digests in versions.items():
            if not client.exists(name):
                continue
            got = hashlib.sha256(client.read_bytes(name)).hexdigest()
            assert got in digests, f"{name} holds bytes nobody wrote whole"
        # the last acknowledged version of each file is what we read (no writer is left)
        for name, digest in acked.items():
            assert hashlib.sha256(client.read_bytes(name)).hexdigest() == digest
    finally:
        client.close()


def test_put_needs_all_its_replicas(own_cluster) -> None:
    """With one of three chunkservers dead, a 3-replica put fails clearly (and shows
    nothing); a directory with replication 2 still takes writes."""
    client = connect(str(own_cluster.cluster_file))
    try:
        client.mkdir("/two")
        client.setrep("/two", 2)
        own_cluster.chunkservers[0].kill()
        own_cluster.wait_chunkservers(2, 30)
        with pytest.raises(DfsError) as exc:
            client.write_bytes("/three", os.urandom(2 << 20))
        assert exc.value.code == "UNAVAILABLE" and "of the 3 servers" in exc.value.message
        assert not client.exists("/three")
        data = os.urandom(2 << 20)
        client.write_bytes("/two/f", data)
        assert client.stat("/two/f")["rep"] == 2
        assert client.read_bytes("/two/f") == data
    finally:
        client.close()
