"""Small files kept inline in the namespace (dfs/inline.py, Namespace commit)."""

from __future__ import annotations

import hashlib

import pytest
import zstandard

from dfs import inline
from dfs.errors import DfsError
from metadata import namespace as ns_mod
from metadata.namespace import Namespace

TS = 10**18
CID = hashlib.sha256(b"x").hexdigest()


def apply(ns: Namespace, op: str, **args: object) -> dict:
    return ns.apply({"op": op, "ts": TS, "args": args})


def test_codec_round_trips_and_compresses_text() -> None:
    text = b"def f(x):\n    return x\n" * 500
    blob = inline.encode(text)
    assert blob[0] == inline.ZSTD and len(blob) < len(text) // 10
    assert inline.decode(blob) == text
    noise = hashlib.sha256(b"n").digest() * 2 + bytes(range(200))
    assert inline.encode(noise)[0] == inline.RAW  # zstd would not save an eighth
    assert inline.content(inline.encode(b"ab"), 5) == b"ab\0\0\0"
    pieces = list(inline.iter_content(inline.encode(b"ab"), 3 << 20))
    assert b"".join(pieces) == b"ab" + bytes((3 << 20) - 2)
    assert max(map(len, pieces)) <= 1 << 20


@pytest.mark.parametrize(
    "blob, code",
    [
        (b"", "EINVAL"),  # no codec byte
        (b"\x09abc", "EINVAL"),  # unknown codec
        (b"\x00" + bytes(inline.INLINE_MAX + 1), "EFBIG"),  # raw content over the limit
        (b"\x01not zstd at all", "EINVAL"),
        # a bomb: a small frame that claims (and holds) 10 MiB
        (b"\x01" + zstandard.ZstdCompressor().compress(bytes(10 << 20)), "EFBIG"),
        # more than one whole frame: trailing bytes, a second frame, a cut-off frame
        (b"\x01" + zstandard.ZstdCompressor().compress(b"a" * 300) + b"GARBAGE", "EINVAL"),
        (b"\x01" + zstandard.ZstdCompressor().compress(b"a" * 300) * 2, "EINVAL"),
        (b"\x01" + zstandard.ZstdCompressor().compress(b"a" * 300)[:-3], "EINVAL"),
        # a frame that does not say its size
        (
            b"\x01" + zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 300),
            "EINVAL",
        ),
    ],
)
def test_codec_refuses_bad_blobs(blob: bytes, code: str) -> None:
    with pytest.raises(DfsError) as e:
        inline.decode(blob)
    assert e.value.code == code
    with pytest.raises(DfsError):
        inline.encode(bytes(inline.INLINE_MAX + 1))


def test_commit_inline_then_read_truncate_and_replace_with_chunks() -> None:
    ns = Namespace()
    body = b"hello world\n" * 100
    r = apply(ns, "commit", path="/f", extents=[], inline=inline.encode(body))
    assert r["ok"] and r["created"] and r["attrs"]["size"] == len(body)
    fc = ns.query("file_chunks", {"path": "/f"})
    assert fc["extents"] == [] and inline.content(fc["inline"], fc["size"]) == body
    st = ns.query("statfs")
    assert (st["inline_files"], st["chunks"], st["logical_bytes"]) == (1, 0, len(body))
    # truncate down keeps a prefix; up adds zeros without touching the blob
    assert apply(ns, "setattr", path="/f", size=5)["ok"]
    assert apply(ns, "setattr", path="/f", size=1 << 40)["attrs"]["size"] == 1 << 40
    fc = ns.query("file_chunks", {"path": "/f"})
    assert inline.decode(fc["inline"]) == b"hello" and fc["extents"] == []
    # the file grows into chunks: inline content goes, the chunk is referenced
    r = apply(ns, "commit", path="/f", extents=[[CID, 10]])
    assert r["ok"]
    fc = ns.query("file_chunks", {"path": "/f"})
    assert "inline" not in fc and fc["extents"] == [[CID, 10]]
    st = ns.query("statfs")
    assert (st["inline_files"], st["inline_bytes"], st["chunks"]) == (0, 0, 1)
    # and back: the chunk loses its reference and becomes a garbage candidate
    assert apply(ns, "commit", path="/f", extents=[], inline=inline.encode(b"x"))["ok"]
    st = ns.query("statfs")
    assert (st["inline_files"], st["chunks"], st["garbage"]) == (1, 0, 1)
    # an empty file stores nothing inline
    assert apply(ns, "commit", path="/e", extents=[], inline=inline.encode(b""))["ok"]
    assert "inline" not in ns.query("file_chunks", {"path": "/e"})
    assert ns.query("statfs")["inline_files"] == 1


def test_bad_inline_commits_change_nothing() -> None:
    ns = Namespace()
    before = ns.snapshot()
    blob = inline.encode(b"abc")
    for args, code in [
        ({"extents": [[CID, 3]], "inline": blob}, "EINVAL"),  # both
        ({"extents": [], "inline": blob, "size": 4}, "EINVAL"),  # wrong size
        ({"extents": [], "inline": "abc"}, "EINVAL"),  # not bytes
        ({"extents": [], "inline": b"\x05abc"}, "EINVAL"),  # unknown codec
    ]:
        r = apply(ns, "commit", path="/f", **args)
        assert not r["ok"] and r["code"] == code, (args, r)
    assert ns.snapshot() == before


