"""Replicas are separate processes with their own string-hash seeds, so set and
dict orders differ between them: the same command log must still give the
same replies and byte-identical snapshots everywhere."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import msgpack

from dfs import inline
from metadata.namespace import Namespace

REPLAY = """
import sys, msgpack
from metadata.namespace import Namespace
log = msgpack.unpackb(open(sys.argv[1], "rb").read(), raw=False)
ns = Namespace(session_timeout_ns=50)
replies = [ns.apply(c) for c in log]
mid = Namespace.restore(ns.snapshot())
pages = [ns.query("all_chunks", {"limit": 7}), ns.query("readdir", {"path": "/", "limit": 9})]
out = {"replies": replies, "snap": ns.snapshot(), "resnap": mid.snapshot(), "pages": pages}
open(sys.argv[2], "wb").write(msgpack.packb(out, use_bin_type=True))
"""


def make_log(seed: int, n: int) -> list[dict]:
    rnd = random.Random(seed)
    names = [f"n{i}" for i in range(40)] + ["é", "Z", "a b", "ß", "日本"]
    chunks = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(60)]

    def path(depth: int = 2) -> str:
        return "/" + "/".join(rnd.choice(names) for _ in range(rnd.randint(1, depth)))

    def exts() -> list:
        return [
            [rnd.choice(chunks) if rnd.random() < 0.85 else None, rnd.randint(1, 50)]
            for _ in range(rnd.randint(0, 4))
        ]

    log: list[dict] = []
    ts = 1_000
    for i in range(n):
        ts += rnd.randint(0, 3)
        k = rnd.random()
        if k < 0.15:
            op, args = "mkdir", {"path": path(), "parents": rnd.random() < 0.5}
        elif k < 0.36:
            op, args = "commit", {"path": path(), "extents": exts()}
        elif k < 0.40:
            content = rnd.choice(names).encode() * rnd.randint(0, 300)
            op, args = "commit", {"path": path(), "extents": [], "inline": inline.encode(content)}
        elif k < 0.48:
            op, args = "unlink", {"path": path()}
        elif k < 0.52:
            op, args = "rmdir", {"path": path()}
        elif k < 0.62:
            op, args = "rename", {"src": path(), "dst": path()}
        elif k < 0.67:
            op, args = "link", {"src": path(), "dst": path()}
        elif k < 0.72:
            op, args = "setattr", {"path": path(), "size": rnd.randint(0, 100)}
        elif k < 0.77:
            op, args = "setxattr", {"path": path(), "name": rnd.choice(names), "value": b"v"}
        elif k < 0.81:
            op, args = "setrep", {"path": path(1), "rep": rnd.randint(1, 5), "recursive": True}
        elif k < 0.86:
            op, args = "gc_mark", {"chunk_ids": rnd.sample(chunks, 5)}
        elif k < 0.90:
            op, args = "gc_expire", {"before_ts": ts - rnd.randint(0, 30), "limit": 3}
        elif k < 0.95:
            op, args = "symlink", {"target": path(), "path": path()}
        else:
            op, args = "create", {"path": path(), "exclusive": False}
        client = rnd.choice(names) if rnd.random() < 0.5 else None
        seq = i if client else None
        log.append({"op": op, "args": args, "client": client, "seq": seq, "ts": ts})
        if client and rnd.random() < 0.1:
            log.append(dict(log[-1]))  # a retry
    return log


def test_replicas_in_processes_with_different_hash_seeds(tmp_path: Path) -> None:
    log = make_log(7, 3000)
    (tmp_path / "log").write_bytes(msgpack.packb(log, use_bin_type=True))
    script = tmp_path / "replay.py"
    script.write_text(REPLAY)
    root = Path(__file__).resolve().parent.parent
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(root))
        out = tmp_path / f"out{seed}"
        subprocess.run(
            [sys.executable, str(script), str(tmp_path / "log"), str(out)],
            env=env,
            check=True,
            cwd=root,
            timeout=120,
        )
        outs.append(msgpack.unpackb(out.read_bytes(), raw=False))
    a, b = outs
    assert sum(r["ok"] for r in a["replies"]) > 500  # the log does real work
    assert a["replies"] == b["replies"]
    assert a["snap"] == b["snap"]
    assert a["resnap"] == a["snap"] and b["resnap"] == b["snap"]
    assert a["pages"] == b["pages"]
    # and this process (a third seed) agrees too
    ns = Namespace(session_timeout_ns=50)
    for c in log:
        ns.apply(c)
    assert ns.snapshot() == a["snap"]
