"""The dfs wire protocol: every message of every service is declared here.

A message is a ZeroMQ multipart message: one msgpack header frame, then zero
or more raw binary data frames (chunk bytes never travel inside msgpack, so
they can be sent and received without copies).

Request header: ``{"v": 1, "id": <int>, "op": <str>, "f": {<fields>}}``
Reply header:   ``{"v": 1, "id": <int>, "ok": true,  "f": {<fields>}}``
            or  ``{"v": 1, "id": <int>, "ok": false, "err": {"code", "msg"}}``

Each operation has a schema (field types, required/optional, number of data
frames). Receivers validate the header and every field before a handler sees
it, and enforce size limits, so handlers can trust what they get.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import msgpack

from dfs import errors
from dfs.errors import DfsError

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 4 << 20  # a header bigger than this is refused unread
MAX_CHUNK_BYTES = 64 << 20  # largest chunk a server accepts in one frame
MAX_FRAMES = 4  # data frames per message
MAX_IDS = 100_000  # chunk ids in one has/delete/exists request
MAX_MULTI = 64  # requests in one multi message
# a request header bigger than this travels alone; a full multi stays under the header limit
MAX_MULTI_PART = (MAX_HEADER_BYTES - (256 << 10)) // MAX_MULTI

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_ENDPOINT = re.compile(r"(tcp://[A-Za-z0-9.\-\[\]:]+:\d{1,5}|ipc://[\w./\-]+|inproc://[\w.\-]+)\Z")

Frame = bytes | memoryview

# ---------------------------------------------------------------- field types


def _check_int(v: Any, lo: int = 0, hi: int = 1 << 63) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"expected an integer in [{lo}, {hi}]")
    return v


def _check_str(v: Any, max_len: int = 4096) -> str:
    if type(v) is not str or len(v) > max_len:
        raise ValueError(f"expected a string of at most {max_len} characters")
    return v


def check_chunk_id(v: Any) -> str:
    """A chunk id is the SHA-256 of the content: exactly 64 lowercase hex characters."""
    if type(v) is not str or not _HEX64.match(v):
        raise ValueError("a chunk id is 64 lowercase hex characters")
    return v


def _check_chunk_ids(v: Any) -> list[str]:
    if type(v) is not list or len(v) > MAX_IDS:
        raise ValueError(f"expected a list of at most {MAX_IDS} chunk ids")
    return [check_chunk_id(x) for x in v]


_good_endpoints: set[str] = set()  # endpoints already seen valid (bounded below)


def check_endpoint(v: Any) -> str:
    """Endpoints are tcp://host:port (or ipc/inproc, for tests)."""
    if type(v) is str and v in _good_endpoints:
        return v  # every Raft message names its sender: skip the regex
    if type(v) is not str or not _ENDPOINT.match(v):
        raise ValueError("expected an endpoint like tcp://127.0.0.1:7000")
    if len(_good_endpoints) < 10_000:
        _good_endpoints.add(v)
    return v


def _check_endpoints(v: Any) -> list[str]:
    if type(v) is not list or len(v) > 16:
        raise ValueError("expected a list of at most 16 endpoints")
    return [check_endpoint(x) for x in v]


def _check_bool(v: Any) -> bool:
    if type(v) is not bool:
        raise ValueError("expected true or false")
    return v


def _check_map(v: Any) -> dict:
    if type(v) is not dict:
        raise ValueError("expected a map")
    return v


def _check_list(v: Any) -> list:
    if type(v) is not list:
        raise ValueError("expected a list")
    return v


def _check_bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise ValueError("expected bytes")
    return v


def _check_multi_parts(v: Any) -> list[bytes]:
    """A multi message's requests: each the header frame it would have been alone."""
    if type(v) is not list or not 1 <= len(v) <= MAX_MULTI:
        raise ValueError(f"expected a list of 1 to {MAX_MULTI} requests")
    for part in v:
        if type(part) is not bytes or len(part) > MAX_MULTI_PART:
            raise ValueError(f"each request is a header of at most {MAX_MULTI_PART} bytes")
    return v


