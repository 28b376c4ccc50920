"""Metadata membership changes (dfs-admin raft add / remove) with real processes,
plus the replicated peers map and its snapshot format."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import msgpack

from dfs.client import connect
from dfs.errors import DfsError
from dfs.rpc import RpcClient
from metadata.raft.driver import _bootstrap_voters
from metadata.server import PEERS_OP, NamespaceMachine
from tools import admin
from tools.cluster import LocalCluster

# ---------------------------------------------------------------- state machine


def _cmd(op: str, args: dict, seq: int | None = None) -> bytes:
    cmd = {"op": op, "args": args, "client": None, "seq": seq, "ts": time.time_ns()}
    return msgpack.packb(cmd, use_bin_type=True)


def test_peers_map_is_replicated_state_and_survives_snapshots() -> None:
    m = NamespaceMachine()
    assert m.apply(_cmd("mkdir", {"path": "/d", "mode": 0o755}))["ok"]
    r = m.apply(_cmd(PEERS_OP, {"set": {"1": "tcp://127.0.0.1:7001", "4": "tcp://h:7004"}}))
    assert r["ok"] and m.peers == {1: "tcp://127.0.0.1:7001", 4: "tcp://h:7004"}
    assert m.apply(_cmd(PEERS_OP, {"drop": [1]}))["ok"] and m.peers == {4: "tcp://h:7004"}
    bad = m.apply(_cmd(PEERS_OP, {"set": {"5": "not an endpoint"}}))
    assert not bad["ok"] and m.peers == {4: "tcp://h:7004"}  # refused whole, same everywhere

    snap = m.snapshot()
    assert snap == m.snapshot()  # deterministic
    m2 = NamespaceMachine()
    m2.restore(snap)
    assert m2.peers == {4: "tcp://h:7004"} and m2.ns.query("getattr", {"path": "/d"})["ok"]

    old = NamespaceMachine()  # a snapshot from before the peers map: a bare namespace
    old.restore(m.ns.snapshot())
    assert old.peers == {} and old.ns.query("getattr", {"path": "/d"})["ok"]


def test_bootstrap_voters_are_fixed_at_first_start(tmp_path: Path) -> None:
    peers = {1: "tcp://a:1", 2: "tcp://a:2", 3: "tcp://a:3"}
    assert _bootstrap_voters(tmp_path, peers, join=False) == (1, 2, 3)
    more = {**peers, 4: "tcp://a:4", 5: "tcp://a:5"}  # a later --peers lists new members
    assert _bootstrap_voters(tmp_path, more, join=False) == (1, 2, 3)
    j = tmp_path / "joiner"
    j.mkdir()
    assert _bootstrap_voters(j, more, join=True) == ()
    assert _bootstrap_voters(j, more, join=False) == ()  # restarted without --join: still none
    assert json.loads((j / "bootstrap.json").read_text()) == {"voters": []}


# ---------------------------------------------------------------- real processes


def _node_status(c: LocalCluster, node_id: int) -> dict | None:
    with RpcClient(security=c.security(), timeout=2.0) as rpc:
        try:
            return rpc.call(c.peers[node_id], "md.node_status").fields
        except DfsError:
            return None


def _wait_caught_up(c: LocalCluster, node_id: int, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = c.status()
        me = _node_status(c, node_id)
        if st and me and me["applied"] >= st["node"]["commit"] and me.get("voter"):
            return me
        time.sleep(0.1)
    raise AssertionError(f"node {node_id} did not catch up: {me} vs {st and st['node']}")


def _voters(c: LocalCluster) -> dict[int, str]:
    st = c.wait_leader(20)
    return {int(k): v for k, v in st["voters"].items()}


def test_add_kill_remove_restart(tmp_path: Path, capsys) -> None:
    t_start = time.monotonic()

    def step(what: str) -> None:
        print(f"[{time.monotonic() - t_start:5.1f}s] {what}", flush=True)

    c = LocalCluster(tmp_path / "c", 3, 0, metadata_extra=["--snapshot-every", "50"])
    client = None
    try:
        c.start(timeout=60)
        client = connect(str(c.cluster_file), timeout=1.5)
        acked: list[str] = []

        def create(name: str) -> None:
            client.meta.ns("create", True, path="/" + name, mode=0o644)
            acked.append(name)

        for i in range(150):
            create(f"a{i:04d}")
        st = c.status()
        assert st["node"]["first_index"] > 1  # compacted: a new node needs a snapshot

        step("add node 4")
        # -- add node 4 (catches up from the leader's snapshot), then node 5 under load
        p4 = c.add_metadata()
        assert p4.name == "meta4"
        me4 = _wait_caught_up(c, 4)
        assert me4["first_index"] > 1 and sorted(me4["voters"]) == [1, 2, 3, 4]

        stop = threading.Event()
        failed: list[str] = []

        def writer() -> None:
            i = 0
            while not stop.is_set():
                try:
                    create(f"b{i:05d}")
                except DfsError:
                    failed.append(f"b{i:05d}")
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            c.add_metadata()
            _wait_caught_up(c, 5)
            assert sorted(_voters(c)) == [1, 2, 3, 4, 5]
            # every voter reaches every other through the replicated map
            assert _voters(c) == c.peers

            step("kill -9")
            # -- kill -9 two original nodes (the leader if it is one): 3 of 5 remain
            lead = c.leader()
            originals = [p for p in c.metadata if p.name in ("meta1", "meta2", "meta3")]
            victims = ([lead] if lead in originals else []) + [p for p in originals if p != lead]
            victims = victims[:2]
            for p in victims:
                p.kill()
            n_before = len(acked)
            deadline = time.monotonic() + 20
            while len(acked) < n_before + 50 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(acked) >= n_before + 50, (
                f"the 5-node cluster stopped committing: {[_node_status(c, i) for i in c.peers]}"
            )
        finally:
            stop.set()
            t.join()
        killed = sorted(int(p.name.removeprefix("meta")) for p in victims)

        step("remove a dead node")
        # -- remove one of the dead nodes: 4 voters, 3 alive, still a majority
        c.remove_metadata(killed[0])
        assert sorted(_voters(c)) == sorted(set(range(1, 6)) - {killed[0]})
        for i in range(20):
            create(f"c{i:04d}")
        client.close()
        client = connect(str(c.cluster_file), timeout=1.5)
        assert set(acked) <= set(client.listdir("/"))
        assert not (set(failed) & set(acked))

        step("restart everything")
        # -- restart everything: membership and namespace survive
        for p in list(c.metadata):
            p.stop()
        for node_id in sorted(c.peers):
            c.start_metadata(node_id)
        assert sorted(_voters(c)) == sorted(c.peers)
        client.close()
        client = connect(str(c.cluster_file), timeout=1.5)
        assert set(acked) <= set(client.listdir("/"))
        for node_id in c.peers:
            _wait_caught_up(c, node_id)

        step("CLI: status, remove the leader")
        # -- the CLI: status shows the voters; remove the leader itself (it hands over)
        file = str(c.cluster_file)
        capsys.readouterr()
        assert admin.main(["--cluster", file, "status", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert sorted(map(int, out["voters"])) == sorted(c.peers)
        assert all(n.get("voter") for n in out["metadata_nodes"])
        lead_id = c.wait_leader()["node"]["id"]
        step("status ok")
        assert admin.main(["--cluster", file, "raft", "remove", str(lead_id)]) == 0
        assert f"metadata node {lead_id}" in capsys.readouterr().out
        step("leader removed")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st = c.status()
            if st and st["node"]["id"] != lead_id:
                break
            time.sleep(0.1)
        assert st and st["node"]["id"] != lead_id
        assert lead_id not in {int(k) for k in st["voters"]}
        step("new leader")
        # the CLI did the remove: stop the old leader as remove_metadata would
        for p in [p for p in c.metadata if p.name == f"meta{lead_id}"]:
            p.stop()
        c.peers.pop(lead_id)
        c.save()
        for i in range(20):
            create(f"d{i:04d}")
        step("old leader stopped, creates")
        client.close()
        client = connect(str(c.cluster_file), timeout=1.5)
        assert set(acked) <= set(client.listdir("/"))
        assert admin.main(["--cluster", file, "raft", "add", "9"]) == 2  # needs an endpoint
        step("done")
        print(f"membership test: {len(acked)} creates, {time.monotonic() - t_start:.1f}s")
    finally:
        if client is not None:
            client.close()
        c.stop()
        step("stopped")
