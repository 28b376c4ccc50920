"""Framed TCP beside ZeroMQ (dfs/stream.py, dfs/rpc.py): the framing against
split and broken input, real RpcServer/RpcClient pairs on 127.0.0.1 (replies,
big frames, garbage on the port, a server restart), a keyed server that keeps
every byte on CURVE, and a real 3-node metadata cluster whose Raft traffic
runs on streams and survives its leader's kill -9."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import msgpack
import pytest

from dfs import errors, rpc, stream, wire
from dfs.client import connect
from dfs.errors import DfsError
from dfs.security import Security
from tests.conftest import running_cluster
from tools.cluster import LocalCluster, free_port


def _message(*parts: bytes) -> bytes:
    return b"".join(bytes(b) for b in stream.encode(list(parts)))


class _Pipe:
    """A socket stand-in for Reader.read_from: hands out given bytes in pieces."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = memoryview(data), step

    def recv_into(self, buf: memoryview) -> int:
        n = min(self.step, len(buf), len(self.data))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def recv(self, size: int) -> bytes:
        n = min(size, self.step)
        out, self.data = bytes(self.data[:n]), self.data[n:]
        return out


# ---------------------------------------------------------------- framing


@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_reader_reassembles_messages_from_any_split(step: int) -> None:
    big = os.urandom(stream.BIG * 3 + 5)  # read into its own buffer
    data = _message(b"head1") + _message(b"head2", big, b"") + _message(b"h3", b"x")
    reader, pipe = stream.Reader(), _Pipe(data, step)
    got = []
    while pipe.data or (msg := reader.pop()) is not None:
        if pipe.data:
            reader.read_from(pipe)  # type: ignore[arg-type]
        while (msg := reader.pop()) is not None:
            got.append([bytes(p) for p in msg])
    assert got == [[b"head1"], [b"head2", big, b""], [b"h3", b"x"]]


@pytest.mark.parametrize(
    "prefix",
    [
        stream.HEAD.pack(4, 0),  # no parts
        stream.HEAD.pack(4 * 9, stream.MAX_PARTS + 1),  # too many parts
        stream.HEAD.pack(stream.MAX_MESSAGE + 1, 1),  # over the size limit
        stream.HEAD.pack(2, 1),  # shorter than its own length table
    ],
)
def test_reader_refuses_a_bad_prefix(prefix: bytes) -> None:
    reader = stream.Reader()
    reader.read_from(_Pipe(prefix + bytes(64), 1 << 20))  # type: ignore[arg-type]
    with pytest.raises(stream.StreamError):
        reader.pop()


def test_a_promised_big_message_costs_only_what_arrives() -> None:
    """A prefix saying 256 MiB then silence must not make the reader allocate it."""
    reader = stream.Reader()
    reader.read_from(_Pipe(stream.HEAD.pack(stream.MAX_MESSAGE, 1) + bytes(100), 1 << 20))  # type: ignore[arg-type]
    assert reader.pop() is None
    assert reader.big is not None and len(reader.big) <= stream.BIG_STEP
    payload = os.urandom(3 * stream.BIG_STEP)
    body = struct.pack("<I", len(payload)) + payload
    reader = stream.Reader()
    pipe = _Pipe(stream.HEAD.pack(len(body), 1) + body, 1_500_000)
    while pipe.data:
        reader.read_from(pipe)  # type: ignore[arg-type]
        assert reader.big is None or len(reader.big) <= 2 * max(reader.got, stream.BIG_STEP)
    assert reader.pop() == [payload]


def test_reader_refuses_part_lengths_that_do_not_add_up() -> None:
    body = struct.pack("<2I", 3, 9) + b"abcdefgh"  # says 12 bytes of parts, holds 8
    data = stream.HEAD.pack(len(body), 2) + body
    reader = stream.Reader()
    reader.read_from(_Pipe(data, 1 << 20))  # type: ignore[arg-type]
    with pytest.raises(stream.StreamError):
        reader.pop()


# ---------------------------------------------------------------- server + client


@pytest.fixture
def server() -> Iterator[rpc.RpcServer]:
    s = rpc.RpcServer("tcp://127.0.0.1:0", name="t").start()
    try:
        yield s
    finally:
        s.stop()


def _streams(client: rpc.RpcClient) -> int:
    return len(client._stream_socks)


def test_calls_go_on_the_stream_and_carry_big_frames(server: rpc.RpcServer) -> None:
    assert server.stream_port is not None
    blob = os.urandom(9 << 20)
    with rpc.RpcClient(timeout=10) as c:
        assert c.call(server.endpoint, "ping").fields["stream"] == server.stream_port
        server.route("ping", lambda call: ({"n": len(blob)}, [blob, b"tail"]))
        for _ in range(3):
            r = c.call(server.endpoint, "ping")
            assert r.fields["n"] == len(blob)
            assert [bytes(f) for f in r.frames] == [blob, b"tail"]
        assert _streams(c) == 1  # one connection of this thread, reused


