"""dfs.paths: normalisation and the inputs it must refuse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.errors import DfsError
from dfs.paths import components, is_ancestor, join, normalize, split


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("/", "/"),
        ("//", "/"),
        ("/.", "/"),
        ("/a", "/a"),
        ("/a/", "/a"),
        ("//a//b///", "/a/b"),
        ("/a/./b/.", "/a/b"),
        ("/./.", "/"),
        ("/a.b/..c/c..", "/a.b/..c/c.."),
        ("/ü/日本", "/ü/日本"),
        ("/" + "x" * 255, "/" + "x" * 255),
    ],
)
def test_normalize_ok(raw: str, want: str) -> None:
    assert normalize(raw) == want


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("", "EINVAL"),
        ("a/b", "EINVAL"),
        ("./a", "EINVAL"),
        ("/a/../b", "EINVAL"),
        ("/..", "EINVAL"),
        ("/a/..", "EINVAL"),
        ("/a\0b", "EINVAL"),
        ("/\udcff", "EINVAL"),
        (None, "EINVAL"),
        (b"/a", "EINVAL"),
        (["/a"], "EINVAL"),
        (5, "EINVAL"),
        ("/" + "x" * 256, "ENAMETOOLONG"),
        ("/" + "é" * 128, "ENAMETOOLONG"),  # 128 chars, 256 bytes
        ("/a" * 2048 + "/", "ENAMETOOLONG"),  # 4097 bytes
        ("/" * 5000, "ENAMETOOLONG"),
    ],
)
def test_normalize_rejects(raw: object, code: str) -> None:
    with pytest.raises(DfsError) as ei:
        normalize(raw)
    assert ei.value.code == code


def test_path_length_limit_exact() -> None:
    ok = "/" + "/".join(["a" * 255] * 16)  # 16 * 256 = 4096 bytes
    assert len(ok) == 4096
    assert normalize(ok) == ok
    with pytest.raises(DfsError) as ei:
        normalize(ok + "b")
    assert ei.value.code == "ENAMETOOLONG"


def test_split_join() -> None:
    assert split("/") == ("/", "")
    assert split("/a") == ("/", "a")
    assert split("/a/b/") == ("/a", "b")
    assert join("/", "a") == "/a"
    assert join("/a", "b", "c") == "/a/b/c"
    assert components("/") == []
    assert components("/a/b") == ["a", "b"]
    for bad in ("..", ".", "", "a/b", "a\0"):
        with pytest.raises(DfsError):
            join("/a", bad)


def test_is_ancestor() -> None:
    assert is_ancestor("/", "/a")
    assert not is_ancestor("/", "/")
    assert is_ancestor("/a", "/a/b")
    assert not is_ancestor("/a", "/a")
    assert not is_ancestor("/a", "/ab")
    assert not is_ancestor("/a/b", "/a")


_name = st.text(
    alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=8,
).filter(lambda s: s not in (".", ".."))


@given(st.lists(st.one_of(_name, st.just("."), st.just("")), max_size=8))
def test_normalize_idempotent(parts: list[str]) -> None:
    raw = "/" + "/".join(parts)
    n = normalize(raw)
    assert normalize(n) == n
    assert n == "/" + "/".join(p for p in parts if p not in ("", "."))
    assert "//" not in n and (n == "/" or not n.endswith("/"))
