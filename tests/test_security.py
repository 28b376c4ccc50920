"""A whole cluster with a cluster key: every socket uses CURVE; no key, no service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dfs.client import connect
from dfs.config import ClusterConfig
from dfs.errors import DfsError
from dfs.rpc import RpcClient
from tools.cluster import LocalCluster


def test_cluster_with_a_key(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    r = subprocess.run(
        [sys.executable, "-m", "tools.admin", "keys", "generate", "--out", str(key)],
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 0 and key.stat().st_mode & 0o777 == 0o600
    again = subprocess.run(
        [sys.executable, "-m", "tools.admin", "keys", "generate", "--out", str(key)],
        capture_output=True,
        timeout=60,
    )
    assert again.returncode == 1  # never overwrites a key by accident
    cluster = LocalCluster(tmp_path / "c", 3, 3, key_file=key)
    try:
        cluster.start(timeout=60)
        # the cluster file names the key: a client using it works end to end
        with connect(str(cluster.cluster_file)) as c:
            data = os.urandom(3 << 20)
            c.write_bytes("/secret", data)
            assert c.read_bytes("/secret") == data
        # without the key: metadata nodes and chunkservers give nothing
        plain = ClusterConfig(cluster.endpoints)
        with connect(plain, timeout=1.0) as c:
            c.meta.deadline = 3.0
            with pytest.raises(DfsError):
                c.meta.call("md.status", {})
        with RpcClient(timeout=1.0) as rpc:
            for p in cluster.chunkservers + cluster.metadata:
                with pytest.raises(DfsError) as exc:
                    rpc.call(p.endpoint, "ping")
                assert exc.value.code == "TIMEOUT"
        # no plain stream port anywhere: Raft between the nodes stays on CURVE too
        with RpcClient(security=cluster.security(), timeout=5.0) as rpc:
            for p in cluster.chunkservers + cluster.metadata:
                assert "stream" not in rpc.call(p.endpoint, "ping").fields
            for p in cluster.metadata:
                links = rpc.call(p.endpoint, "md.node_status").fields["transport"]
                assert "zmq" in links.values() and "stream" not in links.values(), links
            assert not rpc._stream_socks
    finally:
        cluster.stop()
