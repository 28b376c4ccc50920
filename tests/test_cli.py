"""The dfs and dfs-admin commands, run as a user would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.cluster import LocalCluster


def run(cluster_file: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DFS_CLUSTER": str(cluster_file)}
    return subprocess.run(
        [sys.executable, "-m", "dfs.cli", *args],
        input=input,
        capture_output=True,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def cf(cluster: LocalCluster) -> Path:
    return cluster.cluster_file


def test_put_get_file_and_stdin_stdout(cf: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(3_000_000))
    assert run(cf, "put", str(src), "/cli-a.bin").returncode == 0
    out = tmp_path / "a.out"
    assert run(cf, "get", "/cli-a.bin", str(out)).returncode == 0
    assert out.read_bytes() == src.read_bytes()
    data = os.urandom(500_000)
    assert run(cf, "put", "-", "/cli-stdin", input=data).returncode == 0
    r = run(cf, "get", "/cli-stdin", "-")
    assert r.returncode == 0 and r.stdout == data
    r = run(cf, "cat", "/cli-stdin")
    assert r.stdout == data


def test_recursive_tree(cf: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for i in range(30):
        d = tree / f"d{i % 4}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(os.urandom(i * 100))
    (tree / "empty").mkdir()
    os.symlink("d0/e0/f0.txt", tree / "link")
    assert run(cf, "put", "-r", str(tree), "/cli-tree").returncode == 0
    back = tmp_path / "back"
    r = run(cf, "get", "-r", "/cli-tree", str(back))
    assert r.returncode == 0, r.stderr
    diff = subprocess.run(
        ["diff", "-r", "--no-dereference", str(tree), str(back)], capture_output=True
    )
    assert diff.returncode == 0, diff.stdout
    r = run(cf, "du", "--json", "/cli-tree")
    du = json.loads(r.stdout)
    assert du["files"] == 30
    assert du["logical_bytes"] == sum(i * 100 for i in range(30))


def test_recursive_put_reports_what_failed(cf: Path, tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a").write_bytes(b"a")
    (tree / "b").write_bytes(b"b")
    assert run(cf, "mkdir", "-p", "/cli-fail/t").returncode == 0
    assert run(cf, "put", "-", "/cli-fail/t/sub", input=b"a file in the way").returncode == 0
    r = run(cf, "put", "-r", str(tree), "/cli-fail")  # like cp -r: to /cli-fail/t
    assert r.returncode == 1
    assert b"cannot put '/cli-fail/t/sub'" in r.stderr
    assert run(cf, "cat", "/cli-fail/t/b").stdout == b"b"  # the rest arrived
    r = run(cf, "put", "-r", str(tree), "/cli-fail/t/b")  # a directory onto a file
    assert r.returncode == 1 and b"/cli-fail/t/b" in r.stderr
    r = run(cf, "get", "-r", "/cli-nothing", str(tmp_path / "x"))
    assert r.returncode == 1 and b"No such file" in r.stderr


def test_ls_stat_json_and_errors(cf: Path) -> None:
    assert run(cf, "mkdir", "-p", "/cli-x/y").returncode == 0
    assert run(cf, "put", "-", "/cli-x/y/f", input=b"hello").returncode == 0
    r = run(cf, "ls", "--json", "/cli-x/y")
    entries = json.loads(r.stdout)
    assert [e["name"] for e in entries] == ["f"] and entries[0]["attrs"]["size"] == 5
    r = run(cf, "stat", "--json", "/cli-x/y/f")
    assert json.loads(r.stdout)["size"] == 5
    r = run(cf, "ls", "-l", "/cli-x/y")
    assert r.returncode == 0 and b"-rw" in r.stdout
    r = run(cf, "stat", "/nope")
    assert r.returncode == 1
    assert r.stderr.decode().strip() == "dfs: cannot stat '/nope': No such file or directory"
    r = run(cf, "rm", "/cli-x")
    assert r.returncode == 1 and "Is a directory" in r.stderr.decode()
    assert run(cf, "mv", "/cli-x/y/f", "/cli-x/g").returncode == 0
    assert run(cf, "cat", "/cli-x/g").stdout == b"hello"
    assert run(cf, "rm", "-r", "/cli-x").returncode == 0
    assert run(cf, "ls", "/cli-x").returncode == 1
    r = run(cf, "get", "/a/../etc/passwd", "-")
    assert r.returncode == 1 and "dfs:" in r.stderr.decode()


def test_setrep(cf: Path) -> None:
    assert run(cf, "put", "-", "/cli-rep", input=b"r" * 1000).returncode == 0
    assert run(cf, "setrep", "2", "/cli-rep").returncode == 0
    r = run(cf, "stat", "--json", "/cli-rep")
    assert json.loads(r.stdout)["rep"] == 2
    assert run(cf, "setrep", "99", "/cli-rep").returncode == 1


def test_no_cluster_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DFS_CLUSTER"}
    r = subprocess.run(
        [sys.executable, "-m", "dfs.cli", "ls", "/"], capture_output=True, env=env, timeout=60
    )
    assert r.returncode == 2 and b"no cluster given" in r.stderr


def test_cluster_up_and_down_via_dfs_admin(tmp_path: Path) -> None:
    d = tmp_path / "c"
    admin = [sys.executable, "-m", "tools.admin"]
    r = subprocess.run(
        [*admin, "cluster", "up", "--dir", str(d), "--chunkservers", "3"],
        capture_output=True,
        timeout=120,
    )
    try:
        assert r.returncode == 0, r.stderr
        state = json.loads((d / "cluster.json").read_text())
        pids = [p["pid"] for p in state["processes"]]
        assert len(pids) == 6
        r = run(d / "cluster.toml", "put", "-", "/x", input=b"up")
        assert r.returncode == 0
        r = subprocess.run(
            [*admin, "--cluster", str(d / "cluster.toml"), "status", "--json"],
            capture_output=True,
            timeout=60,
        )
        st = json.loads(r.stdout)
        assert len(st["chunkservers"]) == 3
    finally:
        r = subprocess.run(
            [*admin, "cluster", "down", "--dir", str(d)], capture_output=True, timeout=60
        )
    assert r.returncode == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes()


def test_du_pages_stay_small() -> None:
    from dfs.cli import _pages

    files = [(f"/f{i}", {"size": 1 << 20}) for i in range(2500)] + [("/huge", {"size": 1 << 40})]
    pages = list(_pages(files, max_bytes=100 << 20))
    assert [p for page in pages for p in page] == [p for p, _ in files]
    assert all(len(page) <= 1000 for page in pages)
    assert pages[-1] == ["/huge"] and max(len(p) for p in pages[:-1]) == 100
