"""The replicated state machine the simulator drives: a tiny list-append KV.

Each write appends a unique value to a key's list; a read returns the list.
A running CRC over every applied (index, term, data) lets us compare a
snapshot-restored state with what every other node applied.
"""

from __future__ import annotations

import zlib

import msgpack

from metadata.raft.messages import Entry, EntryType


def encode_write(key: str, value: int) -> bytes:
    return f"{key}={value}".encode()


def decode_write(data: bytes) -> tuple[str, int]:
    k, v = data.decode().split("=")
    return k, int(v)


class KVApp:
    def __init__(self) -> None:
        self.kv: dict[str, list[int]] = {}
        self.applied = 0
        self.digest = 0

    def apply(self, e: Entry) -> None:
        if e.index != self.applied + 1:
            raise AssertionError(f"apply of {e.index} after {self.applied}: gap or replay")
        if e.type == EntryType.NORMAL:
            k, v = decode_write(e.data)
            self.kv.setdefault(k, []).append(v)
        self.applied = e.index
        self.digest = zlib.crc32(b"%d,%d,%d," % (e.index, e.term, e.type) + e.data, self.digest)

    def snapshot(self) -> bytes:
        return msgpack.packb(
            {"i": self.applied, "d": self.digest, "kv": self.kv}, use_bin_type=True
        )

    def restore(self, data: bytes) -> None:
        obj = msgpack.unpackb(data, raw=False)
        self.applied = obj["i"]
        self.digest = obj["d"]
        self.kv = {k: list(v) for k, v in obj["kv"].items()}

    def read(self, key: str) -> list[int]:
        return list(self.kv.get(key, []))
