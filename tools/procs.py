"""Starting and stopping dfs server processes on this machine, by PID.

Used by ``dfs-admin cluster up/down`` and by the tests: every process is
started with a pid file and an endpoint file in its own directory, and is
stopped only through the PID we recorded (never by name).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dfs.process import pid_alive


@dataclass
class Proc:
    """A server process we started: where it lives and how to reach it."""

    role: str  # "metadata" or "chunkserver"
    name: str
    dir: Path
    pid: int
    endpoint: str
    popen: subprocess.Popen | None = None

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal to this process only (kill -9 by default)."""
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return
        if sig == signal.SIGKILL:
            self.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if not self.alive():
            self.wait(0.1)
            return
        self.kill(signal.SIGTERM)
        if not self.wait(timeout):
            self.kill(signal.SIGKILL)

    def wait(self, timeout: float) -> bool:
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(self.pid):
                return True
            time.sleep(0.02)
        return not pid_alive(self.pid)


def spawn(
    role: str,
    name: str,
    workdir: Path,
    args: list[str],
    *,
    detach: bool = False,
    wait_endpoint: float = 20.0,
    env: dict[str, str] | None = None,
) -> Proc:
    """Start ``python -m <module> args`` and wait until it wrote its endpoint file."""
    module = {
        "metadata": "metadata.server",
        "chunkserver": "chunkserver.server",
        "raftkv": "tools.raft_kv",
    }[role]
    workdir.mkdir(parents=True, exist_ok=True)
    endpoint_file = workdir / f"{name}.endpoint"
    pid_file = workdir / f"{name}.pid"
    endpoint_file.unlink(missing_ok=True)
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    cmd = [
        sys.executable,
        "-m",
        module,
        *args,
        "--pid-file",
        str(pid_file),
        "--endpoint-file",
        str(endpoint_file),
    ]
    popen = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=detach,
        env={**os.environ, **(env or {})},
    )
    log.close()
    proc = Proc(role, name, workdir, popen.pid, "", None if detach else popen)
    deadline = time.monotonic() + wait_endpoint
    while time.monotonic() < deadline:
        if endpoint_file.exists():
            text = endpoint_file.read_text().strip()
            if text:
                proc.endpoint = text
                return proc
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {popen.returncode}: {tail(proc.log_file)}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"{name} did not start within {wait_endpoint}s: {tail(proc.log_file)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
