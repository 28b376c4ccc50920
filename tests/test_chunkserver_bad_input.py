"""Bad input to a real chunkserver: each gets a clear error (or is dropped) and
the server keeps serving."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import msgpack
import pytest
import zmq

from dfs import errors, wire
from dfs.errors import DfsError
from dfs.rpc import RpcClient
from dfs.security import Security


@pytest.fixture
def server(start_chunkserver):
    return start_chunkserver("cs1")


@pytest.fixture
def raw(server):
    """A bare DEALER socket, so tests can send frames no well-behaved client would."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(server.endpoint)
    yield sock
    sock.close()


def exchange(sock: zmq.Socket, frames: list[bytes]) -> wire.Reply:
    sock.send_multipart(frames)
    return wire.decode_reply(sock.recv_multipart())


def header(op: str, fields: object, req_id: int = 7, v: int = 1) -> bytes:
    return msgpack.packb({"v": v, "id": req_id, "op": op, "f": fields})


def still_serving(server) -> None:
    with RpcClient(timeout=5) as c:
        assert c.call(server.endpoint, "ping").fields["service"] == "chunkserver"


def test_malformed_msgpack(raw, server) -> None:
    reply = exchange(raw, [b"\xc1\xc1\xc1 not msgpack"])
    assert reply.error.code == errors.BAD_MESSAGE
    reply = exchange(raw, [msgpack.packb([1, 2, 3])])
    assert reply.error.code == errors.BAD_MESSAGE
    still_serving(server)


def test_wrong_protocol_version(raw, server) -> None:
    reply = exchange(raw, [header("cs.stat", {}, v=99)])
    assert reply.error.code == errors.BAD_MESSAGE and "version" in reply.error.message


def test_unknown_operation(raw, server) -> None:
    reply = exchange(raw, [header("cs.format_disk", {})])
    assert reply.id == 7 and reply.error.code == errors.UNKNOWN_OP
    # declared in the protocol but not served by a chunkserver
    reply = exchange(raw, [header("md.mkdir", {})])
    assert reply.error.code == errors.UNKNOWN_OP
    still_serving(server)


@pytest.mark.parametrize(
    "fields",
    [
        {"ids": "not a list"},
        {"ids": [1, 2, 3]},
        {"ids": ["a" * 64], "extra": True},
        {},
        "fields should be a map",
    ],
)
def test_wrong_types(raw, server, fields) -> None:
    reply = exchange(raw, [header("cs.has", fields)])
    assert reply.error.code == "EINVAL", reply.error


@pytest.mark.parametrize(
    "bad_id",
    [
        "../../../../etc/passwd",
        "a" * 63,
        "a" * 65,
        "g" * 64,
        "A" * 64,
        "../" + "a" * 61,
        12345,
        "a" * 62 + "/x",
    ],
)
def test_bad_chunk_ids(raw, server, tmp_path, bad_id) -> None:
    reply = exchange(raw, [header("cs.put", {"id": bad_id}), b"data"])
    assert reply.error.code == "EINVAL"
    reply = exchange(raw, [header("cs.get", {"id": bad_id})])
    assert reply.error.code == "EINVAL"
    # nothing was written anywhere outside the chunk store
    assert not (tmp_path / "etc").exists()
    still_serving(server)


def test_content_not_matching_its_id(raw, server) -> None:
    data = os.urandom(1000)
    wrong = hashlib.sha256(b"something else").hexdigest()
    reply = exchange(raw, [header("cs.put", {"id": wrong}), data])
    assert reply.error.code == errors.HASH_MISMATCH
    reply = exchange(raw, [header("cs.has", {"ids": [wrong]})])
    assert reply.fields["has"] == [False]


def test_missing_or_extra_data_frames(raw, server) -> None:
    cid = hashlib.sha256(b"x").hexdigest()
    assert exchange(raw, [header("cs.put", {"id": cid})]).error.code == errors.BAD_MESSAGE
    assert exchange(raw, [header("cs.put", {"id": cid}), b"x", b"y"]).error.code == (
        errors.BAD_MESSAGE
    )


def test_oversized_frame(raw, server) -> None:
    big = bytes(wire.MAX_CHUNK_BYTES + 1)
    reply = exchange(raw, [header("cs.put", {"id": hashlib.sha256(big).hexdigest()}), big])
    assert reply.error.code == errors.TOO_BIG
    still_serving(server)


def test_oversized_header(raw, server) -> None:
    reply = exchange(raw, [b"\x00" * (wire.MAX_HEADER_BYTES + 1)])
    assert reply.error.code == errors.TOO_BIG


def test_garbage_bytes_on_the_socket(server) -> None:
    host, port = server.endpoint.removeprefix("tcp://").rsplit(":", 1)
    for _ in range(5):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(os.urandom(4096))
            time.sleep(0.05)
    # a half-sent ZMTP greeting, then a disconnect
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03")
    still_serving(server)


def test_client_disconnects_mid_request(server) -> None:
    data = os.urandom(8 << 20)
    cid = hashlib.sha256(data).hexdigest()
    for _ in range(3):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        sock.send_multipart([header("cs.put", {"id": cid}), data])
        sock.send_multipart([header("cs.get", {"id": cid}, req_id=8)])
        sock.close()
        ctx.term()
    still_serving(server)


def test_cluster_key_refuses_peers_without_it(start_chunkserver, tmp_path) -> None:
    key = Security.generate()
    key.save(tmp_path / "cluster.key")
    cs = start_chunkserver("secure", "--key", str(tmp_path / "cluster.key"))
    with RpcClient(security=Security.load(tmp_path / "cluster.key"), timeout=5) as good:
        assert good.call(cs.endpoint, "ping").fields["service"] == "chunkserver"
    # no key at all: the handshake never completes, no reply
    with RpcClient(timeout=1.5) as plain, pytest.raises(DfsError) as exc:
        plain.call(cs.endpoint, "ping")
    assert exc.value.code == errors.TIMEOUT
    # a different key pair: refused by the server's authenticator
    other = Security(key.public, Security.generate().secret)
    with RpcClient(security=other, timeout=1.5) as wrong, pytest.raises(DfsError) as exc:
        wrong.call(cs.endpoint, "ping")
    assert exc.value.code == errors.TIMEOUT
    intruder = Security.generate()
    with RpcClient(security=intruder, timeout=1.5) as wrong, pytest.raises(DfsError):
        wrong.call(cs.endpoint, "ping")


def test_knowing_the_server_key_is_not_enough(start_chunkserver, tmp_path) -> None:
    """A client with the server's public key but its own key pair is refused by ZAP."""
    key = Security.generate()
    key.save(tmp_path / "cluster.key")
    cs = start_chunkserver("secure", "--key", str(tmp_path / "cluster.key"))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 1500)
    pub, sec = zmq.curve_keypair()
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = key.public, pub, sec
    sock.connect(cs.endpoint)
    sock.send_multipart([header("ping", {})])
    with pytest.raises(zmq.Again):
        sock.recv_multipart()
    sock.close()
    ctx.term()
