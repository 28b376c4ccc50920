"""Requests of one client process combined into one message (dfs/rpc.py's lanes),
against real 3-node metadata clusters on 127.0.0.1: every caller gets its own
result or error, exactly-once holds across a leader kill, and malformed multi
messages get clear errors while the server keeps serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from dfs import errors, wire
from dfs.client import Client, connect
from dfs.errors import DfsError
from dfs.rpc import RpcClient
from tests.conftest import running_cluster
from tools.cluster import LocalCluster, free_port


@pytest.fixture(scope="module")
def md_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three metadata nodes, no chunkservers (namespace operations only)."""
    with running_cluster(tmp_path_factory.mktemp("md"), 3, 0) as c:
        yield c


def _run_threads(n: int, fn: Callable[[int], None]) -> list[BaseException]:
    """Run fn(0..n-1) on n threads started together; the exceptions they raised."""
    failures: list[BaseException] = []
    start = threading.Barrier(n)

    def run(t: int) -> None:
        try:
            start.wait()
            fn(t)
        except BaseException as exc:  # collected: a thread's assert must fail the test
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a caller never got its reply"
    return failures


def _code(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str | None:
    try:
        fn(*args, **kwargs)
    except DfsError as exc:
        return exc.code
    return None


def test_threads_get_their_own_results_and_errors(md_cluster: LocalCluster) -> None:
    client = connect(str(md_cluster.cluster_file))
    try:
        client.mkdir("/mix")
        rounds = 25

        def worker(t: int) -> None:
            d = f"/mix/t{t}"
            client.mkdir(d)
            for i in range(rounds):
                p = f"{d}/f{i}"
                made = client.meta.ns("create", True, path=p, mode=0o600 + t)["attrs"]
                st = client.stat(p)  # a read right after our own write sees it
                assert st["ino"] == made["ino"]
                assert st["mode"] & 0o777 == 0o600 + t
                # errors stay each request's own: the others in the message succeed
                assert _code(client.stat, f"{d}/missing{i}") == "ENOENT"
                assert _code(client.meta.ns, "create", True, path=p) == "EEXIST"
                client.rename(p, f"{d}/g{i}")
                assert client.stat(f"{d}/g{i}")["ino"] == made["ino"]
            assert sorted(client.listdir(d)) == sorted(f"g{i}" for i in range(rounds))

        failures = _run_threads(16, worker)
        assert not failures, failures[:3]
        # combining really happened: fewer messages than requests
        assert client.rpc.lane_requests > client.rpc.lane_messages > 0
        assert client.statfs()["files"] == 16 * rounds
    finally:
        client.close()


def test_one_caller_alone_sends_plain_requests(md_cluster: LocalCluster) -> None:
    with connect(str(md_cluster.cluster_file)) as client:
        client.mkdir("/alone")
        for i in range(20):
            client.meta.ns("create", True, path=f"/alone/f{i}")
            client.stat(f"/alone/f{i}")
        # one request per message: a single caller never waits to combine
        assert client.rpc.lane_requests == client.rpc.lane_messages >= 40


def test_redirects_stay_per_request(md_cluster: LocalCluster) -> None:
    st = md_cluster.status()
    assert st is not None
    follower = next(ep for ep in md_cluster.endpoints if ep != st["leader"])
    codes: list[tuple[str, Any]] = []
    with RpcClient(timeout=5) as rpc:

        def ask(t: int) -> None:
            for _ in range(20):
                try:
                    rpc.call(follower, "md.getattr", {"args": {"path": "/"}})
                except DfsError as exc:
                    codes.append((exc.code, exc.details.get("leader")))

        assert not _run_threads(8, ask)
        assert rpc.lane_requests > rpc.lane_messages  # they did travel together
    assert set(codes) == {("NOT_LEADER", st["leader"])} and len(codes) == 160


def test_timeouts_reach_every_waiting_caller() -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"  # nothing listens here
    with RpcClient(timeout=0.3) as rpc:
        got: list[str] = []

        def ask(t: int) -> None:
            for _ in range(2):
                got.append(_code(rpc.call, dead, "md.getattr", {"args": {"path": "/"}}))

        t0 = time.monotonic()
        assert not _run_threads(8, ask)
        took = time.monotonic() - t0
    assert got == ["TIMEOUT"] * 16
    # queued callers give up at their own deadline, not after everyone ahead of them
    assert took < 8 * 2 * 0.3


def test_leader_kill_during_combined_creates(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", 3, 0)
    try:
        cluster.start(timeout=60)
        client: Client = connect(str(cluster.cluster_file), timeout=1.0)
        client.mkdir("/k")
        acked: list[str] = []
        failed: list[str] = []
        stop = threading.Event()

        def writer(t: int) -> None:
            i = 0
            while not stop.is_set():
                name = f"t{t:02d}-{i:05d}"
                try:
                    client.meta.ns("create", True, path=f"/k/{name}")
                    acked.append(name)
                except DfsError:
                    failed.append(name)
                i += 1

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(12)]
        for th in threads:
            th.start()
        time.sleep(1.0)
        before = client.rpc.lane_messages, client.rpc.lane_requests
        old = cluster.leader()
        old.kill()  # kill -9 while combined messages are in flight
        new = cluster.leader(timeout=15)
        assert new.name != old.name
        time.sleep(1.0)
        stop.set()
        for th in threads:
            th.join(timeout=60)
        assert not any(th.is_alive() for th in threads)
        assert client.rpc.lane_requests - before[1] > client.rpc.lane_messages - before[0]
        assert len(acked) > 100
        names = client.listdir("/k")
        # every acknowledged create exists, exactly once; a retried create that had
        # been applied was answered from its session, never EEXIST
        assert set(acked) <= set(names)
        assert len(names) == len(set(names))
        assert client.statfs()["files"] == len(names)
        assert not (set(failed) & set(acked))
        client.close()
    finally:
        cluster.stop()


# ---------------------------------------------------------------- malformed multis


def _raw(endpoint: str, header: dict[str, Any], timeout_ms: int = 5000) -> dict[str, Any]:
    """Send one hand-built message and return the reply header (no dfs client code)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.connect(endpoint)
    try:
        sock.send(msgpack.packb(header, use_bin_type=True))
        return msgpack.unpackb(sock.recv(), raw=False)
    finally:
        sock.close()


def _part(req_id: int, op: str, fields: Any) -> bytes:
    return msgpack.packb({"v": 1, "id": req_id, "op": op, "f": fields}, use_bin_type=True)


def _multi(req_id: int, reqs: Any) -> dict[str, Any]:
    return {"v": 1, "id": req_id, "op": "multi", "f": {"reqs": reqs}}


def _sub_replies(reply: dict[str, Any]) -> dict[int, dict[str, Any]]:
    assert reply["ok"] is True, reply
    return {r["id"]: r for r in (msgpack.unpackb(p, raw=False) for p in reply["f"]["r"])}


def test_malformed_multis_get_clear_errors(md_cluster: LocalCluster) -> None:
    leader = md_cluster.wait_leader()["leader"]
    getattr_root = _part(1, "md.getattr", {"args": {"path": "/"}})
    # the whole message is refused: reqs of the wrong type, empty, too many
    for reqs in ("nope", [], [42], [getattr_root] * (wire.MAX_MULTI + 1)):
        reply = _raw(leader, _multi(7, reqs))
        assert reply["id"] == 7 and reply["ok"] is False
        assert reply["err"]["code"] == "EINVAL" and "reqs" in reply["err"]["msg"]
    # a part that is too big is refused before anything runs
    big = _part(3, "md.getattr", {"args": {"path": "/" + "x" * wire.MAX_MULTI_PART}})
    assert _raw(leader, _multi(8, [big]))["err"]["code"] == "EINVAL"

    # a bad part fails alone; the good parts around it are answered
    nested = _part(2, "multi", {"reqs": [getattr_root]})
    not_combinable = _part(3, "md.locate", {"ids": []})
    unknown = _part(4, "md.format", {})
    bad_fields = _part(5, "md.getattr", {"args": {"path": 42}})
    bad_type = _part(6, "md.getattr", "not a map")
    missing = _part(9, "md.getattr", {"args": {"path": "/no/such"}})
    reqs = [getattr_root, nested, not_combinable, unknown, bad_fields, bad_type, missing]
    got = _sub_replies(_raw(leader, _multi(10, [*reqs, b"\xc1garbage"])))
    assert got[1]["ok"] is True and got[1]["f"]["attrs"]["type"] == "dir"
    assert got[2]["err"]["code"] == errors.BAD_MESSAGE and "multi" in got[2]["err"]["msg"]
    assert got[3]["err"]["code"] == errors.BAD_MESSAGE
    assert got[4]["err"]["code"] == errors.UNKNOWN_OP
    assert got[5]["err"]["code"] == "EINVAL"
    assert got[6]["err"]["code"] == "EINVAL"
    assert got[9]["err"]["code"] == "ENOENT"
    assert got[0]["err"]["code"] == errors.BAD_MESSAGE  # undecodable: no id to answer under

    # a multi of mutations with their own sessions: each applied once, even when
    # the same message is sent twice (a client's retry)
    creates = [
        _part(20 + i, "md.create", {"args": {"path": f"/raw{i}"}, "client": f"raw-{i}", "seq": 1})
        for i in range(3)
    ]
    first = _sub_replies(_raw(leader, _multi(11, creates)))
    again = _sub_replies(_raw(leader, _multi(12, creates)))
    for i in range(3):
        assert first[20 + i]["ok"] is True
        assert again[20 + i]["f"]["attrs"]["ino"] == first[20 + i]["f"]["attrs"]["ino"]

    # and the server still serves ordinary requests
    with RpcClient(timeout=5) as rpc:
        assert rpc.call(leader, "md.getattr", {"args": {"path": "/raw0"}}).fields["attrs"]