def test_inline_budget_spent_gives_enospc() -> None:
    ns = Namespace()
    assert apply(ns, "set_limits", inline_budget=100)["inline_budget"] == 100
    assert Namespace.restore(ns.snapshot()).inline_budget == 100
    assert apply(ns, "set_limits", inline_budget=-1)["code"] == "EINVAL"
    assert apply(ns, "commit", path="/a", extents=[], inline=b"\x00" + bytes(60))["ok"]
    r = apply(ns, "commit", path="/b", extents=[], inline=b"\x00" + bytes(60))
    assert r["code"] == "ENOSPC"
    # replacing a file's own inline content counts what it gives back
    assert apply(ns, "commit", path="/a", extents=[], inline=b"\x00" + bytes(90))["ok"]
    assert apply(ns, "unlink", path="/a")["ok"]
    assert apply(ns, "commit", path="/b", extents=[], inline=b"\x00" + bytes(60))["ok"]
    # inline onto a directory is EISDIR, whatever the budget
    assert apply(ns, "mkdir", path="/d")["ok"]
    r = apply(ns, "commit", path="/d", extents=[], inline=b"\x00" + bytes(90))
    assert r["code"] == "EISDIR"


def test_truncate_cannot_get_round_the_budget() -> None:
    """A truncate rewrites a prefix raw: compressed content is charged at its
    content length, so no truncate can take the stored bytes past the budget."""
    ns = Namespace()
    zeros = inline.encode(bytes(inline.INLINE_MAX))
    assert len(zeros) < 100 and inline.charge(zeros) == inline.INLINE_MAX + 1
    apply(ns, "set_limits", inline_budget=3 * (inline.INLINE_MAX + 1))
    n = 0
    while apply(ns, "commit", path=f"/z{n}", extents=[], inline=zeros)["ok"]:
        n += 1
    assert n == 3
    for i in range(n):
        assert apply(ns, "setattr", path=f"/z{i}", size=inline.INLINE_MAX - 1)["ok"]
    stored = sum(len(ns._lookup(f"/z{i}").data) for i in range(n))
    assert stored <= ns.inline_bytes <= ns.inline_budget


def test_files_chunks_reply_stays_under_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = Namespace()
    monkeypatch.setattr(ns_mod, "INLINE_REPLY_BUDGET", 2500)
    blob = b"\x00" + bytes(1000)
    for i in range(4):
        assert apply(ns, "commit", path=f"/f{i}", extents=[], inline=blob)["ok"]
    files = ns.query("files_chunks", {"paths": [f"/f{i}" for i in range(4)]})["files"]
    assert [f.get("inline") == blob for f in files] == [True, True, False, False]
    assert [bool(f.get("inline_omitted")) for f in files] == [False, False, True, True]


def test_snapshot_keeps_inline_files_and_hard_links() -> None:
    ns = Namespace()
    apply(ns, "commit", path="/a", extents=[], inline=inline.encode(b"A" * 5000))
    apply(ns, "link", src="/a", dst="/b")
    apply(ns, "commit", path="/c", extents=[[CID, 7]])
    apply(ns, "setattr", path="/a", size=9000)
    data = ns.snapshot()
    back = Namespace.restore(data)
    assert back.snapshot() == data
    for k in ("inline_files", "inline_bytes", "logical_bytes"):
        assert getattr(back, k) == getattr(ns, k)
    fc = back.query("file_chunks", {"path": "/b"})
    assert inline.content(fc["inline"], fc["size"]) == b"A" * 5000 + bytes(4000)
    assert back.query("statfs")["chunks"] == 1


def test_an_oversized_request_fails_at_once_in_the_client() -> None:
    """A batch of inline blobs past the wire's header limit is refused before it is
    sent (the server would drop it unread, and the caller would wait for nothing)."""
    from dfs import wire

    blob = b"\x00" + bytes(inline.INLINE_MAX)
    ops = [{"op": "commit", "args": {"path": "/f", "extents": [], "inline": blob}}]
    with pytest.raises(DfsError) as e:
        wire.encode_request(1, "md.batch", {"args": {"ops": ops * 70}})
    assert e.value.code == "E2BIG"
    assert wire.MAX_MULTI * wire.MAX_MULTI_PART < wire.MAX_HEADER_BYTES - 64 * 16


def test_chunk_queries_without_content_give_only_the_charge() -> None:
    """du and put -r's replication lookup count and do not read: no blobs for them."""
    ns = Namespace()
    blob = inline.encode(b"x" * 5000)
    apply(ns, "commit", path="/a", extents=[], inline=blob)
    apply(ns, "commit", path="/c", extents=[[CID, 7]])
    fc = ns.query("file_chunks", {"path": "/a", "content": False})
    assert "inline" not in fc and fc["inline_bytes"] == inline.charge(blob) == 5001
    files = ns.query("files_chunks", {"paths": ["/a", "/c"], "content": False})["files"]
    assert [f.get("inline_bytes") for f in files] == [5001, None]
    assert files[1]["extents"] == [[CID, 7]]
