"""Self-healing with real processes: re-replication after kill -9, rebalance onto
an empty server, decommission under reads, corrupt copies found by scrub and by
reads, garbage collection after the grace period.

Every test runs its own small cluster (3 metadata nodes, 4-5 chunkservers) on
127.0.0.1 and drives it through ``dfs-admin`` where a user would.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import dfs
from dfs.client import Client
from dfs.errors import DfsError
from dfs.rpc import RpcClient
from tools.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
HEAL_BOUND = 60.0  # seconds the cluster gets to return to full replication


@contextmanager
def running(tmp: Path, chunkservers: int = 4, **kw: Any) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp / "cluster", 3, chunkservers, **kw)
    try:
        c.start(timeout=60)
        yield c
    finally:
        c.stop()


def admin(c: LocalCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.admin", "--cluster", str(c.cluster_file), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def admin_json(c: LocalCluster, *args: str) -> tuple[int, dict[str, Any]]:
    r = admin(c, *args, "--json")
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def write_files(cl: Client, n: int, lo: int = 4_000, hi: int = 60_000, seed: int = 1) -> dict:
    rng = random.Random(seed)
    cl.mkdir("/d", parents=True)
    files = {}
    for i in range(n):
        data = rng.randbytes(rng.randint(lo, hi))
        cl.write_bytes(f"/d/f{i:04d}", data)
        files[f"/d/f{i:04d}"] = hashlib.sha256(data).hexdigest()
    return files


def check_files(cl: Client, files: dict[str, str]) -> None:
    for path, digest in files.items():
        assert hashlib.sha256(cl.read_bytes(path)).hexdigest() == digest, path


def wait_for(pred: Any, timeout: float, what: str, every: float = 0.5) -> float:
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(every)


def fsck(cl: Client) -> dict[str, Any]:
    return cl.meta.call("md.fsck", {"path": "/", "limit": 10})


def server_of(c: LocalCluster, ep: str) -> Any:
    return next(p for p in c.chunkservers if p.endpoint == ep)


def chunk_file(c: LocalCluster, name: str, cid: str) -> Path:
    return c.dir / name / "chunks" / cid[:3] / cid


def stored_ids(c: LocalCluster) -> set[str]:
    out = set()
    for p in c.chunkservers:
        out |= {f.name for f in (c.dir / p.name / "chunks").rglob("*") if len(f.name) == 64}
    return out


# ---------------------------------------------------------------- kill -9


def test_kill_chunkserver_heals_by_itself(tmp_path: Path) -> None:
    # copies are throttled so that the under-replicated window is long enough to see
    slow = ["--repair-bandwidth", "0.25"]
    with running(tmp_path, metadata_extra=slow) as c, dfs.connect(str(c.cluster_file)) as cl:
        files = write_files(cl, 200)
        code, r = admin_json(c, "fsck")
        assert code == 0 and r["ok"] and r["files"] == 200
        victim = c.chunkservers[1]
        victim.kill()  # kill -9
        # the leader notices the silence, fsck reports the loss ...
        wait_for(lambda: admin_json(c, "fsck")[0] == 1, 30, "under-replication reported")
        code, r = admin_json(c, "fsck")
        assert r["under_replicated"] > 0 and r["missing"] == 0, r
        assert r["files_listed"] and r["files_listed"][0]["under_replicated"] > 0
        # ... and re-replication brings it back to healthy without anyone asking
        took = wait_for(lambda: admin_json(c, "fsck")[0] == 0, HEAL_BOUND, "healed")
        print(f"healed {r['under_replicated']} chunks in {took:.1f}s after detection")
        st = c.status()
        assert st["cluster"]["under_replicated"] == 0 and st["cluster"]["missing"] == 0
        check_files(cl, files)

        # the server comes back: its extra copies are trimmed, and it is used again
        c.restart(victim)
        c.wait_chunkservers(4, 30)
        wait_for(
            lambda: c.status()["cluster"]["over_replicated"] == 0, HEAL_BOUND, "extra copies gone"
        )
        before = _replicas_on(c, victim.endpoint)
        more = write_files(cl, 30, seed=2)
        assert _replicas_on(c, victim.endpoint) > before
        check_files(cl, {**files, **more})
        assert admin(c, "fsck").returncode == 0


def _replicas_on(c: LocalCluster, ep: str) -> int:
    st = c.status()
    return next(s["replicas"] for s in st["chunkservers"] if s["endpoint"] == ep)


# ---------------------------------------------------------------- rebalance


def test_rebalance_onto_empty_server_never_below_r(tmp_path: Path) -> None:
    with (
        running(tmp_path, chunkserver_extra=["--capacity", "32M"]) as c,
        dfs.connect(str(c.cluster_file)) as cl,
    ):
        if True:
            files = write_files(cl, 200)
            c.add_chunkserver(wait=True)
            # the plan first
            r = admin(c, "rebalance", "--threshold", "5", "--dry-run")
            assert r.returncode == 0, r.stderr
            assert "moves" in r.stdout
            # then the real thing, watched by a thread checking every chunk keeps R copies
            low: list[dict] = []
            stop = threading.Event()

            def watch() -> None:
                with dfs.connect(str(c.cluster_file)) as w:
                    while not stop.is_set():
                        f = fsck(w)
                        if f["under_replicated"] or f["missing"] or f["unknown"]:
                            low.append(f)
                        time.sleep(0.05)

            t = threading.Thread(target=watch)
            t.start()
            try:
                r = admin(c, "rebalance", "--threshold", "5", "--json", "--timeout", "90")
            finally:
                stop.set()
                t.join()
            assert r.returncode == 0, r.stdout + r.stderr
            rb = json.loads(r.stdout)
            assert rb["done"] and rb["moves_done"] > 0, rb
            assert not low, f"a chunk went below R during the moves: {low[0]}"
            # every server within the threshold of the mean (fresh stats: a heartbeat later)
            time.sleep(1.5)
            servers = [s for s in c.status()["chunkservers"] if s["state"] == "alive"]
            pcts = [100 * s["stat"]["used"] / s["stat"]["capacity"] for s in servers]
            mean = (
                100
                * sum(s["stat"]["used"] for s in servers)
                / sum(s["stat"]["capacity"] for s in servers)
            )
            assert all(abs(p - mean) <= 5.0 for p in pcts), (mean, pcts)
            check_files(cl, files)
            assert admin(c, "fsck").returncode == 0


# ---------------------------------------------------------------- decommission


def test_decommission_while_reading(tmp_path: Path) -> None:
    with running(tmp_path) as c, dfs.connect(str(c.cluster_file)) as cl:
        files = write_files(cl, 80)
        leaving = c.chunkservers[0]
        errors: list[str] = []
        reads = [0]
        stop = threading.Event()

        def reader() -> None:
            with dfs.connect(str(c.cluster_file)) as r:
                while not stop.is_set():
                    for path, digest in files.items():
                        try:
                            if hashlib.sha256(r.read_bytes(path)).hexdigest() != digest:
                                errors.append(f"{path}: wrong bytes")
                        except DfsError as exc:
                            errors.append(f"{path}: {exc}")
                        reads[0] += 1
                        if stop.is_set():
                            return

        t = threading.Thread(target=reader)
        t.start()
        try:
            r = admin(c, "decommission", leaving.endpoint, "--timeout", "90")
        finally:
            stop.set()
            t.join()
        assert r.returncode == 0, r.stdout + r.stderr
        assert "retired" in r.stdout
        assert not errors, errors[:5]
        assert reads[0] > 0
        st = c.status()
        assert (
            next(s for s in st["chunkservers"] if s["endpoint"] == leaving.endpoint)["state"]
            == "retired"
        )
        # it remembers being retired across restarts and leader changes (kept on its disk)
        state = c.dir / leaving.name / "admin_state"
        wait_for(lambda: state.read_text().strip() == "retired", 10, "state pushed")
        # nothing needs it any more: stop it and everything still reads, fully replicated
        leaving.kill()
        check_files(cl, files)
        assert admin(c, "fsck").returncode == 0


# ---------------------------------------------------------------- corruption


def test_flipped_bytes_found_by_scrub_and_by_read_are_repaired(tmp_path: Path) -> None:
    with running(tmp_path) as c, dfs.connect(str(c.cluster_file)) as cl:
        files = write_files(cl, 20, lo=20_000, hi=40_000)
        exts = [cl.meta.ns("file_chunks", path=p)["extents"][0][0] for p in sorted(files)[:2]]
        flipped = []
        for cid in exts:
            ep = cl.locate([cid])[cid][0]
            name = server_of(c, ep).name
            path = chunk_file(c, name, cid)
            raw = bytearray(path.read_bytes())
            raw[100] ^= 0xFF
            raw[-7] ^= 0x55
            path.write_bytes(bytes(raw))
            flipped.append((cid, ep, name))

        # a reader that hits the bad copy gets good bytes from another and reports it
        cid, ep, _ = flipped[0]
        others = [e for e in cl.locate([cid])[cid] if e != ep]
        data = cl.fetch_chunk(cid, [ep, *others])
        assert hashlib.sha256(data).hexdigest() == cid
        assert cl.stats.bad_replicas == 1

        # the scrubber finds the other one (the pass is started by dfs-admin scrub)
        r = admin(c, "scrub", "--server", flipped[1][1], "--timeout", "30")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "1 corrupt" in r.stdout

        for cid, ep, name in flipped:
            # repaired: R good copies again, none of them the bad one (quarantined, not deleted)
            wait_for(
                lambda cid=cid, ep=ep: (
                    len(cl.locate([cid])[cid]) == 3 and ep not in cl.locate([cid])[cid]
                ),
                HEAL_BOUND,
                f"{cid[:12]} re-copied",
            )
            assert list((c.dir / name / "quarantine").glob(cid + ".*"))
        wait_for(lambda: c.status()["cluster"]["corrupt_replicas"] == 0, 30, "bad copies dropped")
        check_files(cl, files)
        assert admin(c, "fsck").returncode == 0
        st = admin_json(c, "status")[1]
        found = sum(s["stat"]["scrub"]["corrupt_found"] for s in st["chunkservers"])
        assert found >= 1


def test_false_bad_report_does_not_drop_a_good_copy(tmp_path: Path) -> None:
    with running(tmp_path, chunkservers=3) as c, dfs.connect(str(c.cluster_file)) as cl:
        cl.write_bytes("/x", os.urandom(50_000))
        cid = cl.meta.ns("file_chunks", path="/x")["extents"][0][0]
        ep = cl.locate([cid])[cid][0]
        cl.report_bad(cid, ep)  # a confused client: the server re-checks and keeps it
        time.sleep(2)
        assert ep in cl.locate([cid])[cid]
        assert c.status()["maintenance"]["progress"]["corrupt_rejected"] >= 1


# ---------------------------------------------------------------- garbage collection


def test_gc_after_grace_keeps_shared_and_uploading_chunks(tmp_path: Path) -> None:
    with running(tmp_path, chunkservers=3, gc_grace=2) as c, dfs.connect(str(c.cluster_file)) as cl:
        rng = random.Random(5)
        only = rng.randbytes(300_000)
        shared = rng.randbytes(200_000)
        cl.write_bytes("/only", only)
        cl.write_bytes("/a", shared)
        cl.write_bytes("/b", shared)  # dedup: the same chunks as /a
        ids_only = {e[0] for e in cl.meta.ns("file_chunks", path="/only")["extents"]}
        ids_shared = {e[0] for e in cl.meta.ns("file_chunks", path="/a")["extents"]}
        assert ids_shared == {e[0] for e in cl.meta.ns("file_chunks", path="/b")["extents"]}
        # an upload in progress: chunks stored, nothing committed yet
        pending = rng.randbytes(100_000)
        pid = hashlib.sha256(pending).hexdigest()
        chain = cl.place(1, 3)[0]
        with RpcClient(timeout=10) as rpc:
            rpc.call(chain[0], "cs.put", {"id": pid, "forward": chain[1:]}, [pending])
        assert ids_only <= stored_ids(c) and ids_shared <= stored_ids(c)

        cl.remove("/only")
        cl.remove("/a")
        took = wait_for(lambda: not (ids_only & stored_ids(c)), 30, "deleted file's chunks gone")
        print(f"chunks of the deleted file gone {took:.1f}s after the delete (grace 2s)")
        time.sleep(3)  # a few more rounds
        assert ids_shared <= stored_ids(c), "a chunk still referenced by /b was deleted"
        assert pid in stored_ids(c), "an upload in progress lost its chunk"
        assert cl.read_bytes("/b") == shared
        # the upload commits late: its chunk is still there and the file reads back
        cl.commit("/late", [[pid, len(pending)]])
        assert cl.read_bytes("/late") == pending
        # the last reference goes: now the shared chunks go too
        cl.remove("/b")
        wait_for(lambda: not (ids_shared & stored_ids(c)), 30, "shared chunks gone")
        assert admin(c, "fsck").returncode == 0


# ---------------------------------------------------------------- admin surface


def test_admin_status_and_errors(tmp_path: Path) -> None:
    with running(tmp_path, chunkservers=3) as c, dfs.connect(str(c.cluster_file)) as cl:
        cl.write_bytes("/s1", b"z" * 400_000)
        cl.write_bytes("/s2", b"z" * 400_000)
        wait_for(lambda: c.status()["cluster"]["stored_bytes"] > 0, 10, "heartbeats with usage")
        time.sleep(1.2)  # every server's next heartbeat
        code, st = admin_json(c, "status")
        assert code == 0
        roles = sorted(n["role"] for n in st["metadata_nodes"])
        assert roles == ["follower", "follower", "leader"]
        assert all(n["lag"] >= 0 for n in st["metadata_nodes"])
        cl_ = st["cluster"]
        assert cl_["files"] == 2 and cl_["dedup_ratio"] >= 1.9
        assert cl_["compression_ratio"] > 1.5  # zeros compress
        assert all("scrub" in s["stat"] for s in st["chunkservers"])
        r = admin(c, "status")
        assert r.returncode == 0 and "metadata nodes" in r.stdout and "chunkservers" in r.stdout
        assert admin(c, "decommission", "tcp://127.0.0.1:1").returncode == 2  # no such server
        assert admin(c, "raft", "add", "4").returncode == 2  # needs the new node's endpoint
        assert admin(c, "raft", "remove", "9").returncode == 2  # not a voter
        assert admin(c, "setrep", "2", "/s1").returncode == 0
        assert cl.stat("/s1")["rep"] == 2
        assert admin(c, "--help").returncode == 0
        assert admin(c, "fsck", "/nope").returncode == 2
        for action, args, code in (
            ("rebalance", {"threshold": "lots"}, "EINVAL"),
            ("rebalance", {"threshold": -3}, "EINVAL"),
            ("no_such_thing", {}, "ENOSYS"),
            ("__init__", {}, "ENOSYS"),
            ("decommission", {"server": 7}, "EINVAL"),
        ):
            with pytest.raises(DfsError) as e:
                cl.meta.call("md.admin", {"action": action, "args": args})
            assert e.value.code == code, (action, e.value)
        # leadership moves on request
        old = st["leader"]
        r = admin(c, "raft", "transfer-leader")
        assert r.returncode == 0, r.stdout + r.stderr
        assert c.wait_leader()["leader"] != old
