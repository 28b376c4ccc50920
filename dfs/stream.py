"""Framed TCP: dfs.rpc's messages on a plain TCP connection, without ZeroMQ.

Why: on this machine a bare Python ping-pong over loopback takes 31 us on a
plain socket (17 us of the caller's CPU) and 102 us over a ZeroMQ DEALER and
ROUTER (45 us), because libzmq's I/O thread hands every message between
threads on both sides. Through our whole RPC stack: 106 us against 143-159
(``python -m tools.bench_rpc``). A Raft commit crosses four such hops and a
stat two, on two cores shared by every process of a local cluster.

When: only for a cluster without a cluster key. With a key, DESIGN.md's
security contract puts every socket on CURVE, so a keyed server opens no
stream listener and every byte stays on ZeroMQ. ``DFS_STREAM=0`` turns the
stream off on either side (for comparisons, or a firewall that lets only the
ZeroMQ port through).

How peers find it: a server tells its listener's port in ``ping`` replies
(clients ask once per endpoint) and in ``raft.msg`` (Raft peers); the host is
the one of the ZeroMQ endpoint. A stream that fails (refused, reset, a connect
that does not finish) sends that peer's traffic back to ZeroMQ for a while.

A message on the wire: u32 length of what follows, u16 number of parts, one
u32 length per part, then the parts (the same parts as ZeroMQ's multipart
message: the msgpack header, then data frames).
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from dfs import wire
from dfs.errors import DfsError

HEAD = struct.Struct("<IH")
MAX_PARTS = 1 + wire.MAX_FRAMES
# a whole message: every data frame at its limit plus a header (a peer saying
# more is cut off before anything is buffered)
MAX_MESSAGE = wire.MAX_HEADER_BYTES + wire.MAX_FRAMES * wire.MAX_CHUNK_BYTES + 4 * MAX_PARTS
RECV_BYTES = 64 << 10  # one recv of small messages (under glibc's mmap threshold)
BIG = 64 << 10  # a message at least this big is read straight into its own buffer
# a big message's buffer is allocated whole up to this size (a chunk and its
# header: no regrowth on the data path), and beyond it grows as bytes arrive,
# doubling: a prefix that promises 256 MiB and sends nothing costs this much
BIG_STEP = 8 << 20
MAX_QUEUED = 512 << 20  # bytes waiting to go out on one connection before it is dropped
IOV_MAX = 64  # buffers per sendmsg
USER_TIMEOUT_MS = 20_000  # unacknowledged data this long fails a connection
CONNECT_DEADLINE = 0.5  # seconds a non-blocking connect may take before it is given up
STALL_SECONDS = 30.0  # a connection with half a message and no bytes for this long is dropped
HELLO = b"dfs-stream-1"  # the first message on a connection: HELLO and the server's token


class StreamError(Exception):
    """The peer broke the framing or the connection: drop the connection."""


def enabled() -> bool:
    return os.environ.get("DFS_STREAM", "1") != "0"


def tcp_host(endpoint: str) -> str | None:
    """The IP address of a ``tcp://ip:port`` endpoint; None for ipc/inproc and for
    host names (resolving one could block an event loop: those stay on ZeroMQ)."""
    if not endpoint.startswith("tcp://"):
        return None
    host = endpoint[6:].rsplit(":", 1)[0].strip("[]")
    if host == "*":
        return host
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def new_token() -> bytes:
    """A server's proof of identity on its stream port (ports are reused after a restart)."""
    return os.urandom(8).hex().encode()


def encode(frames: Sequence[Any]) -> list[Any]:
    """The buffers of one message: a prefix (lengths) and the frames themselves."""
    lens = [len(f) if not isinstance(f, memoryview) else f.nbytes for f in frames]
    if not 1 <= len(lens) <= MAX_PARTS:
        raise DfsError("E2BIG", f"{len(lens)} parts in one message")
    prefix = HEAD.pack(4 * len(lens) + sum(lens), len(lens)) + struct.pack(f"<{len(lens)}I", *lens)
    return [prefix, *frames]


