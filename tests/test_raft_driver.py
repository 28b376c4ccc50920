"""The Raft driver in one process: reads under the lease are served on the spot only
while the core's tick count is fresh (the drift margin the lease relies on)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import msgpack

from tools.cluster import free_port
from tools.raft_kv import serve


def on_loop(driver: Any, fn: Any) -> Any:
    """Run fn on the driver's loop thread and return its result."""
    box: list[Any] = []
    done = threading.Event()

    def run() -> None:
        box.append(fn())
        done.set()

    driver.call_soon(run)
    assert done.wait(10), "the loop did not run our function"
    return box[0]


def test_spot_reads_need_a_fresh_tick_count(tmp_path: Path) -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    server, driver = serve(1, tmp_path / "n1", ep, {1: ep})
    driver.start()
    server.start()
    try:
        deadline = time.monotonic() + 10
        while not driver.is_leader:  # one voter: it elects itself
            assert time.monotonic() < deadline, "no leader"
            time.sleep(0.02)
        got = threading.Event()
        driver.propose(msgpack.packb(["k", b"v"]), lambda r: got.set())
        assert got.wait(10)
        answers: list[Any] = []

        def fresh() -> bool:
            driver._tick_clock = time.monotonic()
            return driver._read_now(lambda: "now", answers.append)

        def stale() -> bool:
            driver._tick_clock = time.monotonic() - 3 * driver.tick_interval
            return driver._read_now(lambda: "stale", answers.append)

        assert on_loop(driver, fresh) is True and answers == ["now"]
        # a tick count lagging real time by 2+ ticks could overstate the lease:
        # the read must wait for the loop's timers (a ReadIndex round), not go now
        assert on_loop(driver, stale) is False and answers == ["now"]
        # and it is still answered, through the normal path
        later = threading.Event()
        driver.read(lambda: "later", lambda r: (answers.append(r), later.set()))
        assert later.wait(10) and answers[-1] == "later"
    finally:
        server.stop()
        driver.stop()
