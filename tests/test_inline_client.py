"""The client side of inline files (dfs/inline.py): the library, put -r / get -r
and the dfs / dfs-admin commands, on a real cluster."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dfs import inline
from dfs.bulk import BATCH_FILES, LocalTree, RemoteTree, get_tree, put_tree
from dfs.client import Client, connect
from dfs.errors import DfsError
from tools.cluster import LocalCluster

MAX = inline.INLINE_MAX


@pytest.fixture(scope="module")
def ic(cluster: LocalCluster) -> Iterator[Client]:
    """A client that writes small files inline (as the dfs command does)."""
    c = connect(str(cluster.cluster_file), inline=True)
    yield c
    c.close()


def run(cluster: LocalCluster, *args: str, input: bytes | None = None, **env: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "dfs.cli", *args],
        input=input,
        capture_output=True,
        env={**os.environ, "DFS_CLUSTER": str(cluster.cluster_file), **env},
        timeout=120,
    )


def admin(cluster: LocalCluster, *args: str) -> Any:
    cmd = [sys.executable, "-m", "tools.admin", "--cluster", str(cluster.cluster_file), *args]
    return subprocess.run(cmd, capture_output=True, timeout=60)


def is_inline(c: Client, path: str) -> bool:
    fc = c.meta.ns("file_chunks", path=path)
    assert (fc.get("inline") is not None) == (fc["extents"] == [] and fc["size"] > 0)
    return fc.get("inline") is not None


@pytest.mark.parametrize("size", [0, 1, MAX, MAX + 1])
def test_round_trip_sizes(ic: Client, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    sent = ic.stats.chunks_sent
    ic.mkdir("/rt", parents=True)
    ic.write_bytes(f"/rt/b{size}", data)
    src = tmp_path / "src"
    src.write_bytes(data)
    ic.put(src, f"/rt/p{size}")
    for name in (f"/rt/b{size}", f"/rt/p{size}"):
        assert ic.read_bytes(name) == data
        assert is_inline(ic, name) == (0 < size <= MAX)
        ic.get(name, tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == data
        with ic.open(name) as f:
            assert f.read() == data
    # only the file over the limit went to the chunkservers (twice: the second deduped)
    assert ic.stats.chunks_sent - sent == (1 if size > MAX else 0)


def test_cli_put_inline_from_file_and_stdin(
    cluster: LocalCluster, ic: Client, tmp_path: Path
) -> None:
    ic.mkdir("/cli-in", parents=True)
    for size in (1, MAX, MAX + 1, 3 << 20):
        data = os.urandom(size)
        r = run(cluster, "put", "-", f"/cli-in/s{size}", input=data)
        assert r.returncode == 0, r.stderr
        src = tmp_path / f"f{size}"
        src.write_bytes(data)
        assert run(cluster, "put", str(src), f"/cli-in/f{size}").returncode == 0
        for name in (f"/cli-in/s{size}", f"/cli-in/f{size}"):
            assert is_inline(ic, name) == (size <= MAX), name
            r = run(cluster, "cat", name)
            assert r.returncode == 0 and r.stdout == data


def test_no_inline_option_and_env(cluster: LocalCluster, ic: Client) -> None:
    ic.mkdir("/noinl", parents=True)
    assert run(cluster, "put", "--no-inline", "-", "/noinl/a", input=b"a").returncode == 0
    assert run(cluster, "--no-inline", "put", "-", "/noinl/b", input=b"b").returncode == 0
    assert run(cluster, "put", "-", "/noinl/c", input=b"c", DFS_INLINE="0").returncode == 0
    assert run(cluster, "put", "-", "/noinl/d", input=b"d", DFS_INLINE="1").returncode == 0
    assert [is_inline(ic, f"/noinl/{n}") for n in "abcd"] == [False, False, False, True]
    assert run(cluster, "get", "--no-inline", "/noinl/a", "-").returncode == 2  # put only


def test_truncated_up_inline_file_reads_content_then_zeros(
    cluster: LocalCluster, ic: Client, tmp_path: Path
) -> None:
    ic.write_bytes("/trunc", b"hello")
    ic.meta.ns("setattr", True, path="/trunc", size=5 << 20)
    assert is_inline(ic, "/trunc")
    assert ic.read_bytes("/trunc") == b"hello" + bytes((5 << 20) - 5)
    r = run(cluster, "cat", "/trunc")
    assert r.returncode == 0 and r.stdout == b"hello" + bytes((5 << 20) - 5)

    class Sink(io.RawIOBase):
        """Counts what it is given; remembers the biggest single write."""

        def __init__(self) -> None:
            self.n, self.biggest = 0, 0

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.n += len(b)
            self.biggest = max(self.biggest, len(b))
            return len(b)

    # a terabyte of zeros streams a piece at a time (cat, get -) ...
    ic.meta.ns("setattr", True, path="/trunc", size=1 << 40)
    info = ic.meta.ns("file_chunks", path="/trunc")
    pieces = ic.iter_content(info)
    assert bytes(next(pieces)) == b"hello"
    assert len(next(pieces)) <= 1 << 20
    # ... and a get to a local file leaves a hole, nothing written past the content
    out = tmp_path / "tb"
    assert ic.get("/trunc", out) == 1 << 40
    st = os.stat(out)
    assert st.st_size == 1 << 40 and st.st_blocks * 512 < 1 << 20
    with open(out, "rb") as f:
        assert f.read(8) == b"hello\0\0\0"
        f.seek((1 << 40) - 4)
        assert f.read() == bytes(4)
    with ic.open("/trunc") as f:
        f.seek(3)
        assert f.read(4) == b"lo\0\0"
        f.seek(-2, io.SEEK_END)
        assert f.read(10) == b"\0\0"
        assert f.read(10) == b""
    sink = Sink()
    ic.meta.ns("setattr", True, path="/trunc", size=3 << 20)
    assert ic.download("/trunc", sink) == 3 << 20  # type: ignore[arg-type]
    assert sink.n == 3 << 20 and sink.biggest <= 1 << 20
    ic.meta.ns("setattr", True, path="/trunc", size=2)  # down: a prefix stays
    assert ic.read_bytes("/trunc") == b"he" and is_inline(ic, "/trunc")


def test_file_writer_commits_small_files_inline(ic: Client) -> None:
    with ic.open("/w-small", "wb") as f:
        f.write(b"a" * 1000)
        f.write(b"b" * 1000)
    assert is_inline(ic, "/w-small")
    assert ic.read_bytes("/w-small") == b"a" * 1000 + b"b" * 1000
    data = os.urandom(MAX + 10)
    with ic.open("/w-big", "wb") as f:
        f.write(data)
    assert not is_inline(ic, "/w-big") and ic.read_bytes("/w-big") == data


def mixed_tree(root: Path, n: int) -> dict[str, bytes]:
    """n files: empty, tiny, text (compresses), random up to INLINE_MAX, a few
    just over it and one of several chunks."""
    want: dict[str, bytes] = {}
    for i in range(n):
        kind = i % 5
        if kind == 0:
            data = b""
        elif kind == 1:
            data = os.urandom(i % 100 + 1)
        elif kind == 2:
            data = (f"line {i}\n" * (i * 7 % 5000)).encode()
        elif kind == 3:
            data = os.urandom(min(MAX, i * 311 % (MAX + 1)))
        else:
            data = os.urandom(MAX + 1 + i)
        want[f"d{i % 4}/f{i}"] = data
    want["big.bin"] = os.urandom(3 << 20)
    for rel, data in want.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return want


def test_put_and_get_tree_mixing_inline_and_chunks(ic: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    want = mixed_tree(src, 2 * BATCH_FILES + 20)
    sent, inl = ic.stats.chunks_sent, ic.stats.inline_files
    assert put_tree(ic, LocalTree.scan(src), "/mix") == []
    small = [r for r, d in want.items() if 0 < len(d) <= MAX]
    chunked = [r for r, d in want.items() if len(d) > MAX]
    assert ic.stats.inline_files - inl == len(small)
    assert len(chunked) <= ic.stats.chunks_sent - sent <= len(chunked) + 8  # + big.bin's
    for rel in small[:20] + chunked[:5]:
        assert is_inline(ic, f"/mix/{rel}") == (rel in small)
    # inline files truncated up: one still small (batched), one past the batch size
    for rel, size in (("d1/f1", 100 << 10), ("d3/f3", 5 << 20)):
        ic.meta.ns("setattr", True, path=f"/mix/{rel}", size=size)
        want[rel] = want[rel] + bytes(size - len(want[rel]))
        assert is_inline(ic, f"/mix/{rel}")
    back = tmp_path / "back"
    assert get_tree(ic, RemoteTree.scan(ic, "/mix"), back) == []
    for rel, data in want.items():
        assert (back / rel).read_bytes() == data, rel
    assert os.stat(back / "d3/f3").st_blocks * 512 < 1 << 20  # a hole, not 5 MiB of zeros
    assert not [p for p in back.rglob("*") if ".dfs-part" in p.name]  # no temp file left
    # a re-put replaces inline files with inline files, chunked with chunked
    assert put_tree(ic, LocalTree.scan(src), "/mix") == []
    for r in small[:10] + chunked[:3] + ["d1/f1", "d3/f3"]:
        assert ic.read_bytes(f"/mix/{r}") == (src / r).read_bytes(), r


def test_many_big_inline_batches_at_once(cluster: LocalCluster, ic: Client) -> None:
    """Eight md.batch calls of 1 MiB of inline content at once: Raft entries of
    1 MiB each, which the leader must not send a follower all in one message
    over the 4 MiB header limit (it was refused, and the writers waited out
    their timeout)."""
    ic.mkdir("/many", parents=True)
    start = threading.Barrier(8)

    def writer(w: int) -> list[bool]:
        ops = [
            {
                "op": "commit",
                "args": {
                    "path": f"/many/w{w}-{i}",
                    "extents": [],
                    "size": 60 << 10,
                    "inline": inline.encode(os.urandom(60 << 10)),
                },
            }
            for i in range(17)
        ]
        start.wait()
        r = ic.meta.call("md.batch", {"args": {"ops": ops}, "stored": {}}, mutate=True)
        return [res["ok"] for res in r["results"]]

    with ThreadPoolExecutor(8) as pool:
        assert all(all(oks) for oks in pool.map(writer, range(8)))
    logs = [p.read_text(errors="replace") for p in cluster.dir.rglob("meta*.log")]
    assert logs and not [line for t in logs for line in t.splitlines() if "over the limit" in line]
    assert len(ic.listdir("/many")) == 8 * 17


def test_inline_bytes_per_batch_call_stay_under_the_header_limit(
    ic: Client, tmp_path: Path
) -> None:
    """One batch of 120 incompressible 60 KiB files holds 7 MiB of inline content:
    in one md.batch its header would be refused (4 MiB), so it goes in several."""
    src = tmp_path / "src"
    src.mkdir()
    want = {f"r{i:03d}": os.urandom(60 << 10) for i in range(120)}
    for rel, data in want.items():
        (src / rel).write_bytes(data)
    assert put_tree(ic, LocalTree.scan(src), "/hdr") == []
    assert all(is_inline(ic, f"/hdr/{r}") for r in list(want)[::17])
    # one files_chunks reply carries at most 1 MiB of it: the rest comes inline_omitted
    names = [f"/hdr/{r}" for r in want]
    raw = ic.meta.call("md.files_chunks", {"args": {"paths": names}})["files"]
    assert any(f.get("inline_omitted") for f in raw) and raw[0].get("inline") is not None
    infos, _ = ic.files_chunks(names)
    assert all(inline.decode(f["inline"]) == want[n[5:]] for n, f in zip(names, infos))
    # get -r fetches the omitted ones too
    back = tmp_path / "back"
    assert get_tree(ic, RemoteTree.scan(ic, "/hdr"), back) == []
    assert all((back / rel).read_bytes() == data for rel, data in want.items())


def set_budget(c: Client, budget: int) -> int:
    """The cluster's inline budget, through the log (the set_limits admin action)."""
    args = {"inline_budget": budget}
    return c.meta.call("md.admin", {"action": "set_limits", "args": args})["inline_budget"]


