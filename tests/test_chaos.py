"""Chaos: puts and gets while a schedule kills -9 and restarts chunkservers (at most
R-1 down at once) and metadata nodes (a minority down at once).

Afterwards every acknowledged put reads back byte-identical, no file holds a
mix of versions or a partial upload, and the cluster returns to full
replication by itself. The chaos phase lasts DFS_CHAOS_SECONDS (default 25,
so the whole test stays around a minute in CI); the seed is DFS_CHAOS_SEED
(printed, so a failing schedule can be replayed).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import dfs
from dfs.errors import DfsError
from tools.cluster import LocalCluster
from tools.procs import Proc

CHAOS_SECONDS = float(os.environ.get("DFS_CHAOS_SECONDS", "25"))
SEED = int(os.environ.get("DFS_CHAOS_SEED", str(int(time.time()) % 100_000)))
R = 3
HEAL_BOUND = 120.0


class Workload:
    """Writers put files (some with duplicate content), a reader checks acked ones."""

    def __init__(self, cluster: LocalCluster, seed: int) -> None:
        self.cluster = cluster
        self.seed = seed
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.attempted: dict[str, str] = {}  # path -> sha256 of what was sent
        self.acked: dict[str, str] = {}  # the puts that returned success
        self.contents: dict[str, bytes] = {}  # sha -> bytes (for the final check)
        self.put_errors = 0
        self.read_errors = 0
        self.reads = 0
        self.wrong: list[str] = []
        self.threads = [
            threading.Thread(target=self._writer, args=(w,), name=f"writer{w}") for w in range(2)
        ] + [threading.Thread(target=self._reader, name="reader")]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def _writer(self, w: int) -> None:
        rng = random.Random(self.seed * 10 + w)
        with dfs.connect(str(self.cluster.cluster_file)) as cl:
            cl.mkdir(f"/w{w}", parents=True)
            i = 0
            while not self.stop.is_set():
                if self.contents and rng.random() < 0.2:  # dedup against earlier content
                    with self.lock:
                        data = self.contents[rng.choice(sorted(self.contents))]
                else:
                    data = rng.randbytes(rng.choice([0, 1, 3_000, 40_000, 300_000, 1_200_000]))
                digest = hashlib.sha256(data).hexdigest()
                path = f"/w{w}/f{i:05d}"
                i += 1
                with self.lock:
                    self.attempted[path] = digest
                    self.contents[digest] = data
                try:
                    cl.write_bytes(path, data)
                except DfsError:
                    self.put_errors += 1
                    continue
                with self.lock:
                    self.acked[path] = digest

    def _reader(self) -> None:
        rng = random.Random(self.seed * 10 + 9)
        with dfs.connect(str(self.cluster.cluster_file)) as cl:
            while not self.stop.is_set():
                with self.lock:
                    paths = sorted(self.acked)
                if not paths:
                    time.sleep(0.05)
                    continue
                path = rng.choice(paths)
                try:
                    data = cl.read_bytes(path)
                except DfsError:
                    self.read_errors += 1
                    continue
                self.reads += 1
                if hashlib.sha256(data).hexdigest() != self.acked[path]:
                    self.wrong.append(path)


def chaos(c: LocalCluster, rng: random.Random, seconds: float, log: list[str]) -> None:
    """Kill -9 and restart on a random schedule, within the fault budget."""
    down_cs: list[Proc] = []
    down_md: list[Proc] = []
    minority = (len(c.metadata) - 1) // 2
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        time.sleep(rng.uniform(1.0, 3.0))
        r = rng.random()
        if r < 0.55:  # chunkservers
            up = [p for p in c.chunkservers if p not in down_cs]
            if down_cs and (len(down_cs) >= R - 1 or rng.random() < 0.4):
                p = down_cs.pop(rng.randrange(len(down_cs)))
                c.restart(p)
                log.append(f"restart {p.name}")
            elif up:
                p = rng.choice(up)
                p.kill()
                down_cs.append(p)
                log.append(f"kill -9 {p.name}")
        else:  # metadata nodes
            if down_md and (len(down_md) >= minority or rng.random() < 0.5):
                p = down_md.pop()
                c.restart(p)
                log.append(f"restart {p.name}")
            else:
                try:
                    leader = c.leader(timeout=5) if rng.random() < 0.6 else None
                except RuntimeError:
                    leader = None
                p = leader or rng.choice([m for m in c.metadata if m not in down_md])
                p.kill()
                down_md.append(p)
                log.append(f"kill -9 {p.name}" + (" (leader)" if p is leader else ""))
    for p in down_cs + down_md:
        c.restart(p)
        log.append(f"restart {p.name}")


def test_chaos_puts_and_gets_survive_kills(tmp_path: Path) -> None:
    print(f"chaos seed {SEED}, {CHAOS_SECONDS}s")
    rng = random.Random(SEED)
    c = LocalCluster(tmp_path / "cluster", 3, 5)
    c.start(timeout=60)
    try:
        work = Workload(c, SEED)
        work.start()
        events: list[str] = []
        try:
            chaos(c, rng, CHAOS_SECONDS, events)
            time.sleep(1.0)  # a little quiet traffic after the last restart
        finally:
            work.finish()
        print("schedule:", "; ".join(events))
        print(
            f"{len(work.acked)} puts acknowledged, {work.put_errors} failed; "
            f"{work.reads} reads, {work.read_errors} failed"
        )
        assert not work.wrong, f"reads returned wrong bytes: {work.wrong[:5]}"
        assert len(work.acked) > 10

        c.wait_chunkservers(5, 60)
        with dfs.connect(str(c.cluster_file)) as cl:
            # back to full replication, by itself
            t0 = time.monotonic()
            while True:
                f = cl.meta.call("md.fsck", {"path": "/", "limit": 5})
                if f["ok"]:
                    break
                assert time.monotonic() - t0 < HEAL_BOUND, f"not healthy: {f}"
                time.sleep(1)
            print(f"fully replicated {time.monotonic() - t0:.1f}s after the last restart")
            # every acknowledged put reads back byte-identical
            for path, digest in sorted(work.acked.items()):
                assert hashlib.sha256(cl.read_bytes(path)).hexdigest() == digest, path
            # no partial file: whatever exists is exactly one attempted content
            for w in range(2):
                for name in cl.listdir(f"/w{w}"):
                    path = f"/w{w}/{name}"
                    got = hashlib.sha256(cl.read_bytes(path)).hexdigest()
                    assert got == work.attempted[path], f"{path} holds content never written"
    finally:
        c.stop()
