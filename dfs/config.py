"""Finding the cluster: ``--cluster X`` or ``$DFS_CLUSTER``.

X is either a comma-separated list of metadata endpoints or the path of a
cluster file (``cluster.toml``, written by ``dfs-admin cluster up``), which
may also name the cluster key file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from dfs import wire
from dfs.errors import DfsError
from dfs.security import Security

ENV_CLUSTER = "DFS_CLUSTER"
ENV_KEY = "DFS_KEY"


@dataclass
class ClusterConfig:
    metadata: list[str]
    key_file: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def security(self) -> Security | None:
        return Security.load(self.key_file) if self.key_file else None


def resolve(cluster: str | None = None, key_file: str | None = None) -> ClusterConfig:
    """Turn ``--cluster``/``$DFS_CLUSTER`` into endpoints (and a key file, if any)."""
    spec = cluster or os.environ.get(ENV_CLUSTER)
    if not spec:
        raise DfsError(
            "EINVAL",
            "no cluster given: pass --cluster or set DFS_CLUSTER "
            "(endpoints like tcp://127.0.0.1:7000,... or a cluster.toml path)",
        )
    key_file = key_file or os.environ.get(ENV_KEY) or None
    if "://" in spec:
        endpoints = [e.strip() for e in spec.split(",") if e.strip()]
        cfg = ClusterConfig(endpoints, key_file)
    else:
        cfg = load_file(Path(spec))
        if key_file:
            cfg.key_file = key_file
    for ep in cfg.metadata:
        try:
            wire.check_endpoint(ep)
        except ValueError as exc:
            raise DfsError("EINVAL", f"bad metadata endpoint {ep!r}: {exc}") from None
    if not cfg.metadata:
        raise DfsError("EINVAL", f"cluster {spec!r} names no metadata endpoints")
    return cfg


def load_file(path: Path) -> ClusterConfig:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DfsError("ENOENT", f"cluster file {str(path)!r} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DfsError("EINVAL", f"cannot read cluster file {str(path)!r}: {exc}") from None
    key = data.get("key_file")
    if key and not os.path.isabs(key):
        key = str(path.parent / key)
    return ClusterConfig(list(data.get("metadata", [])), key, data)


def write_file(
    path: Path,
    metadata: list[str],
    key_file: str | None = None,
    chunkservers: list[str] | None = None,
) -> None:
    """Write a cluster.toml (a tiny subset of TOML, so no writer library is needed)."""
    lines = ["# written by dfs-admin cluster up", _toml_list("metadata", metadata)]
    if chunkservers is not None:
        lines.append(_toml_list("chunkservers", chunkservers))
    if key_file:
        lines.append(f'key_file = "{key_file}"')
    path.write_text("\n".join(lines) + "\n")


def _toml_list(name: str, items: list[str]) -> str:
    return f"{name} = [" + ", ".join(f'"{i}"' for i in items) + "]"


SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count from the command line: '1048576', '512K', '10G', '1GiB'
    (binary units); ValueError for anything else."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in SIZE_UNITS:
            return int(float(t[:-1]) * SIZE_UNITS[t[-1]])
        return int(t)
    except OverflowError:  # 'infG'
        raise ValueError(f"not a size: {text!r}") from None