def test_budget_spent_falls_back_to_chunks(cluster: LocalCluster, tmp_path: Path) -> None:
    with connect(str(cluster.cluster_file), inline=True) as c:
        c.mkdir("/spent")
        fs = c.statfs()
        used = fs["inline_bytes"]
        try:
            assert set_budget(c, used) == used  # nothing more fits
            c.write_bytes("/spent/one", b"x" * 100)
            assert c.stats.inline_fallbacks == 1 and c.stats.inline_files == 0
            assert not is_inline(c, "/spent/one") and c.read_bytes("/spent/one") == b"x" * 100
            # room for a few files: put -r's batch gets ENOSPC for the rest, which
            # go to the chunkservers in the same batch
            set_budget(c, used + 3000)
            c._inline_off_until = 0.0  # as when INLINE_RETRY is over
            src = tmp_path / "src"
            src.mkdir()
            want = {f"f{i:02d}": os.urandom(i * 50) for i in range(40)}
            for rel, data in want.items():
                (src / rel).write_bytes(data)
            sent = c.stats.chunks_sent
            assert put_tree(c, LocalTree.scan(src), "/spent/tree") == []
            for rel, data in want.items():
                assert c.read_bytes(f"/spent/tree/{rel}") == data
            inl = [r for r in want if want[r] and is_inline(c, f"/spent/tree/{r}")]
            assert 0 < len(inl) == c.stats.inline_files < 39
            assert c.stats.inline_fallbacks == 2
            assert c.stats.chunks_sent - sent == 39 - len(inl)  # f00 is empty
            assert c.statfs()["inline_bytes"] <= used + 3000
            # the next small file goes to chunks without asking (INLINE_RETRY)
            c.write_bytes("/spent/two", b"y")
            assert not is_inline(c, "/spent/two") and c.stats.inline_fallbacks == 2
            # dfs-admin limits shows and sets the budget
            r = admin(cluster, "limits", "--inline-budget", "2M", "--json")
            assert r.returncode == 0, r.stderr
            lim = json.loads(r.stdout)
            assert lim["inline_budget"] == 2 << 20 and lim["inline_bytes"] <= used + 3000
            r = admin(cluster, "limits")
            assert r.returncode == 0 and b"inline budget 2.0 MiB" in r.stdout
            for bad in ("-5", "lots", "1X"):
                r = admin(cluster, "limits", "--inline-budget", bad)
                assert r.returncode == 2 and b"not a size" in r.stderr
            assert c.statfs()["inline_budget"] == 2 << 20
        finally:
            set_budget(c, fs["inline_budget"])


