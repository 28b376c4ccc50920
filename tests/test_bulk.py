"""Batched upload of a directory tree (dfs/bulk.py, `dfs put -r`) on a real cluster."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from dfs.bulk import BATCH_FILES, LocalTree, RemoteTree, get_tree, put_tree
from dfs.client import Client, connect
from tools.cluster import LocalCluster


def make_tree(root: Path, n: int) -> dict[str, bytes]:
    """n small files in nested dirs, one empty, one of several chunks; returns content."""
    want: dict[str, bytes] = {}
    for i in range(n):
        rel = f"d{i % 5}/e{i % 3}/f{i}.txt"
        want[rel] = os.urandom(i * 7) if i % 10 else b"same content in several files"
    want["empty"] = b""
    want["big.bin"] = os.urandom(3 << 20)
    for rel, data in want.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "d1" / "e1" / "f1.txt").chmod(0o600)
    (root / "nothing-here").mkdir()
    os.symlink("d0/e0/f0.txt", root / "link")
    return want


def test_put_tree_batches_and_content(dfs_client: Client, tmp_path: Path) -> None:
    n = 2 * BATCH_FILES + 50  # three batches at least
    want = make_tree(tmp_path, n)
    before = dfs_client.stats.chunks_sent
    tree = LocalTree.scan(tmp_path)
    assert len(tree.files) == n + 2 and tree.links == [tmp_path / "link"]
    assert put_tree(dfs_client, tree, "/bulk") == []
    for rel, data in want.items():
        assert dfs_client.read_bytes(f"/bulk/{rel}") == data, rel
    assert dfs_client.stat("/bulk/d1/e1/f1.txt")["mode"] & 0o777 == 0o600
    assert dfs_client.stat("/bulk/nothing-here")["type"] == "dir"
    assert dfs_client.readlink("/bulk/link") == "d0/e0/f0.txt"
    # identical small files share one chunk: it was sent once
    distinct = {hashlib.sha256(d).hexdigest() for r, d in want.items() if d and r != "big.bin"}
    assert dfs_client.stats.chunks_sent - before >= len(distinct)
    assert dfs_client.stats.chunks_sent - before <= len(distinct) + 8  # + big.bin's


def test_put_tree_follows_each_directory_replication(
    dfs_client: Client, cluster: LocalCluster, tmp_path: Path
) -> None:
    dfs_client.mkdir("/bulk-rep/two", parents=True)
    dfs_client.setrep("/bulk-rep/two", 2)
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a").write_bytes(os.urandom(1000))
    (tmp_path / "three").write_bytes(os.urandom(1000))
    assert put_tree(dfs_client, LocalTree.scan(tmp_path), "/bulk-rep") == []
    a = dfs_client.meta.ns("file_chunks", path="/bulk-rep/two/a")
    b = dfs_client.meta.ns("file_chunks", path="/bulk-rep/three")
    assert [len(v) for v in a["locations"].values()] == [2]
    assert [len(v) for v in b["locations"].values()] == [3]
    # a file with its own, higher replication keeps it when the tree is put again
    dfs_client.setrep("/bulk-rep/two/a", 3)
    (tmp_path / "two" / "a").write_bytes(os.urandom(1000))
    assert put_tree(dfs_client, LocalTree.scan(tmp_path), "/bulk-rep") == []
    a = dfs_client.meta.ns("file_chunks", path="/bulk-rep/two/a")
    assert a["rep"] == 3 and [len(v) for v in a["locations"].values()] == [3]


def test_put_tree_reports_failures_and_keeps_the_rest(dfs_client: Client, tmp_path: Path) -> None:
    dfs_client.mkdir("/bulk-fail")
    dfs_client.write_bytes("/bulk-fail/blocker", b"a file where the tree has a directory")
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "x").write_bytes(b"x")
    (tmp_path / "fine").write_bytes(b"fine")
    unreadable = tmp_path / "unreadable"
    unreadable.write_bytes(b"secret")
    unreadable.chmod(0)
    failures = put_tree(dfs_client, LocalTree.scan(tmp_path), "/bulk-fail")
    failed = sorted(f.path for f in failures)
    if os.geteuid() == 0:  # root reads a 000 file anyway
        assert failed == ["/bulk-fail/blocker"]
    else:
        assert failed == ["/bulk-fail/blocker", str(unreadable)]
    assert all(f.why for f in failures)
    assert dfs_client.read_bytes("/bulk-fail/fine") == b"fine"
    assert dfs_client.stat("/bulk-fail/blocker")["type"] == "file"


def test_get_tree_roundtrip_and_failures(
    dfs_client: Client, cluster: LocalCluster, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    want = make_tree(src, BATCH_FILES + 20)
    os.mkfifo(src / "d0" / "pipe", 0o640)  # a special file travels as metadata
    assert put_tree(dfs_client, LocalTree.scan(src), "/bulk-get") == []
    assert dfs_client.stat("/bulk-get/d0/pipe")["type"] == "fifo"
    tree = RemoteTree.scan(dfs_client, "/bulk-get")
    assert len(tree.files) == len(want) and tree.links == ["/bulk-get/link"]
    out = tmp_path / "out"
    assert get_tree(dfs_client, tree, out) == []
    for rel, data in want.items():
        assert (out / rel).read_bytes() == data, rel
    assert (out / "d1" / "e1" / "f1.txt").stat().st_mode & 0o777 == 0o600
    assert os.readlink(out / "link") == "d0/e0/f0.txt"
    assert (out / "nothing-here").is_dir()
    pipe = (out / "d0" / "pipe").lstat()
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o640
    assert not list(out.rglob(".*dfs-part*"))
    # a file removed after the scan fails alone; the others still arrive
    dfs_client.remove("/bulk-get/d2/e2/f2.txt")
    out2 = tmp_path / "out2"
    failures = get_tree(dfs_client, tree, out2)
    assert [f.path for f in failures] == ["/bulk-get/d2/e2/f2.txt"]
    assert (out2 / "d3" / "e0" / "f3.txt").read_bytes() == want["d3/e0/f3.txt"]


def test_trees_survive_a_killed_chunkserver(tmp_path: Path) -> None:
    """put -r with one of four chunkservers killed -9 (still placed on until it is
    found dead): the copies it missed go elsewhere; get -r then reads around it."""
    cl = LocalCluster(tmp_path / "c", 3, 4)
    try:
        cl.start(timeout=60)
        c = connect(str(cl.cluster_file))
        try:
            src = tmp_path / "src"
            want = make_tree(src, 200)
            cl.chunkservers[0].kill()
            assert put_tree(c, LocalTree.scan(src), "/t") == []
            # every chunk has its 3 copies on live servers
            dead = cl.chunkservers[0].endpoint
            tree = RemoteTree.scan(c, "/t")
            r = c.meta.call("md.files_chunks", {"args": {"paths": [p for p, _ in tree.files]}})
            for cid, eps in r["locations"].items():
                assert len([e for e in eps if e != dead]) >= 3, cid
            cl.chunkservers[1].kill()  # now reads must avoid a second dead server
            out = tmp_path / "out"
            assert get_tree(c, tree, out) == []
            for rel, data in want.items():
                assert (out / rel).read_bytes() == data, rel
        finally:
            c.close()
    finally:
        cl.stop()