def _split(body: bytes | bytearray, nparts: int) -> list[Any]:
    """A message body into its parts: the header as bytes, data frames as views."""
    lens = struct.unpack_from(f"<{nparts}I", body, 0)
    off = 4 * nparts
    if off + sum(lens) != len(body):
        raise StreamError("part lengths do not add up to the message length")
    view = memoryview(body)
    parts: list[Any] = [bytes(view[off : off + lens[0]])]
    off += lens[0]
    for n in lens[1:]:
        parts.append(view[off : off + n])
        off += n
    return parts


class Reader:
    """Cuts messages out of a byte stream. A big message (a chunk) is read straight
    into a buffer of its own size: no growing, no copy out of a shared buffer."""

    __slots__ = ("big", "buf", "got", "nparts", "total")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.big: bytearray | None = None  # body of a big message being read
        self.total = 0  # its length
        self.got = 0  # bytes of ``big`` read so far
        self.nparts = 0

    def read_from(self, sock: socket.socket) -> int:
        """One recv; the number of bytes read (0: the peer closed the connection).
        BlockingIOError / timeouts propagate."""
        big = self.big
        if big is not None:
            if self.got == len(big):  # grown with what arrives: a prefix alone costs little
                big.extend(bytes(min(self.total, 2 * len(big)) - len(big)))
            n = sock.recv_into(memoryview(big)[self.got :])
            self.got += n
            return n
        data = sock.recv(RECV_BYTES)
        self.buf += data
        return len(data)

    @property
    def partial(self) -> bool:
        """Part of a message is in, the rest not yet."""
        return self.big is not None or bool(self.buf)

    def pop(self) -> list[Any] | None:
        """The next whole message's parts, or None until more bytes arrive."""
        if self.big is not None:
            if self.got < self.total:
                return None
            body, self.big = self.big, None
            return _split(body, self.nparts)
        buf = self.buf
        if len(buf) < HEAD.size:
            return None
        total, nparts = HEAD.unpack_from(buf)
        if not 1 <= nparts <= MAX_PARTS or total > MAX_MESSAGE or total < 4 * nparts:
            raise StreamError(f"bad message prefix ({total} bytes, {nparts} parts)")
        end = HEAD.size + total
        if len(buf) >= end:
            body = bytes(buf[HEAD.size : end])
            del buf[:end]
            return _split(body, nparts)
        if total >= BIG:  # the rest of it goes straight into its own buffer
            have = len(buf) - HEAD.size
            self.big = bytearray(min(total, max(BIG_STEP, 2 * have)))
            self.big[:have] = buf[HEAD.size :]
            self.total, self.got, self.nparts = total, have, nparts
            buf.clear()
        return None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def send_all(sock: socket.socket, bufs: list[Any], deadline: float) -> None:
    """Write every buffer on a blocking socket (sendmsg may write part of them);
    TimeoutError once ``deadline`` (time.monotonic) passes between writes."""
    views = [memoryview(b).cast("B") for b in bufs]
    while True:
        n = sock.sendmsg(views[:IOV_MAX])
        views = _consume(views, n)
        if not views:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError


def _consume(views: list[memoryview], n: int) -> list[memoryview]:
    """What is left of ``views`` after ``n`` bytes of them went out."""
    i = 0
    while i < len(views) and n >= views[i].nbytes:
        n -= views[i].nbytes
        i += 1
    rest = views[i:]
    if n and rest:
        rest[0] = rest[0][n:]
    return rest


def recv_message(sock: socket.socket, reader: Reader, deadline: float = math.inf) -> list[Any]:
    """Block until one whole message is in. The socket's own timeout bounds each
    recv; ``deadline`` (time.monotonic) bounds them all: a peer that trickles a
    reply byte by byte cannot stretch a call past it."""
    while True:
        msg = reader.pop()
        if msg is not None:
            return msg
        if time.monotonic() >= deadline:
            raise TimeoutError
        if reader.read_from(sock) == 0:
            raise StreamError("connection closed by the peer")


def hello(token: bytes) -> list[bytes]:
    """The first message a client sends: which server it means to talk to."""
    return [HELLO, token]


