"""Start `impetus serve` as a child process and wait until it is ready
(used by the benchmark and by the tests' fixtures)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on (binds) host:port now."""
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def start_server(port: int, log: Path, env: dict[str, str], timeout: float = 180) -> subprocess.Popen:
    """Run `impetus serve --port PORT` with `env` added to the environment,
    output to `log`, in its own process group; return once /readyz says 200."""
    process = spawn_server(port, log, env, append=False)
    return wait_until_ready(process, f"http://127.0.0.1:{port}/readyz", log, timeout)


def spawn_server(port: int, log: Path, env: dict[str, str], append: bool = True, launch=None) -> subprocess.Popen:
    """`impetus serve --port PORT` in its own process group, not waited for;
    appending to `log` keeps what a crashed run wrote before its restart.
    `launch(command, **popen)` starts it (a supervisor's: with a lifeline)."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    command = [sys.executable, "-m", "impetus", "serve", "--port", str(port)]
    with log.open("a" if append else "w") as out:
        if launch is not None:
            return launch(command, stdout=out, stderr=subprocess.STDOUT, env=environment)
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment, start_new_session=True)


def wait_until_ready(process: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> subprocess.Popen:
    """Wait until `url` answers 200; stop the process and raise (with its log)
    if it exits first or takes longer than `timeout`."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # a refused connect costs microseconds; a start is ~3 s
    stop_server(process)
    raise RuntimeError(f"server not ready after {timeout}s:\n{log.read_text(errors='replace')}")


def stop_server(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the whole process group (master and workers), then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