def test_du_stat_and_status_show_inline(cluster: LocalCluster, ic: Client) -> None:
    ic.mkdir("/du", parents=True)
    ic.write_bytes("/du/a", b"a" * 3000)  # compresses
    ic.write_bytes("/du/b", os.urandom(2000))
    big = os.urandom(MAX + 1)
    ic.write_bytes("/du/c", big)
    r = run(cluster, "du", "--json", "/du")
    du = json.loads(r.stdout)
    blobs = [ic.meta.ns("file_chunks", path=p)["inline"] for p in ("/du/a", "/du/b")]
    charged = [inline.charge(b) for b in blobs]  # as the inline budget counts them
    assert du["files"] == 3 and du["logical_bytes"] == 5000 + MAX + 1
    assert du["inline_files"] == 2 and du["inline_bytes"] == sum(charged) >= 5000
    assert len(blobs[0]) < 100  # stored compressed
    assert du["unique_chunk_bytes"] == MAX + 1 and du["replicated_bytes"] == 3 * (MAX + 1)
    r = run(cluster, "du", "/du")
    assert r.returncode == 0 and b"inline in the metadata service (2 files)" in r.stdout
    st = json.loads(run(cluster, "stat", "--json", "/du/a").stdout)
    assert st["inline"] is True and st["inline_bytes"] == charged[0] and st["size"] == 3000
    st = json.loads(run(cluster, "stat", "--json", "/du/c").stdout)
    assert st["inline"] is False and st["chunks"] == 1
    r = run(cluster, "stat", "/du/a")
    assert b"inline: True" in r.stdout
    r = admin(cluster, "status", "--json")
    cl = json.loads(r.stdout)["cluster"]
    fs = ic.statfs()
    assert cl["inline_files"] == fs["inline_files"] >= 2
    assert cl["inline_bytes"] == fs["inline_bytes"] >= sum(charged)
    r = admin(cluster, "status")
    assert r.returncode == 0 and b"inline files" in r.stdout
    # fsck: an inline file has no chunks to miss
    r = admin(cluster, "fsck", "/du", "--json")
    fsck = json.loads(r.stdout)
    assert r.returncode == 0 and fsck["files"] == 3 and fsck["chunks"] == 1