def test_keyed_server_and_client_stay_on_zeromq() -> None:
    key = Security.generate()
    s = rpc.RpcServer("tcp://127.0.0.1:0", security=key, name="k").start()
    try:
        assert s.stream_port is None
        with rpc.RpcClient(security=key, timeout=5) as c:
            assert "stream" not in c.call(s.endpoint, "ping").fields
            assert _streams(c) == 0
    finally:
        s.stop()


def test_stream_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFS_STREAM", "0")
    s = rpc.RpcServer("tcp://127.0.0.1:0", name="off").start()
    try:
        assert s.stream_port is None
        with rpc.RpcClient(timeout=5) as c:
            assert c.call(s.endpoint, "ping").fields["service"] == "off"
            assert _streams(c) == 0
    finally:
        s.stop()


def _raw(server: rpc.RpcServer, greet: bool = True) -> socket.socket:
    assert server.stream_port is not None
    sock = socket.create_connection(("127.0.0.1", server.stream_port), timeout=5)
    if greet:
        sock.sendall(_message(*stream.hello(server.stream_token)))
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_garbage_on_the_port_drops_that_connection_only(server: rpc.RpcServer) -> None:
    assert server.stream_port is not None
    with rpc.RpcClient(timeout=5) as c:
        assert c.call(server.endpoint, "ping").fields["service"] == "t"
        for junk in (
            b"\xff" * 64,  # a prefix far over every limit
            stream.HEAD.pack(stream.MAX_MESSAGE, 1),  # promises 256 MiB, sends nothing more
        ):
            bad = _raw(server)
            bad.sendall(junk)
            if junk.startswith(b"\xff"):
                assert _closed_by_peer(bad)
            bad.close()
        assert c.call(server.endpoint, "ping").fields["service"] == "t"


