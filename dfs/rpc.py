"""RPC: a ROUTER server with an event loop, and DEALER clients; framed TCP beside.

Server: one loop thread owns the ROUTER socket. Handlers run on the loop
unless registered as ``blocking`` (disk, hashing): those go to a thread pool,
and their replies come back to the loop through an inproc socket. A handler
may also answer later (a Raft commit, a forwarded put) by returning
``DEFERRED`` and calling ``call.respond`` / ``call.fail`` from any thread.
``call_soon`` runs a function on the loop from any thread; ``after_poll``
hooks run once per loop iteration (the Raft driver lives there). A ``multi``
message is served request by request, through the same routes, and answered
with one message once every request in it has its answer.

Client: ``call`` (blocking) uses a socket of the calling thread's own, so a
request costs no hand-off between threads. Blocking calls of an op with a
lane (the metadata namespace's) combine: while the lane's messages are in
flight to an endpoint (one for reads, two for writes), other threads'
requests queue, and the first of them then sends them all in one ``multi``
message (one send, one receive, one reply for many requests: what a busy
multi-threaded client, such as the mount, saves); a caller alone sends at
once. ``call_async`` hands requests to
one I/O thread that owns a DEALER per endpoint, so many requests are in
flight on one connection, each with a Future. Chunk data goes out with
zero-copy sends. ``Sender`` sends one-way messages (Raft) from a loop.

Framed TCP (dfs/stream.py): without a cluster key the server also listens on a
plain TCP port, served by the same loop; blocking calls and ``Sender`` use it
once the server has told its port (``ping``, ``raft.msg``), and fall back to
ZeroMQ whenever it cannot be opened. ``call_async`` stays on ZeroMQ.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import zmq

from dfs import errors, stream, wire
from dfs.errors import DfsError
from dfs.security import Security
from dfs.wire import Frame, Reply, Request

log = logging.getLogger(__name__)

ZERO_COPY_MIN = 64 * 1024  # frames smaller than this are cheaper to copy
MAX_STREAMS = 4096  # stream connections one server keeps open
_inproc_ids = itertools.count()  # unique inproc names, even across id() reuse
MAX_INBOUND_FRAME = wire.MAX_CHUNK_BYTES + wire.MAX_HEADER_BYTES + (1 << 20)
DEFERRED = object()  # a handler's return value meaning "I will respond later"
# pyzmq's flags and options are enums: ``NOBLOCK | SNDMORE`` costs a microsecond
# through the enum machinery, so the hot paths use plain ints
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
_RCVMORE, _RCVTIMEO = int(zmq.RCVMORE), int(zmq.RCVTIMEO)
_POLLIN, _POLLOUT, _POLLERR = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.POLLERR)
# (a drain ends on zmq.Again, ~4 us; asking EVENTS before each recv costs 2 us
# per message, more under load, when a drain reads many)


Handler = Callable[["Call"], Any]


class Call:
    """One request being served: the parsed request plus how to answer it."""

    __slots__ = ("_done", "_server", "peer", "request")

    def __init__(self, request: Request, peer: bytes, server: RpcServer, done: bool = False):
        self.request = request
        self.peer = peer
        self._server = server
        self._done = done

    @property
    def fields(self) -> dict[str, Any]:
        return self.request.fields

    def respond(self, fields: dict[str, Any] | None = None, frames: Sequence[Frame] = ()) -> None:
        if self._done:
            return
        self._done = True
        self._deliver(wire.encode_reply(self.request.id, fields, frames))

    def settle(self, result: Any) -> None:
        """Answer with a result map, or fail with a DfsError (a completion callback)."""
        if isinstance(result, DfsError):
            self.fail(result)
        else:
            self.respond(result)

    def fail(self, error: DfsError) -> None:
        if self._done:
            return
        self._done = True
        self._deliver(wire.encode_error(self.request.id, error))

    def _deliver(self, frames: list[Frame]) -> None:
        self._server._send(self.peer, frames)


class _Multi:
    """The replies to one multi message, sent back as one message once all are in
    (from whichever thread answers last)."""

    __slots__ = ("_left", "_lock", "_server", "id", "peer", "replies")

    def __init__(self, server: RpcServer, peer: bytes, req_id: int, n: int) -> None:
        self._server = server
        self.peer = peer
        self.id = req_id
        self.replies: list[bytes] = []
        self._left = n
        self._lock = threading.Lock()

    def put(self, reply: bytes) -> None:
        with self._lock:
            self.replies.append(reply)
            self._left -= 1
            if self._left:
                return
        self._server._send(self.peer, wire.encode_reply(self.id, {"r": self.replies}))


class _PartCall(Call):
    """One request of a multi message: its answer goes into the multi's reply."""

    __slots__ = ("_multi",)

    def __init__(self, request: Request, peer: bytes, server: RpcServer, multi: _Multi):
        super().__init__(request, peer, server)
        self._multi = multi

    def _deliver(self, frames: list[Frame]) -> None:
        if len(frames) > 1:  # ops with a lane answer without data frames
            error = DfsError("EIO", f"{self.request.op} answered with data frames in a multi")
            frames = wire.encode_error(self.request.id, error)
        self._multi.put(frames[0])


@dataclass
class _Route:
    handler: Handler
    blocking: bool


@dataclass
class _Timer:
    interval: float
    fn: Callable[[], None]
    due: float = 0.0


