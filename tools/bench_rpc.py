"""Request/reply cost of dfs.rpc: framed TCP (dfs.stream) against ZeroMQ.

Starts a real RpcServer process on 127.0.0.1 and calls ``ping`` on it from
this process, first over ZeroMQ (DFS_STREAM=0 for the client), then over the
stream, then ZeroMQ again (the box's noise shows as the spread of the two
ZeroMQ runs). Reports round trips per second and the client's CPU per call;
the baseline is ZeroMQ in the same run.

    python -m tools.bench_rpc [--calls 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Any

from dfs import rpc


def serve() -> None:
    """The server side: print the endpoint, serve until stdin closes."""
    server = rpc.RpcServer("tcp://127.0.0.1:0", name="bench").start()
    print(server.endpoint, flush=True)
    sys.stdin.read()
    server.stop()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    endpoint: str, server_pid: int, calls: int, threads: int, use_stream: bool
) -> dict[str, Any]:
    os.environ["DFS_STREAM"] = "1" if use_stream else "0"
    client = rpc.RpcClient(timeout=10.0)
    try:
        client.call(endpoint, "ping")  # connect (and learn the stream port) first
        per = calls // threads

        def run() -> None:
            for _ in range(per):
                client.call(endpoint, "ping")

        workers = [threading.Thread(target=run) for _ in range(threads)]
        t0, c0, s0 = time.perf_counter(), _cpu(), _proc_cpu(server_pid)
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed, cpu = time.perf_counter() - t0, _cpu() - c0
        server_cpu = _proc_cpu(server_pid) - s0
    finally:
        client.close()
    n = per * threads
    return {
        "transport": "stream" if use_stream else "zmq",
        "threads": threads,
        "calls_per_s": round(n / elapsed),
        "us_per_call": round(elapsed / n * 1e6, 1),
        "client_cpu_us_per_call": round(cpu / n * 1e6, 1),
        "server_cpu_us_per_call": round(server_cpu / n * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve()
        return 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.bench_rpc", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()
        rows = []
        for threads in args.threads:
            for use_stream in (False, True, False):
                rows.append(measure(endpoint, proc.pid, args.calls, threads, use_stream))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'transport':10} {'threads':>7} {'calls/s':>9} {'us/call':>8}"
        f" {'CPU us: client':>14} server"
    )
    for r in rows:
        print(
            f"{r['transport']:10} {r['threads']:>7} {r['calls_per_s']:>9} {r['us_per_call']:>8} "
            f"{r['client_cpu_us_per_call']:>14} {r['server_cpu_us_per_call']:>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
