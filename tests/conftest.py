"""Shared fixtures: real server processes on 127.0.0.1 with ephemeral ports.

Every process a test starts is recorded and stopped by its PID at teardown,
also when the test fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dfs.client import Client, connect
from dfs.rpc import RpcClient
from tools.cluster import LocalCluster
from tools.procs import Proc, spawn


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop(timeout=5)


@pytest.fixture
def start_chunkserver(tmp_path: Path, procs: list[Proc]) -> Callable[..., Proc]:
    """Start a chunkserver process: ``start_chunkserver("cs1", extra_args...)``."""

    def start(name: str = "cs", *extra: str, data: Path | None = None) -> Proc:
        data = data or tmp_path / name
        args = ["--data", str(data), "--listen", "tcp://127.0.0.1:0", *extra]
        proc = spawn("chunkserver", name, tmp_path / "run", args)
        procs.append(proc)
        return proc

    return start


@pytest.fixture
def client() -> Iterator[RpcClient]:
    c = RpcClient(timeout=10.0)
    yield c
    c.close()


@contextmanager
def running_cluster(
    root: Path, n_metadata: int, n_chunkservers: int, **kw: Any
) -> Iterator[LocalCluster]:
    """A started LocalCluster, stopped (its own processes, by PID) on the way out."""
    c = LocalCluster(root, n_metadata, n_chunkservers, **kw)
    try:
        c.start(timeout=60)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A real 3 metadata + 3 chunkserver cluster, shared by a test module."""
    with running_cluster(tmp_path_factory.mktemp("cluster"), 3, 3) as c:
        yield c


@pytest.fixture(scope="module")
def dfs_client(cluster: LocalCluster) -> Iterator[Client]:
    c = connect(str(cluster.cluster_file))
    yield c
    c.close()
