"""Small files on the mount keep their content inline in the namespace: written,
read back on another mount, grown into chunks, cut down, and stored as chunks
when the cluster's inline budget is spent."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dfs
from dfs import inline
from tests.test_fuse_support import cluster_and_mount, mount, needs_fuse, umount

pytestmark = [needs_fuse, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with cluster_and_mount(tmp_path_factory.mktemp("fuse-inline")) as e:
        yield e


@pytest.fixture(scope="module")
def client(env) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    c = dfs.connect(str(env.cluster_file))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def second(env) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    mp = Path(tempfile.mkdtemp(prefix="dfs-mnt2-"))
    mount(env.cluster_file, mp, "--no-inline")
    try:
        yield mp
    finally:
        umount(env.cluster_file, mp)
        mp.rmdir()


def chunks_of(client: Any, path: str) -> dict[str, Any]:
    return client.meta.ns("file_chunks", path=path)


def test_small_file_is_inline_and_seen_by_another_mount(env, client, second: Path) -> None:  # type: ignore[no-untyped-def]
    body = b"import os\nprint(os.getcwd())\n" * 100
    (env.mp / "small.py").write_bytes(body)
    fc = chunks_of(client, "/small.py")
    assert fc["extents"] == [] and inline.decode(fc["inline"]) == body
    assert (second / "small.py").read_bytes() == body
    assert client.meta.ns("statfs")["chunks"] == 0  # nothing went to chunkservers
    # the mount without inline stores chunks, and reads inline files all the same
    (second / "chunked").write_bytes(b"x" * 100)
    fc = chunks_of(client, "/chunked")
    assert "inline" not in fc and len(fc["extents"]) == 1
    assert (env.mp / "chunked").read_bytes() == b"x" * 100


def test_inline_file_grows_into_chunks_and_back(env, client, second: Path) -> None:  # type: ignore[no-untyped-def]
    p = env.mp / "grows"
    p.write_bytes(b"a" * 1000)
    with open(p, "ab") as f:  # past INLINE_MAX: the inline bytes become a chunk too
        f.write(os.urandom(inline.INLINE_MAX))
    want = p.read_bytes()
    fc = chunks_of(client, "/grows")
    assert "inline" not in fc and sum(n for _c, n in fc["extents"]) == len(want)
    assert (second / "grows").read_bytes() == want
    os.truncate(p, 500)  # committed file cut down: small again (content kept as is)
    assert (second / "grows").read_bytes() == want[:500]
    with open(p, "r+b") as f:  # rewritten in the middle on the mount: inline again
        f.seek(100)
        f.write(b"MIDDLE")
    want = want[:100] + b"MIDDLE" + want[106:500]
    assert p.read_bytes() == want == (second / "grows").read_bytes()
    assert inline.decode(chunks_of(client, "/grows")["inline"]) == want


def test_truncate_up_reads_zeros_and_hard_links_share(env, client, second: Path) -> None:  # type: ignore[no-untyped-def]
    p = env.mp / "sparse"
    p.write_bytes(b"head")
    os.truncate(p, 10 << 20)  # 10 MiB: the blob keeps 4 bytes, the rest is zeros
    fc = chunks_of(client, "/sparse")
    assert fc["size"] == 10 << 20 and inline.decode(fc["inline"]) == b"head"
    with open(second / "sparse", "rb") as f:
        assert f.read(4) == b"head"
        f.seek(5 << 20)
        assert f.read(8) == bytes(8)
    os.truncate(p, 0)
    os.link(p, env.mp / "sparse-link")
    with open(env.mp / "sparse-link", "wb") as f:
        f.write(b"through the link")
    assert p.read_bytes() == b"through the link" == (second / "sparse").read_bytes()


def test_budget_spent_falls_back_to_chunks(env, client) -> None:  # type: ignore[no-untyped-def]
    def limits(**args: Any) -> dict[str, Any]:
        return client.meta.call("md.admin", {"action": "set_limits", "args": args})

    try:
        assert limits(inline_budget=0)["inline_budget"] == 0
        (env.mp / "after-budget").write_bytes(b"still stored")
        fc = chunks_of(client, "/after-budget")
        assert "inline" not in fc and len(fc["extents"]) == 1
        assert (env.mp / "after-budget").read_bytes() == b"still stored"
    finally:
        limits(inline_budget=1 << 30)
    assert client.meta.ns("statfs")["inline_budget"] == 1 << 30