def _check_locations(v: Any) -> dict[str, list[str]]:
    """chunk id -> endpoints that acknowledged storing it."""
    if type(v) is not dict or len(v) > MAX_IDS:
        raise ValueError(f"expected a map of at most {MAX_IDS} chunk ids to endpoints")
    return {check_chunk_id(k): _check_endpoints(eps) for k, eps in v.items()}


INT: Callable[[Any], Any] = _check_int
PORT: Callable[[Any], Any] = lambda v: _check_int(v, 1, 65535)  # noqa: E731
STR: Callable[[Any], Any] = _check_str
BOOL = _check_bool
MAP = _check_map
LIST = _check_list
BYTES = _check_bytes
CHUNK_ID = check_chunk_id
CHUNK_IDS = _check_chunk_ids
ENDPOINT = check_endpoint
ENDPOINTS = _check_endpoints
LOCATIONS = _check_locations


@dataclass(frozen=True)
class Field:
    check: Callable[[Any], Any]
    required: bool = True


def req(check: Callable[[Any], Any]) -> Field:
    return Field(check, True)


def opt(check: Callable[[Any], Any]) -> Field:
    return Field(check, False)


@dataclass(frozen=True)
class Op:
    """One operation: its request fields and how many data frames it carries."""

    name: str
    fields: dict[str, Field] = field(default_factory=dict)
    frames: int = 0  # data frames the request carries
    doc: str = ""
    oneway: bool = False  # no reply is sent (Raft messages: the protocol has its own acks)
    # "read" or "write": concurrent requests of one client process in the same
    # lane may travel together in one multi message (ops without data frames)
    lane: str = ""

    @cached_property
    def required(self) -> tuple[str, ...]:
        return tuple(name for name, f in self.fields.items() if f.required)


# ---------------------------------------------------------------- the operations

_CHUNKSERVER_OPS = [
    Op("ping", {}, doc="liveness and identity"),
    Op(
        "multi",
        {"reqs": req(_check_multi_parts)},
        doc="several requests of one client process in one message (any server): each"
        " part is the header frame of a request of an op with a lane; the reply's 'r'"
        " holds each one's reply header frame, in any order (matched by request id)",
    ),
    Op(
        "cs.put",
        {"id": req(CHUNK_ID), "forward": opt(ENDPOINTS)},
        frames=1,
        doc="store a chunk (SHA-256 verified, fsync'd), then pass it down the forward chain",
    ),
    Op(
        "cs.put_many",
        {"ids": req(CHUNK_IDS), "sizes": req(LIST)},
        frames=1,
        doc="store many small chunks, concatenated in one frame (sizes in order), with"
        " one file-system flush for all of them; no forwarding",
    ),
    Op(
        "cs.get",
        {"id": req(CHUNK_ID), "offset": opt(INT), "length": opt(INT)},
        doc="read a chunk or a byte range of it; the reply carries one data frame",
    ),
    Op(
        "cs.get_many",
        {"ids": req(CHUNK_IDS)},
        doc="read many small chunks: one reply frame, sizes in order (-1: read it alone)",
    ),
    Op("cs.has", {"ids": req(CHUNK_IDS)}, doc="which of these chunks are stored here"),
    Op(
        "cs.delete",
        {"ids": req(CHUNK_IDS), "unless_newer": opt(INT)},
        doc="delete chunks (GC, trims); unless_newer: keep those written or re-put in the"
        " last N seconds (an upload may be about to commit them); the reply lists them",
    ),
    Op("cs.stat", {}, doc="capacity, used bytes, chunk count, load"),
    Op("cs.list", {"after": opt(CHUNK_ID), "limit": opt(INT)}, doc="a page of stored chunk ids"),
    Op("cs.verify", {"id": req(CHUNK_ID)}, doc="re-check one chunk's checksum and SHA-256"),
    Op(
        "cs.replicate",
        {"id": req(CHUNK_ID), "to": req(ENDPOINTS)},
        doc="copy a stored chunk to other servers (repair, rebalance)",
    ),
    Op("cs.scrub", {}, doc="start a scrub pass now (progress shows in cs.stat)"),
    Op(
        "cs.admin_state",
        {"state": req(STR)},
        doc="persist this server's admin state (active, decommissioning, retired)",
    ),
]

