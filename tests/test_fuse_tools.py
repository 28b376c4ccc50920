"""Real tools on the mount: tar -x + diff -r of a source tree, git, sqlite3."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

from tests.test_fuse_support import cluster_and_mount, needs_fuse

pytestmark = [needs_fuse, pytest.mark.timeout(600)]

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SUBDIRS = ["email", "json", "asyncio", "http", "xml", "logging", "concurrent", "importlib"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with cluster_and_mount(tmp_path_factory.mktemp("fuse-tools")) as e:
        yield e


def _source_tree(dst: Path) -> Path:
    """A copy of part of the Python stdlib: hundreds of real source files."""
    root = dst / "src"
    root.mkdir()
    for name in SUBDIRS:
        shutil.copytree(STDLIB / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for f in sorted(STDLIB.glob("*.py"))[:150]:
        shutil.copy2(f, root / f.name)
    os.symlink("json/__init__.py", root / "a-symlink")
    return root


def test_tar_extract_then_diff(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = _source_tree(tmp_path)
    tar = tmp_path / "src.tar"
    with tarfile.open(tar, "w") as t:
        t.add(src, arcname="src")
    dest = env.mp / "untar"
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(tar), "-C", str(dest)], check=True, timeout=300)
    r = subprocess.run(
        ["diff", "-r", "--no-dereference", str(src), str(dest / "src")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    a = os.stat(src / "json" / "decoder.py")
    b = os.stat(dest / "src" / "json" / "decoder.py")
    assert (a.st_mtime_ns // 10**9, a.st_mode, a.st_size) == (
        b.st_mtime_ns // 10**9,
        b.st_mode,
        b.st_size,
    )
    # and a second tar of the copy on the mount reads back the same tree
    out = tmp_path / "back"
    out.mkdir()
    p1 = subprocess.Popen(["tar", "-cf", "-", "-C", str(dest), "src"], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-xf", "-", "-C", str(out)], stdin=p1.stdout, check=True, timeout=300)
    assert p1.wait(60) == 0
    r = subprocess.run(["diff", "-r", str(src), str(out / "src")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:]


def test_git_init_add_commit(env) -> None:  # type: ignore[no-untyped-def]
    repo = env.mp / "repo"
    repo.mkdir()
    for name in SUBDIRS[:3]:
        shutil.copytree(STDLIB / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    gitenv = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=str(env.base))
    run = lambda *a: subprocess.run(  # noqa: E731
        [*git, *a], check=True, capture_output=True, text=True, env=gitenv, timeout=300
    )
    run("init", "-q")
    run("add", "-A")
    run("commit", "-q", "-m", "first")
    (repo / "json" / "decoder.py").write_text("# changed\n")
    run("commit", "-q", "-am", "second")
    assert run("status", "--porcelain").stdout == ""
    log = run("log", "--oneline").stdout.splitlines()
    assert len(log) == 2 and "second" in log[0]
    run("fsck", "--strict")
    assert run("show", "HEAD~1:json/decoder.py").stdout == (STDLIB / "json/decoder.py").read_text()


def test_sqlite_create_and_query(env) -> None:  # type: ignore[no-untyped-def]
    db = env.mp / "db" / "test.sqlite"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.execute("create table t (id integer primary key, name text, v real)")
    with con:
        con.executemany(
            "insert into t (name, v) values (?, ?)", [(f"n{i}", i * 0.5) for i in range(5000)]
        )
    with con:
        con.execute("update t set v = v * 2 where id % 7 = 0")
        con.execute("delete from t where id % 11 = 0")
    con.execute("create index t_name on t(name)")
    con.close()
    r = subprocess.run(
        ["sqlite3", str(db), "select count(*), round(sum(v), 1) from t; pragma integrity_check;"],
        capture_output=True,
        text=True,
        check=True,
    )
    con = sqlite3.connect(":memory:")  # the same in memory, for the expected figures
    con.execute("create table t (id integer primary key, name text, v real)")
    con.executemany(
        "insert into t (name, v) values (?, ?)", [(f"n{i}", i * 0.5) for i in range(5000)]
    )
    con.execute("update t set v = v * 2 where id % 7 = 0")
    con.execute("delete from t where id % 11 = 0")
    want = con.execute("select count(*), round(sum(v), 1) from t").fetchone()
    got = r.stdout.split()
    assert got[0] == f"{want[0]}|{want[1]}" and got[1] == "ok", r.stdout
    env.remount()
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sqlite3; print(sqlite3.connect({str(db)!r})"
            ".execute('select count(*) from t where name = \"n4999\"').fetchone()[0])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.strip() == "1"
