"""The chunkserver scrubber on a real store: finds flipped bytes, quarantines,
reports, shows progress, keeps to its rate; and the copy budget of maintenance."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from chunkserver.scrub import Scrubber
from chunkserver.store import ChunkStore
from metadata.maintenance import _Budget


def _fill(store: ChunkStore, n: int, size: int) -> list[str]:
    ids = []
    for _ in range(n):
        data = os.urandom(size)
        cid = hashlib.sha256(data).hexdigest()
        store.put(cid, data)
        ids.append(cid)
    return ids


def _wait(pred, timeout: float = 10.0) -> None:
    t = time.monotonic()
    while not pred():
        assert time.monotonic() - t < timeout
        time.sleep(0.02)


def test_scrub_finds_flipped_bytes_and_reports(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "cs")
    ids = _fill(store, 20, 20_000)
    bad = ids[7]
    path = store._path(bad)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    found: list[str] = []
    s = Scrubber(store, found.append, rate=0, interval=3600).start()
    try:
        assert s.progress()["passes"] == 0 and s.progress()["last_pass_end"] == 0
        assert s.start_now()
        _wait(lambda: s.progress()["passes"] == 1)
        p = s.progress()
        assert found == [bad]
        assert p["corrupt_found"] == 1 and not p["running"] and p["last_pass_end"] > 0
        assert not store.has([bad])[0]  # quarantined: moved aside, not deleted
        assert list((tmp_path / "cs" / "quarantine").glob(bad + ".*"))
        assert all(store.verify(c) for c in ids if c != bad)
        # a second pass finds nothing new
        s.start_now()
        _wait(lambda: s.progress()["passes"] == 2)
        assert found == [bad]
    finally:
        s.stop()


def test_scrub_keeps_to_its_rate_and_shows_progress(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "cs")
    _fill(store, 12, 256 << 10)  # 3 MiB
    seen: list[float] = []
    s = Scrubber(store, lambda c: None, rate=1 << 20, interval=3600, first_delay=0.0)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            pct = s.progress()["pct"]
            if pct is not None:
                seen.append(pct)
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    t0 = time.monotonic()
    s.start()
    try:
        _wait(lambda: s.progress()["passes"] == 1, 20)
    finally:
        stop.set()
        t.join()
        s.stop()
    # 3 MiB at 1 MiB/s with one second of burst: at least ~2 s
    assert time.monotonic() - t0 >= 1.5
    assert seen and 0 <= min(seen) < max(seen) <= 100


def test_budget_goes_into_debt_and_refills() -> None:
    b = _Budget(1000.0)
    b.charge("a", 1500)
    assert b.over() == {"a"}
    b.last -= 1.0  # a second passes
    b.refill(time.monotonic())
    assert b.over() == set() and b.level["a"] <= 1000
