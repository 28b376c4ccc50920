"""dfs: a distributed, content-addressed file system.

import dfs
c = dfs.connect("tcp://127.0.0.1:7000,...")   # or a cluster.toml, or $DFS_CLUSTER
c.write_bytes("/hello.txt", b"hi"); c.read_bytes("/hello.txt")
"""

from __future__ import annotations

from typing import Any

__all__ = ["Client", "DfsError", "connect"]


def __getattr__(name: str) -> Any:
    # imported lazily so that `import dfs.wire` does not pull in the whole client
    if name in ("connect", "Client"):
        from dfs import client

        return getattr(client, name)
    if name == "DfsError":
        from dfs.errors import DfsError

        return DfsError
    raise AttributeError(name)
