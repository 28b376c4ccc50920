"""A small scripted cluster for focused tests of the core: a perfect network
that delivers on demand, links that can be cut, and an in-memory disk.

Unlike the simulator there is no randomness except the nodes' own election
timeouts; tests drive it step by step (tick, deliver, crash, restart)."""

from __future__ import annotations

import random
from collections.abc import Callable

from metadata.raft.core import RaftConfig, RaftNode, Ready
from metadata.raft.messages import Entry, EntryType, Message, PersistentState, ReadState, Role


class Cluster:
    def __init__(
        self,
        ids: tuple[int, ...] = (1, 2, 3),
        cfg: RaftConfig | None = None,
        node_cls: Callable[..., RaftNode] = RaftNode,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg or RaftConfig(peers=ids)
        self.node_cls = node_cls
        self.seed = seed
        self.nodes: dict[int, RaftNode] = {}
        self.disks: dict[int, PersistentState] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.snapshots: dict[int, bytes] = {}  # last snapshot data restored per node
        self.reads: dict[int, list[ReadState]] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()  # (from, to) links that drop everything
        self.sent: list[Message] = []  # every message handed to the network
        for i in ids:
            self.add(i, self.cfg)

    # ------------------------------------------------------------ membership
    def add(self, node_id: int, cfg: RaftConfig | None = None) -> RaftNode:
        self.disks.setdefault(node_id, PersistentState())
        self.applied.setdefault(node_id, [])
        self.reads.setdefault(node_id, [])
        n = self.node_cls(
            node_id,
            cfg or self.cfg,
            self.disks[node_id].copy(),
            random.Random(self.seed * 1000 + node_id),
        )
        self.nodes[node_id] = n
        return n

    def crash(self, node_id: int) -> None:
        del self.nodes[node_id]

    def restart(self, node_id: int, cfg: RaftConfig | None = None) -> RaftNode:
        self.applied[node_id] = []
        return self.add(node_id, cfg)

    # ------------------------------------------------------------ network
    def isolate(self, node_id: int) -> None:
        for other in set(self.disks) - {node_id}:
            self.cut.add((node_id, other))
            self.cut.add((other, node_id))

    def heal(self) -> None:
        self.cut.clear()

    def process(self, node_id: int) -> None:
        """Run the driver loop of one node until it has nothing ready."""
        n = self.nodes.get(node_id)
        while n is not None and n.has_ready():
            rd = n.ready()
            self._persist(node_id, rd)
            for m in rd.messages:
                self.sent.append(m)
                if (m.frm, m.to) not in self.cut:
                    self.queue.append(m)
            if rd.install_snapshot and rd.snapshot is not None:
                self.snapshots[node_id] = rd.snapshot.data
            self.applied[node_id].extend(rd.committed_entries)
            self.reads[node_id].extend(rd.read_states)
            n.advance(rd)

    def _persist(self, node_id: int, rd: Ready) -> None:
        self.disks[node_id].apply_save(rd.hard_state, rd.entries, rd.snapshot)

    def process_all(self) -> None:
        for i in list(self.nodes):
            self.process(i)

    def deliver(
        self, max_msgs: int = 100_000, only: Callable[[Message], bool] | None = None
    ) -> int:
        """Deliver queued messages (and what they cause) until the network is quiet."""
        self.process_all()
        n = 0
        while self.queue and n < max_msgs:
            m = self.queue.pop(0)
            if only is not None and not only(m):
                continue
            node = self.nodes.get(m.to)
            if node is not None and (m.frm, m.to) not in self.cut:
                node.step(m)
                self.process(m.to)
            n += 1
        return n

    def tick(self, node_ids: list[int] | None = None, times: int = 1) -> None:
        for _ in range(times):
            for i in node_ids or list(self.nodes):
                if i in self.nodes:
                    self.nodes[i].tick()
            self.deliver()

    # ------------------------------------------------------------ helpers
    def elect(self, node_id: int) -> RaftNode:
        self.nodes[node_id].campaign()
        self.deliver()
        assert self.nodes[node_id].role == Role.LEADER, self.nodes[node_id].status()
        return self.nodes[node_id]

    def leader(self) -> RaftNode | None:
        ls = [n for n in self.nodes.values() if n.role == Role.LEADER]
        return max(ls, key=lambda n: n.term) if ls else None

    def data_applied(self, node_id: int) -> list[bytes]:
        return [e.data for e in self.applied[node_id] if e.type == EntryType.NORMAL]
