"""Replay one simulator seed: ``python -m tests.raftsim SEED [--verbose]``."""

from __future__ import annotations

import argparse
import sys
import time

from .broken import BROKEN as BROKEN_NAMES
from .sim import Simulator


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.raftsim", description=__doc__)
    ap.add_argument("seed", type=int)
    ap.add_argument("--count", type=int, default=1, help="run SEED..SEED+COUNT-1")
    ap.add_argument(
        "--verbose",
        "-v",
        action="count",
        default=0,
        help="print the event trace (-vv: every delivered message too)",
    )
    ap.add_argument(
        "--broken",
        choices=sorted(BROKEN_NAMES),
        help="run a deliberately broken core (to see the checks bite)",
    )
    args = ap.parse_args(argv)
    node_cls = None
    if args.broken:
        from .broken import BROKEN

        node_cls = BROKEN[args.broken]
    failed = 0
    for seed in range(args.seed, args.seed + args.count):
        t0 = time.perf_counter()
        kw = {"node_cls": node_cls} if node_cls else {}
        sim = Simulator(seed, verbose=args.verbose, **kw)
        res = sim.run()
        dt = time.perf_counter() - t0
        status = "ok" if res.ok else f"VIOLATION: {res.violation}"
        print(f"seed {seed}: {status} ({res.ticks} ticks, {dt:.2f}s) {res.stats}")
        if args.verbose:
            print(f"params: {sim.p}")
        if not res.ok:
            failed += 1
            print(f"  replay: {res.replay()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