# Metadata namespace operations carry their arguments in "args"; the namespace
# state machine validates each argument (paths, modes, sizes) itself.
_MD_FIELDS = {"args": opt(MAP), "client": opt(STR), "seq": opt(INT)}
NAMESPACE_MUTATIONS = [
    "mkdir",
    "rmdir",
    "create",
    "unlink",
    "rename",
    "link",
    "symlink",
    "mknod",
    "setattr",
    "setxattr",
    "removexattr",
    "setrep",
    "commit",
    "batch",
]
NAMESPACE_QUERIES = [
    "getattr",
    "lookup",
    "readdir",
    "readlink",
    "getxattr",
    "listxattr",
    "statfs",
    "file_chunks",
    "files_chunks",
    "exists",
    "chunk_refs",
    "all_chunks",
]

# a commit also says where the new chunks were stored, so the leader can serve
# their locations at once (chunkservers confirm with their next heartbeat)
_COMMIT_FIELDS = {**_MD_FIELDS, "stored": opt(LOCATIONS)}

_METADATA_OPS = [
    *(
        Op(
            f"md.{name}",
            _COMMIT_FIELDS if name in ("commit", "batch") else _MD_FIELDS,
            doc=f"namespace mutation {name}",
            lane="write",
        )
        for name in NAMESPACE_MUTATIONS
    ),
    *(
        Op(f"md.{name}", _MD_FIELDS, doc=f"namespace query {name}", lane="read")
        for name in NAMESPACE_QUERIES
    ),
    Op(
        "md.locate",
        {"ids": req(CHUNK_IDS), "dedup": opt(BOOL)},
        doc="live replicas of chunks, least loaded first; with dedup, chunks no file"
        " references (garbage candidates) are not offered, so a writer uploads them again",
    ),
    Op(
        "md.place",
        {
            "count": opt(INT),
            "rep": opt(INT),
            "exclude": opt(ENDPOINTS),
            "ids": opt(CHUNK_IDS),
            "path": opt(STR),
        },
        doc="choose chunkservers for new chunks: `count` of them, or for those of `ids` "
        "the cluster does not have yet (one round trip for dedup and placement); "
        "`path` gives the replication when `rep` is not set",
    ),
    Op("md.report_bad", {"id": req(CHUNK_ID), "server": req(ENDPOINT)}, doc="a replica is corrupt"),
    Op(
        "md.register",
        {"endpoint": req(ENDPOINT), "node": req(STR), "stat": req(MAP), "labels": opt(MAP)},
        doc="a chunkserver (re)joins",
    ),
    Op(
        "md.heartbeat",
        {
            "endpoint": req(ENDPOINT),
            "node": req(STR),
            "stat": req(MAP),
            "added": opt(CHUNK_IDS),
            "removed": opt(CHUNK_IDS),
            "corrupt": opt(CHUNK_IDS),
        },
        doc="chunkserver heartbeat with an incremental chunk report; corrupt: copies the"
        " server found bad (scrub or read) and quarantined",
    ),
    Op(
        "md.report",
        {"endpoint": req(ENDPOINT), "ids": req(CHUNK_IDS), "done": req(BOOL)},
        doc="one page of a chunkserver's full chunk report",
    ),
    Op("md.status", {}, doc="cluster status for dfs-admin"),
    Op("md.node_status", {}, doc="this metadata node's own Raft status (any node answers)"),
    Op("md.fsck", {"path": opt(STR), "limit": opt(INT)}, doc="per-file replication health"),
    Op("md.admin", {"action": req(STR), "args": opt(MAP)}, doc="admin actions"),
    # a trivial replicated key-value store on the same Raft driver (benchmarks, tests)
    Op("kv.put", {"key": req(STR), "value": req(BYTES)}, doc="replicate one write"),
    Op("kv.get", {"key": req(STR)}, doc="linearizable read of one key"),
    Op("raft.status", {}, doc="this member's Raft role, term, commit and applied index"),
    Op(
        "raft.msg",
        {"from": req(INT), "msgs": req(LIST), "ep": opt(ENDPOINT), "sp": opt(PORT), "st": opt(STR)},
        doc="Raft messages between peers (ep: the sender's endpoint, for a node that joins;"
        " sp, st: its framed-TCP port and token, see dfs.stream)",
        oneway=True,
    ),
]