def test_a_stream_stalled_mid_message_is_dropped(
    server: rpc.RpcServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half a message and then silence (a broken or hostile peer holding a buffer):
    the server hangs up after STALL_SECONDS; an idle connection is kept."""
    monkeypatch.setattr(stream, "STALL_SECONDS", 0.3)
    stalled, idle = _raw(server), _raw(server)
    try:
        stalled.sendall(stream.HEAD.pack(1 << 20, 1) + bytes(1000))
        time.sleep(0.5)
        server.call_soon(server._drop_stalled)  # the timer's work, now
        assert _closed_by_peer(stalled)
        idle.sendall(_message(wire.encode_request(3, "ping", {})[0]))
        assert wire.decode_reply(stream.recv_message(idle, stream.Reader())).id == 3
    finally:
        stalled.close()
        idle.close()


def test_bad_header_on_the_stream_gets_a_clear_error(server: rpc.RpcServer) -> None:
    assert server.stream_port is not None
    sock = _raw(server)
    try:
        header = msgpack.packb({"v": wire.PROTOCOL_VERSION, "id": 7, "op": "no.such.op"})
        sock.sendall(_message(header))
        reply = wire.decode_reply(stream.recv_message(sock, stream.Reader()))
        assert reply.id == 7 and reply.error is not None
        sock.sendall(_message(b"\xc1 not msgpack"))
        reply = wire.decode_reply(stream.recv_message(sock, stream.Reader()))
        assert reply.error is not None and reply.error.code == errors.BAD_MESSAGE
    finally:
        sock.close()


def test_a_connection_without_the_servers_token_is_dropped(server: rpc.RpcServer) -> None:
    """A client that still has the port of a server that restarted (maybe now
    another server's) must not be served by whoever listens there now."""
    ping = wire.encode_request(1, "ping", {})
    for first in ([stream.HELLO, b"0123456789abcdef"], ping):  # wrong token; no HELLO
        sock = _raw(server, greet=False)
        try:
            sock.sendall(_message(*first) + _message(*ping))
            assert _closed_by_peer(sock)
        finally:
            sock.close()
    sock = _raw(server)
    try:
        sock.sendall(_message(*ping))
        assert wire.decode_reply(stream.recv_message(sock, stream.Reader())).fields["pid"]
    finally:
        sock.close()


def test_what_comes_back_on_a_senders_stream_is_not_served() -> None:
    """A Sender's connection carries one-way messages out; an error reply that comes
    back on it must not be taken for a request (two servers would bounce errors
    back and forth forever)."""
    a = rpc.RpcServer("tcp://127.0.0.1:0", name="a").start()
    b = rpc.RpcServer("tcp://127.0.0.1:0", name="b").start()
    served = {"a": 0, "b": 0}
    for name, srv in (("a", a), ("b", b)):
        real = srv._dispatch

        def counting(peer: object, parts: list, real=real, name=name) -> None:
            served[name] += 1
            real(peer, parts)

        srv._dispatch = counting  # type: ignore[method-assign]
    try:
        sender = rpc.Sender(server=a)
        assert b.stream_port is not None
        a.call_soon(lambda: sender.learn(b.endpoint, b.stream_port, b.stream_token))
        # b serves no raft.msg: it answers each with an UNKNOWN_OP error
        for _ in range(3):
            a.call_soon(lambda: sender.send(b.endpoint, "raft.msg", {"from": 1, "msgs": []}))
        deadline = time.monotonic() + 5
        while served["b"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a.call_soon(lambda: None) is None
        time.sleep(0.5)
        assert served == {"a": 0, "b": 3}
        assert sender.transport(b.endpoint) == "stream"
    finally:
        a.stop()
        b.stop()


def test_a_trickling_server_cannot_stretch_a_call_past_its_timeout() -> None:
    """The call's timeout bounds the whole reply, not each recv: a peer that sends
    one byte at a time (a broken or hostile server) still times out on time."""
    import threading

    import zmq

    listener = socket.create_server(("127.0.0.1", 0))
    router = zmq.Context.instance().socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    stop = threading.Event()

    def fake() -> None:  # answers ping on ZeroMQ, then trickles on the stream
        peer, header = router.recv_multipart()
        req = wire.decode_request([header])
        reply = wire.encode_reply(
            req.id, {"service": "x", "pid": 1, "stream": listener.getsockname()[1], "token": "t"}
        )
        router.send_multipart([peer, *reply])
        conn, _ = listener.accept()
        data = _message(wire.encode_reply(2, {"pad": "x" * 100_000})[0])
        for b in data:
            if stop.is_set():
                break
            conn.sendall(bytes([b]))
            time.sleep(0.01)
        conn.close()

    t = threading.Thread(target=fake, daemon=True)
    t.start()
    try:
        with rpc.RpcClient(timeout=1.0) as c:
            t0 = time.monotonic()
            with pytest.raises(DfsError) as err:
                c.call(endpoint, "ping")
            assert err.value.code == errors.TIMEOUT
            assert time.monotonic() - t0 < 3
    finally:
        stop.set()
        t.join(timeout=5)
        router.close(linger=0)
        listener.close()


def test_client_finds_a_restarted_server_again() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    s = rpc.RpcServer(endpoint, name="one").start()
    with rpc.RpcClient(timeout=3) as c:
        try:
            assert c.call(endpoint, "ping").fields["service"] == "one"
            first = s.stream_port
        finally:
            s.stop()
        s = rpc.RpcServer(endpoint, name="two").start()  # same endpoint, a new stream port
        try:
            assert s.stream_port != first
            # the old connection, idle since, is seen hung up before anything is sent
            time.sleep(rpc.STREAM_IDLE + 0.1)
            assert c.call(endpoint, "ping").fields["service"] == "two"
            assert c.call(endpoint, "ping").fields["stream"] == s.stream_port
        finally:
            s.stop()


def test_a_dead_server_times_out_instead_of_hanging(server: rpc.RpcServer) -> None:
    """A server that accepts but never answers: the call's timeout holds."""
    server.route("ping", lambda call: rpc.DEFERRED)  # never answers
    with rpc.RpcClient(timeout=0.5) as c:
        t0 = time.monotonic()
        with pytest.raises(DfsError) as err:
            c.call(server.endpoint, "ping")
        assert err.value.code == errors.TIMEOUT
        assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------- Raft on streams


@pytest.fixture(scope="module")
def md_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("md"), 3, 0) as c:
        yield c


def _transports(endpoint: str) -> dict[str, str]:
    with rpc.RpcClient(timeout=5) as c:
        return c.call(endpoint, "md.node_status").fields["transport"]


def test_raft_peers_talk_on_streams_and_survive_a_leader_kill(md_cluster: LocalCluster) -> None:
    client = connect(str(md_cluster.cluster_file))
    try:
        client.mkdir("/s", parents=True)
        for i in range(20):
            client.meta.ns("create", True, path=f"/s/a{i}", mode=0o644)
        leader = md_cluster.leader()
        deadline = time.monotonic() + 10
        while set(_transports(leader.endpoint).values()) != {"stream"}:
            assert time.monotonic() < deadline, _transports(leader.endpoint)
            client.meta.ns("create", True, path=f"/s/w{time.monotonic_ns()}", mode=0o644)
        leader.kill()
        for i in range(20):  # a new leader; the survivors reconnect as needed
            client.meta.ns("create", True, path=f"/s/b{i}", mode=0o644)
        md_cluster.restart(leader)  # back on a new stream port: the others learn it
        for i in range(20):
            client.meta.ns("create", True, path=f"/s/c{i}", mode=0o644)
        names = set(client.listdir("/s"))
        assert {f"{p}{i}" for p in "abc" for i in range(20)} <= names
        new_leader = md_cluster.leader()
        deadline = time.monotonic() + 10
        while set(_transports(new_leader.endpoint).values()) != {"stream"}:
            assert time.monotonic() < deadline, _transports(new_leader.endpoint)
            client.meta.ns("create", True, path=f"/s/w{time.monotonic_ns()}", mode=0o644)
    finally:
        client.close()
