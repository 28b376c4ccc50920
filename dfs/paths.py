"""Path validation and normalisation, shared by the client and the metadata server.

Paths in dfs are absolute, slash-separated and can never escape the root: a
".." component is refused rather than resolved, so the server never has to
reason about where a path "really" points.
"""

from __future__ import annotations

from dfs.errors import DfsError

NAME_MAX = 255  # bytes (UTF-8) in one component
PATH_MAX = 4096  # bytes (UTF-8) in a whole path, as given

ROOT = "/"


def _encode(path: str) -> bytes:
    try:
        return path.encode("utf-8")
    except UnicodeEncodeError:
        raise DfsError("EINVAL", "path is not valid UTF-8 (lone surrogate)")


def check_name(name: object) -> str:
    """Validate one directory entry name (no slash, no NUL, not "." or "..")."""
    if type(name) is not str:
        raise DfsError("EINVAL", f"name must be a string, not {type(name).__name__}")
    if not name or name in (".", ".."):
        raise DfsError("EINVAL", f"invalid name {name!r}")
    if "/" in name or "\0" in name:
        raise DfsError("EINVAL", "name contains '/' or NUL")
    if len(_encode(name)) > NAME_MAX:
        raise DfsError("ENAMETOOLONG", f"name longer than {NAME_MAX} bytes")
    return name


def normalize(path: object) -> str:
    """Return the canonical form "/a/b" of an absolute path.

    Duplicate slashes and "." components collapse and a trailing slash goes;
    "..", NUL bytes, relative paths and non-strings raise EINVAL; a component
    over 255 bytes or a path over 4096 bytes raises ENAMETOOLONG.
    """
    if type(path) is not str:
        raise DfsError("EINVAL", f"path must be a string, not {type(path).__name__}")
    if not path.startswith("/"):
        raise DfsError("EINVAL", f"path must be absolute: {path[:100]!r}")
    if "\0" in path:
        raise DfsError("EINVAL", "path contains a NUL byte")
    if len(_encode(path)) > PATH_MAX:
        raise DfsError("ENAMETOOLONG", f"path longer than {PATH_MAX} bytes")
    parts = []
    for comp in path.split("/"):
        if comp == "" or comp == ".":
            continue
        if comp == "..":
            raise DfsError("EINVAL", "path contains a '..' component")
        if len(comp) * 4 > NAME_MAX and len(comp.encode("utf-8")) > NAME_MAX:
            raise DfsError("ENAMETOOLONG", f"path component longer than {NAME_MAX} bytes")
        parts.append(comp)
    if not parts:
        return ROOT
    return "/" + "/".join(parts)


def components(path: str) -> list[str]:
    """The names along a normalised path ([] for the root)."""
    return [] if path == ROOT else path[1:].split("/")


def split(path: str) -> tuple[str, str]:
    """Split a path into (parent, name); the root gives ("/", "")."""
    p = normalize(path)
    if p == ROOT:
        return ROOT, ""
    i = p.rfind("/")
    return (p[:i] or ROOT), p[i + 1 :]


def join(parent: str, *names: str) -> str:
    """Join a directory path and names, normalising and validating the result."""
    p = normalize(parent)
    for name in names:
        check_name(name)
        p = p.rstrip("/") + "/" + name
    return normalize(p)


def is_ancestor(anc: str, path: str) -> bool:
    """True when normalised `path` lies strictly inside directory `anc`."""
    if anc == ROOT:
        return path != ROOT
    return path.startswith(anc) and len(path) > len(anc) and path[len(anc)] == "/"