OPS: dict[str, Op] = {op.name: op for op in (*_CHUNKSERVER_OPS, *_METADATA_OPS)}


# ---------------------------------------------------------------- messages


@dataclass
class Request:
    id: int
    op: str
    fields: dict[str, Any]
    frames: list[Frame] = field(default_factory=list)


@dataclass
class Reply:
    id: int
    ok: bool
    fields: dict[str, Any] = field(default_factory=dict)
    frames: list[Frame] = field(default_factory=list)
    error: DfsError | None = None

    def raise_for_error(self) -> Reply:
        if self.error is not None:
            raise self.error
        return self


def _pack(header: dict[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def _unpack(frame: Frame) -> dict[str, Any]:
    if len(frame) > MAX_HEADER_BYTES:
        raise DfsError(errors.TOO_BIG, f"header of {len(frame)} bytes is over the limit")
    try:
        header = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:
        raise DfsError(errors.BAD_MESSAGE, f"header is not valid msgpack ({exc})") from None
    if type(header) is not dict:
        raise DfsError(errors.BAD_MESSAGE, "header is not a map")
    if header.get("v") != PROTOCOL_VERSION:
        raise DfsError(errors.BAD_MESSAGE, f"unsupported protocol version {header.get('v')!r}")
    if type(header.get("id")) is not int:
        raise DfsError(errors.BAD_MESSAGE, "header has no integer request id")
    return header


def validate_fields(op: Op, fields: Any) -> dict[str, Any]:
    """Check every field of a request against its operation's schema."""
    if type(fields) is dict:  # the common case, in one pass over what was sent
        spec, out = op.fields, {}
        try:
            for name, value in fields.items():
                if value is not None:
                    out[name] = spec[name].check(value)
        except (KeyError, ValueError):
            pass  # the full check below names the problem
        else:
            if all(name in out for name in op.required):
                return out
    return _validate_fields_slow(op, fields)


def _validate_fields_slow(op: Op, fields: Any) -> dict[str, Any]:
    if fields is None:
        fields = {}
    if type(fields) is not dict:
        raise DfsError("EINVAL", f"{op.name}: fields must be a map")
    unknown = set(fields) - set(op.fields)
    if unknown:
        raise DfsError("EINVAL", f"{op.name}: unknown field(s) {sorted(unknown)}")
    out: dict[str, Any] = {}
    for name, spec in op.fields.items():
        if name not in fields or fields[name] is None:
            if spec.required:
                raise DfsError("EINVAL", f"{op.name}: missing field {name!r}")
            continue
        try:
            out[name] = spec.check(fields[name])
        except ValueError as exc:
            raise DfsError("EINVAL", f"{op.name}: field {name!r}: {exc}") from None
    return out


def _check_frames(frames: Sequence[Frame]) -> None:
    if len(frames) > MAX_FRAMES:
        raise DfsError(errors.TOO_BIG, f"{len(frames)} data frames is over the limit")
    for f in frames:
        if len(f) > MAX_CHUNK_BYTES:
            raise DfsError(errors.TOO_BIG, f"data frame of {len(f)} bytes is over the limit")


def encode_request(
    req_id: int, op: str, fields: dict[str, Any] | None = None, frames: Sequence[Frame] = ()
) -> list[Frame]:
    """Build the frames of a request; the schema is checked on the way out too."""
    spec = OPS.get(op)
    if spec is None:
        raise DfsError(errors.UNKNOWN_OP, f"unknown operation {op!r}")
    clean = validate_fields(spec, fields or {})
    header = _pack({"v": PROTOCOL_VERSION, "id": req_id, "op": op, "f": clean})
    if len(header) > MAX_HEADER_BYTES:  # the server would refuse it unread: say so here
        raise DfsError(errors.TOO_BIG, f"{op}: header of {len(header)} bytes is over the limit")
    return [header, *frames]


def decode_request(frames: Sequence[Frame]) -> Request:
    """Parse and validate a request; raises DfsError (with the request id when known)."""
    if not frames:
        raise DfsError(errors.BAD_MESSAGE, "empty message")
    header = _unpack(frames[0])
    req_id = header["id"]
    try:
        op_name = header.get("op")
        spec = OPS.get(op_name) if type(op_name) is str else None
        if spec is None:
            raise DfsError(errors.UNKNOWN_OP, f"unknown operation {op_name!r}")
        data = list(frames[1:])
        _check_frames(data)
        if len(data) != spec.frames:
            raise DfsError(
                errors.BAD_MESSAGE,
                f"{op_name} carries {spec.frames} data frame(s), got {len(data)}",
            )
        fields = validate_fields(spec, header.get("f"))
    except DfsError as exc:
        exc.details["request_id"] = req_id
        raise
    return Request(req_id, op_name, fields, data)


def decode_multi_part(part: bytes) -> Request:
    """One request of a multi message: validated as if it had come alone, and only
    of an op that may travel in one (never a multi inside a multi)."""
    request = decode_request([part])
    if not OPS[request.op].lane:
        raise DfsError(
            errors.BAD_MESSAGE,
            f"{request.op} cannot travel in a multi message",
            request_id=request.id,
        )
    return request


def decode_multi_reply(reply: Reply) -> list[Reply]:
    """The replies a multi message's reply carries (each as if it had come alone)."""
    parts = reply.fields.get("r")
    if type(parts) is not list or not all(type(p) is bytes for p in parts):
        raise DfsError(errors.BAD_MESSAGE, "a multi reply carries a list of replies")
    return [decode_reply([p]) for p in parts]


def encode_reply(
    req_id: int, fields: dict[str, Any] | None = None, frames: Sequence[Frame] = ()
) -> list[Frame]:
    return [_pack({"v": PROTOCOL_VERSION, "id": req_id, "ok": True, "f": fields or {}}), *frames]


def encode_error(req_id: int, error: DfsError) -> list[Frame]:
    header = {"v": PROTOCOL_VERSION, "id": req_id, "ok": False, "err": error.to_wire()}
    try:
        return [_pack(header)]
    except Exception:  # details that msgpack cannot carry: drop them, keep code + message
        header["err"] = {"code": error.code, "msg": error.message}
        return [_pack(header)]


def decode_reply(frames: Sequence[Frame]) -> Reply:
    if not frames:
        raise DfsError(errors.BAD_MESSAGE, "empty reply")
    header = _unpack(frames[0])
    if header.get("ok") is True:
        fields = header.get("f") or {}
        if type(fields) is not dict:
            raise DfsError(errors.BAD_MESSAGE, "reply fields are not a map")
        return Reply(header["id"], True, fields, list(frames[1:]))
    err = header.get("err")
    if type(err) is not dict or type(err.get("code")) is not str:
        raise DfsError(errors.BAD_MESSAGE, "error reply without a code")
    raw = err.get("details") if type(err.get("details")) is dict else {}
    # only plain keyword names: a peer's reply must not be able to break the call
    details = {
        k: v
        for k, v in raw.items()
        if type(k) is str and k.isidentifier() and k not in ("code", "message")
    }
    return Reply(
        header["id"], False, error=DfsError(err["code"], str(err.get("msg", "")), **details)
    )
