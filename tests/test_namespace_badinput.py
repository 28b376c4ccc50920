"""Bad input to the namespace: every bad request gets a clear error reply and
leaves the state (its snapshot bytes) exactly as it was."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metadata.namespace import MUTATIONS, QUERIES, REQ, Namespace

CID = hashlib.sha256(b"x").hexdigest()
TS = 10**18


def populated() -> Namespace:
    ns = Namespace()
    cmds: list[tuple[str, dict]] = [
        ("mkdir", {"path": "/d/e", "parents": True}),
        ("commit", {"path": "/d/f", "extents": [[CID, 10]]}),
        ("symlink", {"target": "f", "path": "/d/s"}),
        ("setxattr", {"path": "/d/f", "name": "user.a", "value": b"1"}),
    ]
    for i, (op, args) in enumerate(cmds):
        assert ns.apply({"op": op, "args": args, "ts": TS + i})["ok"]
    return ns


NS0 = populated()
SNAP0 = NS0.snapshot()


def check_rejected(cmd: Any, code: str | None = None) -> dict:
    ns = Namespace.restore(SNAP0)
    r = ns.apply(cmd)
    assert r["ok"] is False, r
    assert set(r) == {"ok", "code", "msg"}
    assert isinstance(r["code"], str) and isinstance(r["msg"], str) and r["msg"]
    if code is not None:
        assert r["code"] == code, r
    assert ns.snapshot() == SNAP0
    return r


def cmd(op: str, **args: Any) -> dict:
    return {"op": op, "args": args, "client": None, "seq": None, "ts": TS + 100}


BAD_PATHS = [
    ("/d/../etc", "EINVAL"),
    ("/..", "EINVAL"),
    ("..", "EINVAL"),
    ("d/f", "EINVAL"),
    ("", "EINVAL"),
    ("/d/f\0x", "EINVAL"),
    ("/\udc80", "EINVAL"),
    ("/" + "n" * 256, "ENAMETOOLONG"),
    ("/d/" + "ü" * 128, "ENAMETOOLONG"),
    ("/" + "/".join(["p" * 200] * 21), "ENAMETOOLONG"),
    (b"/d/f", "EINVAL"),
    (["/d/f"], "EINVAL"),
    (7, "EINVAL"),
    ({"p": 1}, "EINVAL"),
]

PATH_OPS: list[tuple[str, dict]] = [
    ("mkdir", {}),
    ("mkdir", {"parents": True}),
    ("rmdir", {}),
    ("create", {}),
    ("unlink", {}),
    ("symlink", {"target": "x"}),
    ("mknod", {"mode": 0o10644}),
    ("setattr", {"mode": 0o600}),
    ("setxattr", {"name": "user.x", "value": b""}),
    ("removexattr", {"name": "user.a"}),
    ("setrep", {"rep": 2}),
    ("commit", {"extents": []}),
]


@pytest.mark.parametrize(("bad", "code"), BAD_PATHS)
@pytest.mark.parametrize(("op", "extra"), PATH_OPS)
def test_bad_paths(op: str, extra: dict, bad: Any, code: str) -> None:
    check_rejected(cmd(op, path=bad, **extra), code)


@pytest.mark.parametrize(("bad", "code"), BAD_PATHS)
def test_bad_paths_two_path_ops(bad: Any, code: str) -> None:
    for op in ("rename", "link"):
        check_rejected(cmd(op, src=bad, dst="/d/new"), code)
        check_rejected(cmd(op, src="/d/f", dst=bad), code)


@pytest.mark.parametrize(("bad", "code"), BAD_PATHS)
def test_bad_paths_in_queries(bad: Any, code: str) -> None:
    ns = Namespace.restore(SNAP0)
    for op in ("getattr", "readdir", "readlink", "listxattr", "file_chunks"):
        r = ns.query(op, {"path": bad})
        assert r["ok"] is False and r["code"] == code, (op, r)
    assert ns.snapshot() == SNAP0


WRONG_TYPES = [None, True, 1.5, "s", b"b", [1], {"a": 1}, -1, 2**70]


def _valid_args(op: str) -> dict:
    return {
        "mkdir": {"path": "/n", "mode": 0o755, "uid": 1, "gid": 1, "parents": False},
        "rmdir": {"path": "/d/e"},
        "create": {"path": "/n", "mode": 0o644, "uid": 1, "gid": 1, "exclusive": True},
        "unlink": {"path": "/d/f"},
        "rename": {"src": "/d/f", "dst": "/n", "noreplace": False},
        "link": {"src": "/d/f", "dst": "/n"},
        "symlink": {"target": "t", "path": "/n", "uid": 1, "gid": 1},
        "mknod": {"path": "/n", "mode": 0o20644, "rdev": 5, "uid": 1, "gid": 1},
        "setattr": {"path": "/d/f", "mode": 0o600, "uid": 1, "gid": 1, "atime": 1, "mtime": 1,
                    "size": 3},
        "setxattr": {"path": "/d/f", "name": "user.a", "value": b"v", "flags": 0},
        "removexattr": {"path": "/d/f", "name": "user.a"},
        "setrep": {"path": "/d", "rep": 2, "recursive": True},
        "commit": {"path": "/n", "extents": [[CID, 5], [None, 5]], "size": 10, "mode": 0o600,
                   "uid": 1, "gid": 1, "create": True, "expect_version": 0},
        "gc_mark": {"chunk_ids": [CID], "ts": 5},
        "gc_expire": {"before_ts": 5, "limit": 10},
        "batch": {"ops": [{"op": "mkdir", "args": {"path": "/n"}}]},
        "set_limits": {"inline_budget": 1000},
    }[op]  # fmt: skip


def test_valid_args_are_valid() -> None:
    for op in MUTATIONS:
        ns = Namespace.restore(SNAP0)
        r = ns.apply(cmd(op, **_valid_args(op)))
        assert r["ok"], (op, r)


@pytest.mark.parametrize("op", sorted(MUTATIONS))
def test_wrong_arg_types(op: str) -> None:
    good = _valid_args(op)
    for arg in good:
        for bad in WRONG_TYPES:
            if bad is None and MUTATIONS[op][arg][1] is not REQ:
                continue  # None means "not given" for optional arguments
            if type(bad) is type(good[arg]) and type(bad) is not int:
                continue  # right type: a valid value for some arguments (names, flags)
            if bad == -1 and arg in ("atime", "mtime"):
                continue  # times before 1970 are fine
            args = dict(good, **{arg: bad})
            check_rejected(cmd(op, **args))


def test_wrong_arg_types_rejected_codes() -> None:
    assert check_rejected(cmd("mkdir", path="/n", mode="755"))["code"] == "EINVAL"
    assert check_rejected(cmd("mkdir", path="/n", parents=1))["code"] == "EINVAL"
    assert check_rejected(cmd("mkdir", path="/n", uid=True))["code"] == "EINVAL"
    assert check_rejected(cmd("mkdir", path="/n", uid=1 << 32))["code"] == "EINVAL"
    assert check_rejected(cmd("mkdir", path="/n", mode=0o1000000))["code"] == "EINVAL"
    assert check_rejected(cmd("setrep", path="/d", rep=3.0))["code"] == "EINVAL"
    assert check_rejected(cmd("setattr", path="/d/f", atime="yesterday"))["code"] == "EINVAL"
    assert check_rejected(cmd("setattr", path="/d/f", mtime=1 << 63))["code"] == "EINVAL"
    assert (
        check_rejected(cmd("setxattr", path="/d/f", name="a", value=b"", flags=3))["code"]
        == "EINVAL"
    )


def test_missing_and_unknown_args() -> None:
    check_rejected(cmd("mkdir"), "EINVAL")
    check_rejected(cmd("rename", src="/d/f"), "EINVAL")
    check_rejected(cmd("mkdir", path="/n", colour="blue"), "EINVAL")
    check_rejected({"op": "mkdir", "args": {1: "/n", "path": "/n"}, "ts": TS}, "EINVAL")
    check_rejected({"op": "mkdir", "args": [["path", "/n"]], "ts": TS}, "EINVAL")
    check_rejected({"op": "mkdir", "args": "/n", "ts": TS}, "EINVAL")


def test_bad_commands() -> None:
    check_rejected(cmd("format_disk"), "ENOSYS")
    check_rejected(cmd("_op_mkdir", path="/n"), "ENOSYS")
    check_rejected(cmd("__init__"), "ENOSYS")
    check_rejected(cmd("getattr", path="/d"), "ENOSYS")  # queries are not log commands
    check_rejected({"op": None, "args": {}, "ts": TS}, "ENOSYS")
    check_rejected({"op": b"mkdir", "args": {"path": "/n"}, "ts": TS}, "ENOSYS")
    for bad_cmd in (None, [], "mkdir", 5, b"x"):
        check_rejected(bad_cmd, "EINVAL")
    check_rejected({"op": "mkdir", "args": {"path": "/n"}}, "EINVAL")  # no ts
    for ts in (-1, 1.0, "1", None, True, 1 << 63):
        check_rejected({"op": "mkdir", "args": {"path": "/n"}, "ts": ts}, "EINVAL")
    for client, seq in (("", 1), (5, 1), ("c" * 257, 1), ("c", -1), ("c", "1"), ("c", 1.0)):
        check_rejected(
            {"op": "mkdir", "args": {"path": "/n"}, "ts": TS, "client": client, "seq": seq},
            "EINVAL",
        )


def test_bad_chunk_ids_and_extents() -> None:
    for bad in (
        CID.upper(),
        CID[:63],
        CID + "0",
        "g" * 64,
        " " + CID[1:],
        CID[:63] + "\n",
        bytes.fromhex(CID),
        None if False else 5,
    ):
        check_rejected(cmd("commit", path="/n", extents=[[bad, 1]]), "EINVAL")
        check_rejected(cmd("gc_mark", chunk_ids=[CID, bad]), "EINVAL")
    for ext in (
        [[CID, 0]],
        [[CID, -5]],
        [[CID, (64 << 20) + 1]],
        [[None, 0]],
        [[CID]],
        [[CID, 1, 2]],
        [CID],
        [{"id": CID, "len": 1}],
        "x",
        {CID: 1},
        [[CID, 1.0]],
        [[CID, True]],
    ):
        check_rejected(cmd("commit", path="/n", extents=ext), "EINVAL")
    check_rejected(cmd("gc_mark", chunk_ids=CID), "EINVAL")
    check_rejected(cmd("gc_mark", chunk_ids=[CID] * 100_001), "E2BIG")


def test_huge_sizes() -> None:
    check_rejected(cmd("setattr", path="/d/f", size=1 << 61), "EFBIG")
    check_rejected(cmd("setattr", path="/d/f", size=2**100), "EFBIG")
    check_rejected(cmd("commit", path="/n", extents=[[None, 1 << 61]]), "EFBIG")
    check_rejected(cmd("commit", path="/n", extents=[[None, 1 << 59]] * 3), "EFBIG")
    check_rejected(cmd("commit", path="/n", extents=[], size=1 << 61), "EFBIG")
    check_rejected(cmd("commit", path="/n", extents=[[CID, 5]], size=6), "EINVAL")
    check_rejected(cmd("setxattr", path="/d/f", name="a", value=b"v" * 70000), "E2BIG")
    check_rejected(cmd("symlink", target="t" * 5000, path="/n"), "ENAMETOOLONG")
    check_rejected(cmd("mknod", path="/n", mode=0o20644, rdev=1 << 64), "EINVAL")
    check_rejected(cmd("gc_expire", before_ts=1 << 64), "EINVAL")


def test_bad_queries() -> None:
    ns = Namespace.restore(SNAP0)
    cases: list[tuple[Any, Any, str]] = [
        ("nope", {}, "ENOSYS"),
        (None, {}, "ENOSYS"),
        ("commit", {"path": "/x", "extents": []}, "ENOSYS"),
        ("getattr", None, "EINVAL"),
        ("getattr", [], "EINVAL"),
        ("getattr", {"path": "/d", "x": 1}, "EINVAL"),
        ("readdir", {"path": "/d", "limit": 0}, "EINVAL"),
        ("readdir", {"path": "/d", "limit": "10"}, "EINVAL"),
        ("readdir", {"path": "/d", "after": 5}, "EINVAL"),
        ("exists", {"chunk_ids": ["zz"]}, "EINVAL"),
        ("chunk_refs", {"chunk_ids": [CID.upper()]}, "EINVAL"),
        ("all_chunks", {"after": "00"}, "EINVAL"),
        ("getxattr", {"path": "/d/f", "name": ""}, "EINVAL"),
        ("statfs", {"path": "/"}, "EINVAL"),
    ]
    for op, args, code in cases:
        r = ns.query(op, args)
        assert r["ok"] is False and r["code"] == code, (op, args, r)
    assert ns.snapshot() == SNAP0


_junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.sampled_from(["/", "/d", "/d/f", "/d/e", "/d/s", "/n", "/d/../x", CID, "now"]),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=8,
)
_arg_names = st.sampled_from(
    sorted({k for spec in (*MUTATIONS.values(), *QUERIES.values()) for k in spec} | {"bogus"})
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    op=st.sampled_from(sorted(MUTATIONS)),
    args=st.dictionaries(_arg_names, _junk, max_size=5),
)
def test_fuzz_apply_never_raises(op: str, args: dict) -> None:
    ns = Namespace.restore(SNAP0)
    r = ns.apply({"op": op, "args": args, "ts": TS + 100})
    assert isinstance(r, dict) and type(r["ok"]) is bool
    if not r["ok"]:
        assert r["code"] != "EIO", r  # EIO would mean an internal error (a bug)
        assert isinstance(r["msg"], str)
        assert ns.snapshot() == SNAP0


@settings(max_examples=200, deadline=None)
@given(op=st.sampled_from(sorted(QUERIES)), args=st.dictionaries(_arg_names, _junk, max_size=4))
def test_fuzz_query_never_raises(op: str, args: dict) -> None:
    ns = Namespace.restore(SNAP0)
    r = ns.query(op, args)
    assert isinstance(r, dict) and type(r["ok"]) is bool
    if not r["ok"]:
        assert r["code"] != "EIO", r
    assert ns.snapshot() == SNAP0