def test_bad_input(cluster: LocalCluster, ic: Client, tmp_path: Path) -> None:
    # a bad blob is refused by the metadata service, and no file appears
    args = {"path": "/bad", "extents": [], "size": 3, "mode": 0o644, "inline": b"\x07abc"}
    with pytest.raises(DfsError) as e:
        ic.meta.call("md.commit", {"args": args, "stored": {}}, mutate=True)
    assert e.value.code == "EINVAL" and not ic.exists("/bad")
    with pytest.raises(DfsError) as e:
        ic.commit_inline("/bad", bytes(MAX + 1))  # too big to be inline at all
    assert e.value.code == "EFBIG" and not ic.exists("/bad")
    # an inline file is no directory, and a directory has no content
    ic.write_bytes("/badf", b"f")
    r = run(cluster, "put", "-", "/badf/x", input=b"x")
    assert r.returncode == 1 and b"cannot put '/badf/x'" in r.stderr and ic.exists("/badf")
    r = run(cluster, "cat", "/")
    assert r.returncode == 1 and b"dfs:" in r.stderr
    r = run(cluster, "put", str(tmp_path / "missing"), "/m")
    assert r.returncode == 1 and b"No such file" in r.stderr


def test_cli_recursive_put_and_get_with_and_without_inline(
    cluster: LocalCluster, ic: Client, tmp_path: Path
) -> None:
    src = tmp_path / "t"
    want = {f"s{i}": os.urandom(i * 1000) for i in range(1, 8)} | {"big": os.urandom(MAX * 5)}
    for rel, data in want.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    assert run(cluster, "put", "-r", str(src), "/cli-r-inl").returncode == 0
    r = run(cluster, "put", "-r", "--no-inline", str(src), "/cli-r-chk")
    assert r.returncode == 0, r.stderr
    for rel in want:
        small = rel != "big"
        assert is_inline(ic, f"/cli-r-inl/{rel}") == small
        assert not is_inline(ic, f"/cli-r-chk/{rel}")
    for top in ("/cli-r-inl", "/cli-r-chk"):  # like cp -r: a new REMOTE is the tree
        back = tmp_path / top.replace("/", "_")
        r = run(cluster, "get", "-r", top, str(back))
        assert r.returncode == 0, r.stderr
        assert {p.name: p.read_bytes() for p in back.iterdir()} == want


def test_a_stream_read_ahead_for_inline_reads_whole_again() -> None:
    """upload() reads up to INLINE_MAX + 1 bytes of a stream to decide; a bigger
    stream is then chunked from the start, the bytes read ahead included."""
    from dfs.client import _Prefixed, _read_upto

    src = io.BytesIO(b"abcdefghij")
    p = _Prefixed(_read_upto(src, 4), src)
    assert [p.read(2), p.read(5), p.read(3), p.read(), p.read(4)] == [
        b"ab",
        b"cd",
        b"efg",
        b"hij",
        b"",
    ]
    src = io.BytesIO(b"abcdefghij")
    assert _Prefixed(_read_upto(src, 4), src).read() == b"abcdefghij"
    assert _read_upto(io.BytesIO(b"xy"), 4) == b"xy"  # a short stream: all of it