class RpcServer:
    """A ROUTER socket served by one event loop thread plus a worker pool."""

    def __init__(
        self,
        endpoint: str,
        *,
        security: Security | None = None,
        workers: int = 4,
        context: zmq.Context | None = None,
        name: str = "rpc",
    ) -> None:
        self.ctx = context or zmq.Context.instance()
        self.security = security
        self.name = name
        self._routes: dict[str, _Route] = {}
        self._timers: list[_Timer] = []
        self._extra: dict[zmq.Socket, Callable[[zmq.Socket], None]] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-worker")
        self._stop = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._loop_ident: int | None = None
        self._local = threading.local()
        self._inproc = f"inproc://{name}-replies-{os.getpid()}-{next(_inproc_ids)}"
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        self.sock.setsockopt(zmq.SNDHWM, 10_000)
        # a peer sending a frame far over the protocol's limits is disconnected by
        # libzmq before it is buffered whole (frames just over get an E2BIG reply)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_FRAME)
        if security is not None:
            security.apply_server(self.sock, self.ctx)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._replies = self.ctx.socket(zmq.PULL)
        self._replies.bind(self._inproc)
        self._soon: deque[Callable[[], None]] = deque()
        self.after_poll: list[Callable[[], None]] = []  # run once per loop iteration
        # framed TCP beside the ROUTER (dfs.stream): never with a cluster key
        self._listener = (
            stream.listen(self.endpoint) if security is None and stream.enabled() else None
        )
        self.stream_port: int | None = (
            self._listener.getsockname()[1] if self._listener is not None else None
        )
        # said by every client in its HELLO: a port another server had before is no use
        self.stream_token = stream.new_token()
        self._conns: dict[int, stream.Conn] = {}  # fd -> stream connection, on the loop
        self._poller: zmq.Poller | None = None
        self._accept_paused_until = 0.0  # out of file descriptors: accept again later
        if self._listener is not None:
            self.every(stream.STALL_SECONDS / 6, self._drop_stalled)
        self.route("ping", self._ping)

    def _ping(self, call: Call) -> dict[str, Any]:
        reply: dict[str, Any] = {"service": self.name, "pid": os.getpid()}
        if self.stream_port is not None:
            reply["stream"] = self.stream_port
            reply["token"] = self.stream_token.decode()
        return reply

    # ------------------------------------------------------------ registration

    def route(self, op: str, handler: Handler, *, blocking: bool = False) -> None:
        """Serve ``op`` with ``handler(call)``; it returns reply fields, a
        ``(fields, frames)`` pair, or ``DEFERRED``; it may raise DfsError."""
        if op not in wire.OPS:
            raise ValueError(f"{op} is not declared in dfs.wire")
        self._routes[op] = _Route(handler, blocking)

    def every(self, interval: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread every ``interval`` seconds."""
        self._timers.append(_Timer(interval, fn, time.monotonic() + interval))

    def add_socket(self, sock: zmq.Socket, on_readable: Callable[[zmq.Socket], None]) -> None:
        """Poll another socket on the loop (before start)."""
        self._extra[sock] = on_readable

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread (thread-safe); the loop wakes up for it."""
        self._soon.append(fn)
        if not self.on_loop():
            self._push([b""])  # a one-frame message only wakes the loop

    def on_loop(self) -> bool:
        return threading.get_ident() == self._loop_ident

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run blocking work on the server's pool."""
        return self._pool.submit(fn, *args)

    # ------------------------------------------------------------ running

    def start(self) -> RpcServer:
        self._loop_thread = threading.Thread(
            target=self.serve_forever, name=f"{self.name}-loop", daemon=True
        )
        self._loop_thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._loop_thread is not None and self._loop_thread is not threading.current_thread():
            self._loop_thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def serve_forever(self) -> None:
        self._loop_ident = threading.get_ident()
        poller = self._poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._replies, zmq.POLLIN)
        for sock in self._extra:
            poller.register(sock, zmq.POLLIN)
        listen_fd = -1
        if self._listener is not None:
            listen_fd = self._listener.fileno()
            poller.register(listen_fd, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if self._accept_paused_until and time.monotonic() >= self._accept_paused_until:
                    self._accept_paused_until = 0.0
                    poller.register(listen_fd, zmq.POLLIN)
                ready = dict(poller.poll(self._poll_timeout_ms()))
                if self._replies in ready:
                    self._drain_replies()
                if self.sock in ready:
                    self._drain_requests()
                if self._conns or listen_fd in ready:
                    for fd, events in ready.items():
                        if fd.__class__ is int:
                            self._stream_ready(fd, events, listen_fd)
                for sock, fn in self._extra.items():
                    if sock in ready:
                        fn(sock)
                self._run_timers()
                self._run_soon()
                for hook in self.after_poll:
                    try:
                        hook()
                    except Exception:
                        log.exception("%s: loop hook failed", self.name)
        finally:
            self.sock.close(linger=0)
            self._replies.close(linger=0)
            for conn in list(self._conns.values()):
                conn.close()
            self._conns.clear()
            if self._listener is not None:
                self._listener.close()

    def _run_soon(self) -> None:
        for _ in range(len(self._soon)):
            fn = self._soon.popleft()
            try:
                fn()
            except Exception:
                log.exception("%s: callback failed", self.name)

    def _poll_timeout_ms(self) -> int:
        if self._soon:
            return 0
        if not self._timers:
            return 100
        wait = min(t.due for t in self._timers) - time.monotonic()
        # rounded up: a timer due in 0.9 ms must not turn into poll(0) spins
        return max(0, min(100, math.ceil(wait * 1000)))

    def _run_timers(self) -> None:
        now = time.monotonic()
        for t in self._timers:
            if now >= t.due:
                t.due = now + t.interval
                try:
                    t.fn()
                except Exception:
                    log.exception("%s: timer %s failed", self.name, t.fn)

    def _drain_replies(self) -> None:
        for _ in range(1000):
            try:
                msg = self._replies.recv_multipart(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(msg) > 1:  # one frame: a call_soon wake-up
                self._send_now(msg[0], msg[1:])

    def _drain_requests(self) -> None:
        sock = self.sock
        for _ in range(1000):
            try:
                peer = sock.recv(_NOBLOCK)
            except zmq.Again:
                return
            self._dispatch(peer, _recv_rest(sock))

    def _dispatch(self, peer: bytes, parts: list[Frame]) -> None:
        try:
            request = wire.decode_request(parts)
        except DfsError as exc:
            # without a readable request id the error goes back under id 0
            req_id = exc.details.pop("request_id", 0)
            log.warning("%s: bad request from peer: %s", self.name, exc.message)
            self._send_now(peer, wire.encode_error(req_id, exc))
            return
        if request.op == "multi":
            self._dispatch_multi(peer, request)
        else:
            self._serve(Call(request, peer, self, wire.OPS[request.op].oneway))

    def _dispatch_multi(self, peer: bytes, request: Request) -> None:
        """Serve each request of a multi message as if it had come alone; one reply
        message carries every answer (an error stays the one request's own)."""
        parts = request.fields["reqs"]
        multi = _Multi(self, peer, request.id, len(parts))
        for part in parts:
            try:
                sub = wire.decode_multi_part(part)
            except DfsError as exc:
                req_id = exc.details.pop("request_id", 0)
                log.warning("%s: bad request in a multi: %s", self.name, exc.message)
                multi.put(wire.encode_error(req_id, exc)[0])
                continue
            self._serve(_PartCall(sub, peer, self, multi))

    def _serve(self, call: Call) -> None:
        route = self._routes.get(call.request.op)
        if route is None:
            call.fail(DfsError(errors.UNKNOWN_OP, f"{self.name} does not serve {call.request.op}"))
        elif route.blocking:
            self._pool.submit(self._run, route.handler, call)
        else:
            self._run(route.handler, call)

    def _run(self, handler: Handler, call: Call) -> None:
        try:
            result = handler(call)
        except DfsError as exc:
            call.fail(exc)
            return
        except Exception as exc:
            log.exception("%s: %s failed", self.name, call.request.op)
            call.fail(DfsError("EIO", f"internal error in {call.request.op}: {exc}"))
            return
        if result is DEFERRED:
            return
        if isinstance(result, tuple):
            call.respond(result[0], result[1])
        else:
            call.respond(result)

    # ------------------------------------------------------------ sending

    def _send(self, peer: Any, frames: list[Frame]) -> None:
        """Send from any thread: directly on the loop, else via the inproc queue
        (a stream connection's reply: via call_soon, as the loop owns the socket)."""
        if threading.get_ident() == self._loop_ident:
            self._send_now(peer, frames)
        elif peer.__class__ is bytes:
            self._push([peer, *frames])
        else:
            self.call_soon(lambda: self._send_now(peer, frames))

    def _push(self, frames: list[Any]) -> None:
        """Hand frames to the loop from another thread (one PUSH socket per thread)."""
        push = getattr(self._local, "push", None)
        if push is None:
            push = self.ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 1000)
            push.connect(self._inproc)
            self._local.push = push
        push.send_multipart(frames, copy=False)

    def _send_now(self, peer: Any, frames: Sequence[Any]) -> None:
        if peer.__class__ is stream.Conn:
            self.stream_send(peer, frames)
            return
        try:
            _send_frames(self.sock, frames, _NOBLOCK, peer)
        except zmq.Again:
            log.warning("%s: reply dropped, peer queue full", self.name)
        except zmq.ZMQError as exc:
            log.warning("%s: reply dropped: %s", self.name, exc)

    # ------------------------------------------------------------ framed TCP

    def _stream_ready(self, fd: int, events: int, listen_fd: int) -> None:
        if fd == listen_fd:
            self._accept()
            return
        conn = self._conns.get(fd)
        if conn is None:
            return
        try:
            if events & _POLLOUT:
                conn.flush()
                self._watch(conn)
            if events & (_POLLIN | _POLLERR) and not conn.closed:
                for parts in conn.read():
                    if conn.outbound:
                        continue  # ours, to send on: no peer has anything to ask on it
                    if not conn.greeted:
                        if parts != [stream.HELLO, self.stream_token]:
                            log.warning("%s: stream without our HELLO: dropped", self.name)
                            conn.close()
                            break
                        conn.greeted = True
                        continue
                    self._dispatch(conn, parts)
        except stream.StreamError as exc:
            log.warning("%s: stream connection dropped: %s", self.name, exc)
        if conn.closed:
            self._forget_conn(fd, conn)

    def _accept(self) -> None:
        assert self._listener is not None and self._poller is not None
        for _ in range(64):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: stop asking for a second
                log.warning("%s: accept failed: %s", self.name, exc)
                self._poller.unregister(self._listener.fileno())
                self._accept_paused_until = time.monotonic() + 1.0
                return
            if len(self._conns) >= MAX_STREAMS:
                log.warning("%s: %d stream connections: refusing more", self.name, MAX_STREAMS)
                sock.close()
                continue
            stream.tune(sock)
            self.attach(stream.Conn(sock))

    def _drop_stalled(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.stalled(now)]:
            log.warning("%s: a stream stalled mid-message: dropped", self.name)
            self.drop(conn)

    def attach(self, conn: stream.Conn) -> None:
        """Serve a stream connection on the loop (inbound, or one we opened)."""
        assert self._poller is not None and self.on_loop()
        self._conns[conn.fileno()] = conn
        conn.watching_out = conn.wants_write
        self._poller.register(conn.fileno(), _POLLIN | (_POLLOUT if conn.wants_write else 0))

    def stream_send(self, conn: stream.Conn, frames: Sequence[Any]) -> bool:
        """Send on a stream connection from the loop; False once it is closed."""
        if conn.closed:
            return False
        fd = conn.fileno()
        try:
            conn.send(frames)
        except stream.StreamError as exc:
            log.warning("%s: stream connection dropped: %s", self.name, exc)
        except DfsError as exc:
            log.warning("%s: message not sent: %s", self.name, exc.message)
            return True
        if conn.closed:
            self._forget_conn(fd, conn)
            return False
        self._watch(conn)
        return True

    def _watch(self, conn: stream.Conn) -> None:
        """Poll for writability exactly while bytes wait (or a connect is underway)."""
        want = conn.wants_write
        if want != conn.watching_out and not conn.closed and self._poller is not None:
            self._poller.register(conn.fileno(), _POLLIN | (_POLLOUT if want else 0))
            conn.watching_out = want

    def drop(self, conn: stream.Conn) -> None:
        """Close a stream connection the loop serves (on the loop)."""
        fd = conn.fileno()
        conn.close()
        self._forget_conn(fd, conn)

    def _forget_conn(self, fd: int, conn: stream.Conn) -> None:
        if self._conns.get(fd) is not conn:  # the number went to a newer connection
            return
        del self._conns[fd]
        if self._poller is not None:
            try:
                self._poller.unregister(fd)
            except KeyError:
                pass


# ---------------------------------------------------------------- one-way sender


class Sender:
    """One-way messages (Raft) sent by one thread, an event loop, straight onto the
    wire: no I/O thread, no futures. Not thread-safe: use it from its loop only.

    Given its loop's server, it sends to a peer that told its stream port
    (``learn``) on framed TCP (dfs.stream), and on ZeroMQ otherwise or while that
    connection is down."""

    SHUN = 2.0  # seconds a failed stream leaves a peer's traffic to ZeroMQ
    # bytes queued for one peer before its stream is given up for ZeroMQ (whose
    # high-water mark then says "full" to the caller): a peer that stopped reading
    # must not collect stale Raft traffic for the healed partition to replay
    MAX_QUEUED = 16 << 20

    def __init__(
        self,
        security: Security | None = None,
        context: zmq.Context | None = None,
        server: RpcServer | None = None,
    ):
        self.ctx = context or zmq.Context.instance()
        self.security = security
        self._socks: dict[str, zmq.Socket] = {}
        # framed TCP needs a loop to flush on, and no cluster key (DESIGN: CURVE then)
        self.server = server if server is not None and server.stream_port is not None else None
        self._ports: dict[str, tuple[int, bytes]] = {}  # endpoint -> port, token it told
        self._conns: dict[str, stream.Conn] = {}
        self._shunned: dict[str, float] = {}  # endpoint -> until when ZeroMQ carries it

    def learn(self, endpoint: str, port: int, token: bytes) -> None:
        """``endpoint``'s node listens for streams on ``port`` (it said so)."""
        if self.server is None or self._ports.get(endpoint) == (port, token):
            return
        self._ports[endpoint] = (port, token)
        self._shunned.pop(endpoint, None)
        old = self._conns.pop(endpoint, None)  # to a previous incarnation of the node
        if old is not None:
            self.server.drop(old)

    def send(self, endpoint: str, op: str, fields: dict[str, Any]) -> bool:
        """Queue a message for ``endpoint``; False when its queue is full (peer down)."""
        header = wire.encode_request(0, op, fields)[0]
        conn = self._stream_to(endpoint) if self.server is not None else None
        if conn is not None:
            assert self.server is not None
            if self.server.stream_send(conn, [header]):
                return True
            self._conns.pop(endpoint, None)
            self._shun(endpoint)
        sock = self._socks.get(endpoint)
        if sock is None:
            sock = self._socks[endpoint] = _dealer(self.ctx, endpoint, self.security)
        try:
            sock.send(header, _NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _stream_to(self, endpoint: str) -> stream.Conn | None:
        """The open stream to ``endpoint``, a new one, or None (ZeroMQ then)."""
        assert self.server is not None
        conn = self._conns.get(endpoint)
        if conn is not None:
            if conn.connecting and time.monotonic() > conn.connect_by:
                self.server.drop(conn)  # no answer to our SYN (a firewall drops them?)
            if not conn.closed:
                return conn
            del self._conns[endpoint]  # it broke: ZeroMQ for a while
            self._shun(endpoint)
            return None
        known, host = self._ports.get(endpoint), stream.tcp_host(endpoint)
        if (
            known is None
            or host in (None, "*")
            or time.monotonic() < self._shunned.get(endpoint, 0)
        ):
            return None
        try:
            conn = stream.Conn.connect(host, known[0], known[1], self.MAX_QUEUED)
        except OSError as exc:
            log.info("no stream to %s (%s): ZeroMQ for now", endpoint, exc)
            self._shun(endpoint)
            return None
        self.server.attach(conn)
        self._conns[endpoint] = conn
        return conn

    def _shun(self, endpoint: str) -> None:
        self._shunned[endpoint] = time.monotonic() + self.SHUN

    def transport(self, endpoint: str) -> str:
        """What carries messages to ``endpoint`` now: "stream", "zmq", or "none"
        (nothing sent to it yet: a follower only talks to its leader)."""
        conn = self._conns.get(endpoint)
        if conn is not None and not conn.closed:
            return "stream"
        return "zmq" if endpoint in self._socks else "none"

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close(linger=0)
        self._socks.clear()
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


def _dealer(ctx: zmq.Context, endpoint: str, security: Security | None) -> zmq.Socket:
    """A DEALER socket connected to ``endpoint`` with our standard options."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.setsockopt(zmq.RCVHWM, 10_000)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    if security is not None:
        security.apply_client(sock)
    sock.connect(endpoint)
    return sock


def _recv_rest(sock: zmq.Socket) -> list[Frame]:
    """The rest of a message a ROUTER received, after the peer's identity frame
    (always followed by at least one: zmq has no empty messages): the header as
    bytes, data frames as zero-copy buffers. Cheaper than recv_multipart, which
    builds a zmq.Frame per part and reads RCVMORE through a property: this path
    runs for every request."""
    parts: list[Frame] = [sock.recv()]
    while sock.getsockopt(_RCVMORE):
        parts.append(sock.recv(copy=False).buffer)
    return parts


def _recv_rest_data(sock: zmq.Socket) -> list[Frame]:
    """Data frames after a header (RCVMORE already true): zero-copy buffers."""
    parts: list[Frame] = [sock.recv(copy=False).buffer]
    while sock.getsockopt(_RCVMORE):
        parts.append(sock.recv(copy=False).buffer)
    return parts


def _send_frames(sock: zmq.Socket, frames: Sequence[Any], flags: int, first: Any = None) -> None:
    """Send ``[first, *frames]`` as one message; small frames are copied (cheaper
    than tracking a zero-copy buffer), big ones go zero-copy."""
    last = len(frames) - 1
    if first is not None:
        sock.send(first, flags | (_SNDMORE if last >= 0 else 0))
    for i, frame in enumerate(frames):
        more = _SNDMORE if i < last else 0
        if isinstance(frame, bytes) and len(frame) < ZERO_COPY_MIN:
            sock.send(frame, flags | more)
        else:
            sock.send(frame, flags | more, copy=False)


# ---------------------------------------------------------------- client

STREAM_CONNECT = 1.0  # seconds a stream connect may take before ZeroMQ is used instead
STREAM_SHUN = 10.0  # seconds a server whose stream could not be opened is asked by ZeroMQ
STREAM_RECHECK = 600.0  # seconds before a server is asked again for its stream port
# a stream idle this long is checked for a hang-up before a request goes out on it
# (a server restarted meanwhile); a busy one is not (one syscall less per call)
STREAM_IDLE = 0.5


def _reply_to(req_id: int, parts: list[Frame]) -> Reply | None:
    """The reply in ``parts`` if it answers ``req_id``; None for a late reply to an
    earlier call that timed out, or an undecodable one (logged)."""
    try:
        reply = wire.decode_reply(parts)
    except DfsError as exc:
        log.warning("dropped an undecodable reply: %s", exc.message)
        return None
    return reply if reply.id == req_id else None


def _hung_up(sock: socket.socket) -> bool:
    """Whether the server closed this idle connection (it restarted, say): then a
    request written to it would be lost, while reopening first is safe."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _set_timeouts(sock: socket.socket, seconds: float) -> None:
    """Bound each blocking recv and send on ``sock`` (one syscall per recv, where a
    Python-level socket timeout adds a poll before each)."""
    sec = int(seconds)
    tv = struct.pack("@ll", sec, int((seconds - sec) * 1e6) or (0 if sec else 1000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


@dataclass
class _Pending:
    future: Future
    endpoint: str
    deadline: float


@dataclass
class _Outgoing:
    endpoint: str
    req_id: int
    frames: list[Frame]
    pending: _Pending = field(repr=False)


class _ThreadSlots:
    """Per-OS-thread state, keyed by thread id. Not threading.local: a foreign C
    thread calling in through ctypes (FUSE's workers) gets a fresh Python thread
    state, so a fresh threading.local, on every callback: a socket leaked per call."""

    def __init__(self) -> None:
        self._slots: dict[int, dict[str, Any]] = {}

    def get(self) -> dict[str, Any]:
        ident = threading.get_ident()
        slot = self._slots.get(ident)
        if slot is None:
            slot = self._slots[ident] = {}
        return slot


class _Entry:
    """One caller's request waiting in a lane, and then its reply."""

    __slots__ = (
        "deadline",
        "done",
        "error",
        "header",
        "reply",
        "req_id",
        "sender",
        "timeout",
        "wake",
    )

    def __init__(self, req_id: int, header: bytes, timeout: float) -> None:
        self.req_id = req_id
        self.header = header
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.wake: threading.Lock | None = None  # held while the caller waits
        self.sender = False  # set when this caller is to send what is queued
        self.done = False
        self.reply: Reply | None = None
        self.error: DfsError | None = None

    def settle(self, reply: Reply) -> None:
        if not self.done:
            self.reply, self.done = reply, True

    def fail(self, error: DfsError) -> None:
        if not self.done:
            self.error, self.done = error, True

    def wake_up(self) -> None:
        if self.wake is not None and self.wake.locked():
            try:
                self.wake.release()
            except RuntimeError:  # released already (a caller is woken once)
                pass

    def result(self, endpoint: str) -> Reply:
        if self.reply is not None:
            return self.reply.raise_for_error()
        if self.error is not None:
            if self.error.code == errors.TIMEOUT:
                raise DfsError(errors.TIMEOUT, f"no reply from {endpoint}")
            raise self.error
        raise DfsError(errors.TIMEOUT, f"no reply from {endpoint}")


# messages a lane keeps in flight to one endpoint. Reads cost the servers CPU
# only: they wait for one message and combine as much as they can. Writes wait
# for a Raft commit (fsyncs), which the leader groups anyway, and cost it as much
# per request combined or not: with one message in flight, the caller that sent
# the last one goes alone next while the others queue behind it for a whole
# commit (creates at 4 x 8 clients fell by ~10-40%); two keep the log busy.
LANE_DEPTH = {"read": 1, "write": 2}


class _Lane:
    """Callers of one client combining their requests to one endpoint."""

    __slots__ = ("depth", "inflight", "lock", "queue")

    def __init__(self, depth: int) -> None:
        self.lock = threading.Lock()
        self.depth = depth
        self.inflight = 0  # messages of this lane in flight (or being sent)
        self.queue: list[_Entry] = []


class RpcClient:
    """Thread-safe client: any thread calls, one I/O thread talks to the servers."""

    def __init__(
        self,
        *,
        security: Security | None = None,
        timeout: float = 10.0,
        context: zmq.Context | None = None,
    ) -> None:
        self.ctx = context or zmq.Context.instance()
        self.security = security
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._outbox: deque[_Outgoing] = deque()
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._local = _ThreadSlots()
        self._wake_ep = f"inproc://rpc-client-wake-{os.getpid()}-{next(_inproc_ids)}"
        self._wake = self.ctx.socket(zmq.PULL)
        self._wake.bind(self._wake_ep)
        self._socks: dict[str, zmq.Socket] = {}
        self._direct_socks: list[zmq.Socket] = []  # per-thread sockets of blocking calls
        # framed TCP (dfs.stream) for blocking calls, never with a cluster key
        self._streams_ok = security is None and stream.enabled()
        # endpoint -> ((port, token) or None, until when that holds)
        self._stream_ports: dict[str, tuple[tuple[int, bytes] | None, float]] = {}
        self._stream_socks: list[socket.socket] = []
        self._stream_fails: dict[str, int] = {}  # endpoint -> failed stream opens in a row
        self._lanes: dict[tuple[str, str], _Lane] = {}  # (endpoint, lane) -> combining callers
        # requests sent through lanes, and the messages that carried them (a test
        # or benchmark reads how much combining happened)
        self.lane_requests = 0
        self.lane_messages = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._io_loop, name="rpc-client-io", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ public API

    def call_async(
        self,
        endpoint: str,
        op: str,
        fields: dict[str, Any] | None = None,
        frames: Sequence[Frame] = (),
        timeout: float | None = None,
    ) -> Future:
        """Send one request; the Future resolves to a Reply (errors included)."""
        future: Future = Future()
        if self._closed.is_set():
            future.set_exception(DfsError(errors.UNAVAILABLE, "client is closed"))
            return future
        req_id = next(self._ids)
        try:
            msg = wire.encode_request(req_id, op, fields, frames)
        except DfsError as exc:
            future.set_exception(exc)
            return future
        pending = _Pending(future, endpoint, time.monotonic() + (timeout or self.timeout))
        with self._lock:
            self._outbox.append(_Outgoing(endpoint, req_id, msg, pending))
        self._poke()
        return future

    def call(
        self,
        endpoint: str,
        op: str,
        fields: dict[str, Any] | None = None,
        frames: Sequence[Frame] = (),
        *,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 0.05,
    ) -> Reply:
        """Call and wait; raises DfsError on an error reply or a timeout.

        ``retries`` re-sends after TIMEOUT/UNAVAILABLE with exponential
        backoff: use it only for idempotent operations (or ones carrying a
        client sequence number).
        """
        attempt = 0
        while True:
            try:
                return self._call_direct(endpoint, op, fields, frames, timeout or self.timeout)
            except DfsError as exc:
                if exc.code not in (errors.TIMEOUT, errors.UNAVAILABLE) or attempt >= retries:
                    raise
            time.sleep(min(1.0, backoff * (2**attempt)))
            attempt += 1

    def _call_direct(
        self,
        endpoint: str,
        op: str,
        fields: dict[str, Any] | None,
        frames: Sequence[Frame],
        timeout: float,
    ) -> Reply:
        """A blocking call on this thread's own socket: no hand-off to the I/O thread,
        which halves the cost of the common one-request-at-a-time case. Requests of
        an op with a lane go through that lane, where concurrent callers combine."""
        if self._closed.is_set():
            raise DfsError(errors.UNAVAILABLE, "client is closed")
        req_id = next(self._ids)
        msg = wire.encode_request(req_id, op, fields, frames)
        lane = wire.OPS[op].lane
        if lane and len(msg) == 1 and len(msg[0]) <= wire.MAX_MULTI_PART:
            return self._call_in_lane(endpoint, lane, req_id, msg[0], timeout)
        return self._exchange(endpoint, req_id, msg, timeout).raise_for_error()

    def _exchange(self, endpoint: str, req_id: int, msg: list[Frame], timeout: float) -> Reply:
        """Send one message on this thread's connection to ``endpoint`` and wait for
        the reply to it: framed TCP where the server offers it, else ZeroMQ."""
        known = self._stream_port(endpoint, timeout) if self._streams_ok else None
        if known is not None:
            reply = self._exchange_stream(endpoint, known, req_id, msg, timeout)
            if reply is not None:
                return reply
        return self._exchange_zmq(endpoint, req_id, msg, timeout)

    def _exchange_zmq(self, endpoint: str, req_id: int, msg: list[Frame], timeout: float) -> Reply:
        socks = self._local.get().setdefault("direct", {})
        got = socks.get(endpoint)
        if got is None:
            got = socks[endpoint] = [self._new_dealer(endpoint), -1]
        sock = got[0]
        # a blocking recv with RCVTIMEO costs one call where poll + recv cost two;
        # the option is set only when the wait changes
        wait_ms = int(timeout * 1000) + 1
        if got[1] != wait_ms:
            sock.setsockopt(_RCVTIMEO, wait_ms)
            got[1] = wait_ms
        deadline = time.monotonic() + timeout
        _send_frames(sock, msg, 0)
        while True:
            try:
                parts: list[Frame] = [sock.recv()]
            except zmq.Again:
                # drop the socket: whatever it still queues for a dead peer goes with it
                del socks[endpoint]
                sock.close(linger=0)
                raise DfsError(errors.TIMEOUT, f"no reply from {endpoint}") from None
            if sock.getsockopt(_RCVMORE):
                parts.extend(_recv_rest_data(sock))
            reply = _reply_to(req_id, parts)
            if reply is not None:
                return reply
            # a late reply to an earlier call that timed out: wait for ours
            left = deadline - time.monotonic()
            wait_ms = max(1, int(left * 1000) + 1)
            sock.setsockopt(_RCVTIMEO, wait_ms)
            got[1] = wait_ms
            if left <= 0:
                del socks[endpoint]
                sock.close(linger=0)
                raise DfsError(errors.TIMEOUT, f"no reply from {endpoint}")

    # ------------------------------------------------------------ framed TCP

    def _stream_port(self, endpoint: str, timeout: float) -> tuple[int, bytes] | None:
        """The server's stream port and token (asked once with a ping, then
        remembered), or None: it has none (a cluster key, an old server, a host
        name) or it failed a moment ago."""
        known = self._stream_ports.get(endpoint)
        if known is not None and time.monotonic() < known[1]:
            return known[0]
        if stream.tcp_host(endpoint) in (None, "*"):
            self._stream_ports[endpoint] = (None, math.inf)
            return None
        try:
            ping_id = next(self._ids)
            ping = wire.encode_request(ping_id, "ping", {})
            fields = self._exchange_zmq(endpoint, ping_id, ping, timeout).fields
        except DfsError as exc:
            if exc.code == errors.TIMEOUT:
                raise  # the server does not answer: the call itself would not get one
            fields = {}
        port, token = fields.get("stream"), fields.get("token")
        ok = isinstance(port, int) and 0 < port < 65536 and isinstance(token, str)
        known = (port, token.encode()) if ok else None
        self._stream_ports[endpoint] = (known, time.monotonic() + STREAM_RECHECK)
        return known

    def _exchange_stream(
        self,
        endpoint: str,
        known: tuple[int, bytes],
        req_id: int,
        msg: list[Frame],
        timeout: float,
    ) -> Reply | None:
        """One exchange on this thread's stream to ``endpoint``; None when no stream
        could be opened (nothing was sent: the caller uses ZeroMQ instead)."""
        conns = self._local.get().setdefault("streams", {})
        got = conns.get(endpoint)
        now = time.monotonic()
        if got is not None and now - got[3] > STREAM_IDLE and _hung_up(got[0]):
            # the server restarted meanwhile, likely on another port: this call goes by
            # ZeroMQ, the next one asks for the port again
            self._close_stream(conns, endpoint)
            self._stream_ports.pop(endpoint, None)
            return None
        if got is None:
            got = self._open_stream(endpoint, known, timeout)
            if got is None:
                return None
            conns[endpoint] = got
        sock, reader = got[0], got[1]
        got[3] = now
        deadline = now + timeout
        try:
            if got[2] != timeout:
                _set_timeouts(sock, timeout)
                got[2] = timeout
            stream.send_all(sock, stream.encode(msg), deadline)
            while True:
                reply = _reply_to(req_id, stream.recv_message(sock, reader, deadline))
                if reply is not None:
                    return reply
                # a late reply to an earlier call that timed out: wait for ours
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                _set_timeouts(sock, left)
                got[2] = left
        except (BlockingIOError, TimeoutError):
            self._close_stream(conns, endpoint)
            raise DfsError(errors.TIMEOUT, f"no reply from {endpoint}") from None
        except (OSError, stream.StreamError) as exc:
            # the server went away (or restarted on another port): ask again next time
            self._close_stream(conns, endpoint)
            self._stream_ports.pop(endpoint, None)
            raise DfsError(errors.UNAVAILABLE, f"connection to {endpoint} lost: {exc}") from None

    def _open_stream(
        self, endpoint: str, known: tuple[int, bytes], timeout: float
    ) -> list[Any] | None:
        """Connect and say HELLO (no answer awaited: a wrong server hangs up)."""
        host = stream.tcp_host(endpoint)
        assert host is not None
        sock: socket.socket | None = None
        try:
            addr = (host, known[0])
            sock = socket.create_connection(addr, timeout=min(timeout, STREAM_CONNECT))
            sock.settimeout(None)  # blocking; SO_RCVTIMEO/SO_SNDTIMEO bound each wait
            stream.tune(sock)
            _set_timeouts(sock, min(timeout, STREAM_CONNECT))
            stream.send_all(sock, stream.encode(stream.hello(known[1])), math.inf)
        except OSError as exc:
            if sock is not None:
                sock.close()
            # ZeroMQ for a while, twice as long after each failure in a row (a port a
            # firewall drops would otherwise cost a connect timeout every time)
            fails = self._stream_fails[endpoint] = self._stream_fails.get(endpoint, 0) + 1
            shun = min(STREAM_RECHECK, STREAM_SHUN * 2 ** (fails - 1))
            log.info("no stream to %s (%s): ZeroMQ for %.0f s", endpoint, exc, shun)
            self._stream_ports[endpoint] = (None, time.monotonic() + shun)
            return None
        self._stream_fails.pop(endpoint, None)
        with self._lock:
            self._stream_socks.append(sock)
        # socket, reader, the timeout its options hold, when it was last used
        return [sock, stream.Reader(), min(timeout, STREAM_CONNECT), time.monotonic()]

    def _close_stream(self, conns: dict[str, list[Any]], endpoint: str) -> None:
        got = conns.pop(endpoint, None)
        if got is not None:
            with self._lock:
                if got[0] in self._stream_socks:
                    self._stream_socks.remove(got[0])
            got[0].close()

    # ------------------------------------------------------------ combining

    def _call_in_lane(
        self, endpoint: str, lane_name: str, req_id: int, header: bytes, timeout: float
    ) -> Reply:
        """Flat combining: a caller that finds its lane idle sends its request at once
        (as a plain request: one caller alone pays nothing extra); callers that come
        while the lane's messages are in flight (LANE_DEPTH) queue up, and when one
        is answered the first of them sends everything queued as one multi message
        and hands each caller its own reply."""
        key = (endpoint, lane_name)
        lane = self._lanes.get(key)
        if lane is None:
            with self._lock:
                lane = self._lanes.setdefault(key, _Lane(LANE_DEPTH.get(lane_name, 1)))
        entry = _Entry(req_id, header, timeout)
        with lane.lock:
            if lane.inflight >= lane.depth:
                entry.wake = threading.Lock()
                entry.wake.acquire()
                lane.queue.append(entry)
            else:
                lane.inflight += 1
        if entry.wake is not None:
            batch = self._await_turn(lane, entry)
            if batch is None:
                return entry.result(endpoint)
        else:
            batch = [entry]
        self._send_batches(endpoint, lane, batch)
        return entry.result(endpoint)

    @staticmethod
    def _await_turn(lane: _Lane, entry: _Entry) -> list[_Entry] | None:
        """Wait until this caller's reply is in (None) or it is to send: then it takes
        everything queued by now (the later it runs, the more travel together)."""
        assert entry.wake is not None
        try:
            entry.wake.acquire(timeout=max(0.0, entry.deadline - time.monotonic()))
        except BaseException:  # interrupted: leave the queue, or pass the turn on
            with lane.lock:
                if entry in lane.queue:
                    lane.queue.remove(entry)
            if entry.sender:
                RpcClient._hand_on(lane)
            raise
        with lane.lock:
            if entry.sender:  # our turn to send, even if our own time is up
                batch = [entry, *lane.queue[: wire.MAX_MULTI - 1]]
                del lane.queue[: wire.MAX_MULTI - 1]
                return batch
            if not entry.done:  # timed out: still queued, or in a message in flight
                if entry in lane.queue:
                    lane.queue.remove(entry)
                entry.fail(DfsError(errors.TIMEOUT, "no reply"))
        return None

    def _send_batches(self, endpoint: str, lane: _Lane, batch: list[_Entry]) -> None:
        """Send ``batch``, hand each caller its reply, then hand the lane on to the
        first caller queued meanwhile (or leave it idle)."""
        try:
            self._send_batch(endpoint, batch)
        except BaseException as exc:  # no caller may wait forever on a failed send
            error = exc if isinstance(exc, DfsError) else DfsError(errors.UNAVAILABLE, str(exc))
            for e in batch:
                e.fail(error)
            raise
        finally:
            for e in batch[1:]:
                e.wake_up()
            self._hand_on(lane)

    @staticmethod
    def _hand_on(lane: _Lane) -> None:
        """A message's turn to the first caller queued (it sends what is queued)."""
        with lane.lock:
            if lane.queue:
                nxt = lane.queue.pop(0)
                nxt.sender = True
                nxt.wake_up()
            else:
                lane.inflight -= 1

    def _send_batch(self, endpoint: str, batch: list[_Entry]) -> None:
        with self._lock:  # senders of other lanes (and a write lane's two) count too
            self.lane_messages += 1
            self.lane_requests += len(batch)
        # each message waits the longest timeout of its callers (a caller queued
        # meanwhile gives up at its own deadline); a steady value spares a setsockopt
        timeout = max(e.timeout for e in batch)
        if len(batch) == 1:
            e = batch[0]
            try:
                e.settle(self._exchange(endpoint, e.req_id, [e.header], timeout))
            except DfsError as exc:
                e.fail(exc)
            return
        multi_id = next(self._ids)
        msg = wire.encode_request(multi_id, "multi", {"reqs": [e.header for e in batch]})
        try:
            reply = self._exchange(endpoint, multi_id, msg, timeout).raise_for_error()
            by_id = {r.id: r for r in wire.decode_multi_reply(reply)}
        except DfsError as exc:
            for e in batch:
                e.fail(exc)
            return
        for e in batch:
            r = by_id.get(e.req_id)
            if r is not None:
                e.settle(r)
            else:
                e.fail(DfsError(errors.BAD_MESSAGE, f"{endpoint} left a request unanswered"))

    def _new_dealer(self, endpoint: str) -> zmq.Socket:
        sock = _dealer(self.ctx, endpoint, self.security)
        with self._lock:
            self._direct_socks.append(sock)
        return sock

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @staticmethod
    def wait(future: Future) -> Reply:
        try:
            reply: Reply = future.result(timeout=3600)
        except FutureTimeout:
            raise DfsError(errors.TIMEOUT, "no reply") from None
        return reply.raise_for_error()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._poke()
        self._thread.join(timeout=5)
        with self._lock:
            for sock in self._direct_socks:
                sock.close(linger=0)
            self._direct_socks.clear()
            for s in self._stream_socks:
                try:  # wakes a thread blocked in recv on it (close alone would not)
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._stream_socks.clear()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ I/O thread

    def _poke(self) -> None:
        slot = self._local.get()
        push = slot.get("push")
        if push is None:
            push = self.ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(self._wake_ep)
            slot["push"] = push
            with self._lock:
                self._direct_socks.append(push)
        try:
            push.send(b"", _NOBLOCK)
        except zmq.Again:
            pass  # the I/O thread has wake-ups queued already

    def _socket_for(self, endpoint: str, poller: zmq.Poller) -> zmq.Socket:
        sock = self._socks.get(endpoint)
        if sock is None:
            sock = _dealer(self.ctx, endpoint, self.security)
            poller.register(sock, zmq.POLLIN)
            self._socks[endpoint] = sock
        return sock

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake, zmq.POLLIN)
        try:
            while not self._closed.is_set():
                ready = dict(poller.poll(self._next_wait_ms()))
                if self._wake in ready:
                    self._drain(self._wake)
                self._flush_outbox(poller)
                for sock, _ in ready.items():
                    if sock is not self._wake:
                        self._read_replies(sock)
                self._expire(poller)
        except Exception:
            log.exception("rpc client I/O thread failed")
        finally:
            self._closed.set()  # later calls fail at once instead of waiting forever
            self._fail_all(DfsError(errors.UNAVAILABLE, "client closed"))
            for sock in self._socks.values():
                sock.close(linger=0)
            self._wake.close(linger=0)

    def _next_wait_ms(self) -> int:
        with self._lock:
            if self._outbox:
                return 0
            if not self._pending:
                return 200
            soonest = min(p.deadline for p in self._pending.values())
        return max(1, min(200, int((soonest - time.monotonic()) * 1000) + 1))

    @staticmethod
    def _drain(sock: zmq.Socket) -> None:
        while True:
            try:
                sock.recv(_NOBLOCK)
            except zmq.Again:
                return

    def _flush_outbox(self, poller: zmq.Poller) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                out = self._outbox.popleft()
                self._pending[out.req_id] = out.pending
            sock = self._socket_for(out.endpoint, poller)
            try:
                _send_frames(sock, out.frames, _NOBLOCK)
            except zmq.ZMQError as exc:
                # a full queue to a dead peer: fail fast instead of blocking the loop
                with self._lock:
                    pending = self._pending.pop(out.req_id, None)
                if pending is not None:
                    pending.future.set_exception(
                        DfsError(errors.UNAVAILABLE, f"cannot send to {out.endpoint}: {exc}")
                    )

    def _read_replies(self, sock: zmq.Socket) -> None:
        while True:
            try:
                parts: list[Frame] = [sock.recv(_NOBLOCK)]
            except zmq.Again:
                return
            if sock.getsockopt(_RCVMORE):
                parts.extend(_recv_rest_data(sock))
            try:
                reply = wire.decode_reply(parts)
            except Exception as exc:  # a bad reply must not kill the I/O thread
                log.warning("dropped an undecodable reply: %s", exc)
                continue
            with self._lock:
                pending = self._pending.pop(reply.id, None)
            if pending is not None and not pending.future.done():
                pending.future.set_result(reply)

    def _expire(self, poller: zmq.Poller) -> None:
        now = time.monotonic()
        with self._lock:
            late = [(rid, p) for rid, p in self._pending.items() if p.deadline <= now]
            for rid, _ in late:
                del self._pending[rid]
            busy = {p.endpoint for p in self._pending.values()}
        for _, p in late:
            if not p.future.done():
                p.future.set_exception(DfsError(errors.TIMEOUT, f"no reply from {p.endpoint}"))
            # drop the socket (and whatever it queued for a dead peer) once idle
            sock = self._socks.get(p.endpoint)
            if sock is not None and p.endpoint not in busy:
                poller.unregister(sock)
                sock.close(linger=0)
                del self._socks[p.endpoint]

    def _fail_all(self, error: DfsError) -> None:
        with self._lock:
            pending = list(self._pending.values()) + [o.pending for o in self._outbox]
            self._pending.clear()
            self._outbox.clear()
        for p in pending:
            if not p.future.done():
                p.future.set_exception(error)