def tune(sock: socket.socket) -> None:
    """Small messages go out at once (no Nagle delay waiting for an ack); a peer
    that stops acknowledging fails the connection in USER_TIMEOUT, not TCP's
    ~15 minutes of retries."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class Conn:
    """A non-blocking connection on an event loop: a Reader for what comes in, a
    queue for what the socket would not take yet (the loop flushes it once the
    socket is writable). Used from the loop thread only."""

    __slots__ = (
        "closed",
        "connect_by",
        "connecting",
        "greeted",
        "last_read",
        "max_queued",
        "out",
        "outbound",
        "queued",
        "reader",
        "sock",
        "watching_out",
    )

    def __init__(
        self, sock: socket.socket, *, outbound: bool = False, max_queued: int = MAX_QUEUED
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reader = Reader()
        self.out: list[memoryview] = []
        self.queued = 0
        self.max_queued = max_queued
        self.outbound = outbound  # we opened it to send (Raft): what comes back is ignored
        self.greeted = outbound  # an inbound one must say HELLO and our token first
        self.connecting = False  # a non-blocking connect not finished yet
        self.connect_by = math.inf  # ... and when it is given up
        self.closed = False
        self.watching_out = False  # the loop polls for writability on our behalf
        self.last_read = time.monotonic()  # when bytes last came in

    @classmethod
    def connect(cls, host: str, port: int, token: bytes, max_queued: int) -> Conn:
        """Start connecting without blocking (``host`` is an IP address): what is
        sent meanwhile queues, after the HELLO that names the server meant."""
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        tune(sock)
        sock.setblocking(False)
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(err, os.strerror(err))
        conn = cls(sock, outbound=True, max_queued=max_queued)
        if err:
            conn.connecting = True
            conn.connect_by = time.monotonic() + CONNECT_DEADLINE
        conn.send(hello(token))
        return conn

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def wants_write(self) -> bool:
        return bool(self.out) or self.connecting

    def send(self, frames: Sequence[Any]) -> None:
        """Queue one message and write what the socket takes now."""
        if self.closed:
            return
        for b in encode(frames):
            view = memoryview(b).cast("B")
            self.out.append(view)
            self.queued += view.nbytes
        if self.queued > self.max_queued:
            self.close()
            raise StreamError(
                f"over {self.max_queued >> 20} MiB queued for a peer that does not read"
            )
        if not self.connecting:
            self.flush()

    def flush(self) -> None:
        """Write queued bytes until the socket would block."""
        if self.connecting:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.close()
                raise StreamError(f"connect failed: {os.strerror(err)}")
            self.connecting = False
        while self.out:
            try:
                n = self.sock.sendmsg(self.out[:IOV_MAX])
            except BlockingIOError:
                return
            except OSError as exc:
                self.close()
                raise StreamError(str(exc)) from None
            self.queued -= n
            self.out = _consume(self.out, n)

    def read(self, limit: int = 16) -> list[list[Any]]:
        """The messages that are in, after at most ``limit`` recvs (fairness)."""
        got: list[list[Any]] = []
        for _ in range(limit):
            try:
                n = self.reader.read_from(self.sock)
            except BlockingIOError:
                break
            except OSError as exc:
                self.close()
                raise StreamError(str(exc)) from None
            if n == 0:
                self.close()
                break
            self.last_read = time.monotonic()
            try:
                while (msg := self.reader.pop()) is not None:
                    got.append(msg)
            except StreamError:
                self.close()
                raise
            if self.reader.big is None and n < RECV_BYTES:
                break  # drained (a recv more would only fail): the poll says when there is more
        return got

    def stalled(self, now: float) -> bool:
        """Half a message in and nothing more for STALL_SECONDS: a peer that broke
        off (or holds our buffer on purpose)."""
        return self.reader.partial and now - self.last_read > STALL_SECONDS

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.out.clear()
            self.queued = 0
            try:
                self.sock.close()
            except OSError:
                pass


def listen(endpoint: str) -> socket.socket | None:
    """A listening socket on the address of a ZeroMQ tcp endpoint, on a free port."""
    host = tcp_host(endpoint)
    if host == "*":
        host = "0.0.0.0"
    if host is None:
        return None
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock
