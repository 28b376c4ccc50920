"""A local cluster: N metadata nodes and M chunkservers on free loopback ports.

``dfs-admin cluster up/down/add-chunkserver`` and the tests use this. Every
process gets a pid file, an endpoint file and a log under the cluster
directory; ``cluster.json`` records what was started so ``down`` stops exactly
those PIDs, and ``cluster.toml`` tells clients where the cluster is.
"""

from __future__ import annotations

import json
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfs import config
from dfs.errors import NOT_LEADER, UNAVAILABLE, DfsError
from dfs.process import pid_alive
from dfs.rpc import RpcClient
from dfs.security import Security
from tools.procs import Proc, spawn


def free_port() -> int:
    """A free port below the kernel's ephemeral range (metadata peers must know ports
    up front, and a restarted server takes its port again: an outgoing connection
    must not be able to grab it as its source port meanwhile)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # fall back to whatever the kernel hands out
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@dataclass
class LocalCluster:
    dir: Path
    n_metadata: int = 3
    n_chunkservers: int = 3
    key_file: Path | None = None
    detach: bool = False  # True for `cluster up`: processes outlive the command
    metadata: list[Proc] = field(default_factory=list)
    chunkservers: list[Proc] = field(default_factory=list)
    peers: dict[int, str] = field(default_factory=dict)
    chunkserver_args: dict[str, list[str]] = field(default_factory=dict)
    # extra flags for every metadata node (e.g. ["--gc-grace", "2"]) and chunkserver
    metadata_extra: list[str] = field(default_factory=list)
    chunkserver_extra: list[str] = field(default_factory=list)
    gc_grace: float | None = None  # shorthand for --gc-grace (tests use a short one)
    founders: list[int] = field(default_factory=list)  # the bootstrap voters; others --join
    removed: list[int] = field(default_factory=list)  # ids removed (never reused)

    @property
    def endpoints(self) -> list[str]:
        return [self.peers[i] for i in sorted(self.peers)]

    @property
    def cluster_file(self) -> Path:
        return self.dir / "cluster.toml"

    def security(self) -> Security | None:
        return Security.load(self.key_file) if self.key_file else None

    # ------------------------------------------------------------ starting

    def start(self, timeout: float = 30.0) -> LocalCluster:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.peers = {i: f"tcp://127.0.0.1:{free_port()}" for i in range(1, self.n_metadata + 1)}
        self.founders = sorted(self.peers)
        for i in sorted(self.peers):
            self.start_metadata(i)
        self.wait_leader(timeout)
        for _ in range(self.n_chunkservers):
            self.add_chunkserver(wait=False)
        self.wait_chunkservers(self.n_chunkservers, timeout)
        self.save()
        return self

    def _key_args(self) -> list[str]:
        return ["--key", str(self.key_file)] if self.key_file else []

    def start_metadata(self, node_id: int) -> Proc:
        name = f"meta{node_id}"
        peers = ",".join(f"{i}={ep}" for i, ep in sorted(self.peers.items()))
        args = [
            "--id",
            str(node_id),
            "--data",
            str(self.dir / name),
            "--listen",
            self.peers[node_id],
            "--peers",
            peers,
            *(["--join"] if self.founders and node_id not in self.founders else []),
            *self._key_args(),
            *(["--gc-grace", str(self.gc_grace)] if self.gc_grace is not None else []),
            *self.metadata_extra,
        ]
        proc = spawn("metadata", name, self.dir / "run", args, detach=self.detach)
        self.metadata = [p for p in self.metadata if p.name != name] + [proc]
        self.metadata.sort(key=lambda p: p.name)
        return proc

    def add_chunkserver(
        self, wait: bool = True, name: str | None = None, extra: list[str] | None = None
    ) -> Proc:
        name = name or f"cs{len(self.chunkserver_args) + 1}"
        if name not in self.chunkserver_args:
            port = free_port()
            self.chunkserver_args[name] = [
                "--data",
                str(self.dir / name),
                "--listen",
                f"tcp://127.0.0.1:{port}",
                "--cluster",
                ",".join(self.endpoints),
                *self._key_args(),
                *self.chunkserver_extra,
                *(extra or []),
            ]
        proc = spawn(
            "chunkserver", name, self.dir / "run", self.chunkserver_args[name], detach=self.detach
        )
        self.chunkservers = [p for p in self.chunkservers if p.name != name] + [proc]
        if wait:
            self.wait_chunkservers(len([p for p in self.chunkservers if p.alive()]), 30)
            self.save()
        return proc

    def add_metadata(self, timeout: float = 30.0) -> Proc:
        """Start a new metadata node (``--join``) and make it a voter: ``raft add``
        on the leader, answered once the change is committed."""
        node_id = max([*self.peers, *self.removed, 0]) + 1
        self.peers[node_id] = f"tcp://127.0.0.1:{free_port()}"
        proc = self.start_metadata(node_id)
        self.admin("raft_add", {"node": node_id, "endpoint": self.peers[node_id]}, timeout)
        self.save()
        return proc

    def remove_metadata(self, node_id: int, timeout: float = 30.0, stop: bool = True) -> None:
        """``raft remove`` the node (the leader too: it hands over), then stop it."""
        self.admin("raft_remove", {"node": node_id}, timeout)
        if stop:
            for p in [p for p in self.metadata if p.name == f"meta{node_id}"]:
                p.stop(timeout=10)
                self.metadata.remove(p)
        self.peers.pop(node_id, None)
        self.removed.append(node_id)
        self.save()

    def admin(self, action: str, args: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """``md.admin`` on the leader, retried while there is none or it is busy."""
        deadline = time.monotonic() + timeout
        with RpcClient(security=self.security(), timeout=min(timeout, 15.0)) as c:
            while True:
                st = self.status()
                try:
                    if st is None or not st.get("leader"):
                        raise DfsError(UNAVAILABLE, "no metadata leader")
                    return c.call(st["leader"], "md.admin", {"action": action, "args": args}).fields
                except DfsError as exc:
                    if exc.code not in (NOT_LEADER, UNAVAILABLE) or time.monotonic() > deadline:
                        raise
                time.sleep(0.2)

    def restart(self, proc: Proc) -> Proc:
        """Start a stopped/killed process again with the same data and address."""
        if proc.role == "metadata":
            return self.start_metadata(int(proc.name.removeprefix("meta")))
        return self.add_chunkserver(wait=False, name=proc.name)

    # ------------------------------------------------------------ waiting

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """``md.status`` from the current leader (None if there is none right now)."""
        last = getattr(self, "_last_leader", None)
        eps = ([last] if last in self.endpoints else []) + self.endpoints
        with RpcClient(security=self.security(), timeout=timeout) as c:
            for ep in dict.fromkeys(eps):  # the last leader first: dead nodes cost a timeout
                try:
                    st = c.call(ep, "md.status").fields
                except DfsError:
                    continue
                self._last_leader = ep
                return st
        return None

    def leader(self, timeout: float = 15.0) -> Proc:
        st = self.wait_leader(timeout)
        return next(p for p in self.metadata if p.endpoint == st["leader"])

    def wait_leader(self, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st is not None:
                return st
            time.sleep(0.1)
        raise RuntimeError(f"no metadata leader within {timeout}s")

    def wait_chunkservers(self, n: int, timeout: float = 30.0) -> dict[str, Any]:
        """Until ``n`` chunkservers are alive and have finished their reports."""
        deadline = time.monotonic() + timeout
        st: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            st = self.status()
            if st is not None:
                ready = [
                    s
                    for s in st["chunkservers"]
                    if s.get("state") == "alive" and s.get("report_done")
                ]
                if len(ready) >= n:
                    return st
            time.sleep(0.1)
        raise RuntimeError(f"{n} chunkservers not ready within {timeout}s: {st}")

    # ------------------------------------------------------------ stopping

    def stop(self) -> None:
        for p in self.chunkservers + self.metadata:
            p.stop(timeout=10)

    # ------------------------------------------------------------ state files

    def save(self) -> None:
        config.write_file(
            self.cluster_file,
            self.endpoints,
            str(self.key_file) if self.key_file else None,
            [p.endpoint for p in self.chunkservers],
        )
        state = {
            "peers": {str(k): v for k, v in self.peers.items()},
            "key_file": str(self.key_file) if self.key_file else None,
            "chunkserver_args": self.chunkserver_args,
            "metadata_extra": self.metadata_extra,
            "gc_grace": self.gc_grace,
            "founders": self.founders,
            "removed": self.removed,
            "processes": [
                {"role": p.role, "name": p.name, "pid": p.pid, "endpoint": p.endpoint}
                for p in self.metadata + self.chunkservers
            ],
        }
        (self.dir / "cluster.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, dir: Path) -> LocalCluster:
        state = json.loads((dir / "cluster.json").read_text())
        c = cls(dir, detach=True)
        c.peers = {int(k): v for k, v in state["peers"].items()}
        c.key_file = Path(state["key_file"]) if state.get("key_file") else None
        c.chunkserver_args = state.get("chunkserver_args", {})
        c.metadata_extra = state.get("metadata_extra", [])
        c.gc_grace = state.get("gc_grace")
        c.founders = state.get("founders", [])
        c.removed = state.get("removed", [])
        for p in state["processes"]:
            proc = Proc(p["role"], p["name"], dir / "run", p["pid"], p["endpoint"])
            (c.metadata if p["role"] == "metadata" else c.chunkservers).append(proc)
        c.n_metadata, c.n_chunkservers = len(c.metadata), len(c.chunkservers)
        return c

    def running(self) -> list[Proc]:
        return [p for p in self.metadata + self.chunkservers if pid_alive(p.pid)]
