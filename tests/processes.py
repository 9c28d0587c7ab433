"""Real auxiliary programs for the tests: nginx, Prometheus and its exporters,
each on a free loopback port, waited for until it answers."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from impetus.server.process import free_port
from impetus.stack import nginx


def wait_until_answers(url: str, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                stop(process)
                raise RuntimeError(f"{url} did not answer:\n{log.read_text(errors='replace') if log.exists() else ''}")
            time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_nginx(tmp_path: Path, upstream: str, **options) -> tuple[subprocess.Popen, str]:
    """nginx rendered from impetus/share/nginx/*.conf, as `impetus up` runs it."""
    port = free_port()
    conf = nginx.render(nginx.NginxConfig("127.0.0.1", port, upstream, tmp_path / "run", tmp_path / "logs",
                                          **options))
    process = nginx.start(conf)
    url = f"http://127.0.0.1:{port}"
    wait_until_answers(f"{url}/healthz", process, tmp_path / "logs" / "nginx-error.log", timeout=20)
    return process, url


def binary(*names: str) -> str:
    """The first of `names` installed (Debian and Homebrew name some exporters differently)."""
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    raise FileNotFoundError(f"none of {names} is installed (make setup installs them)")


def start_program(command: list[str], ready_url: str, log: Path, timeout: float = 30) -> subprocess.Popen:
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    wait_until_answers(ready_url, process, log, timeout)
    return process


class Foreground:
    """An `impetus` command that runs in the foreground (up, serve --join), its
    output read line by line as an operator's terminal shows it."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, program: list[str] | None = None,
                 cwd: Path | None = None):
        self.process = subprocess.Popen(
            [*(program or [sys.executable, "-m", "impetus"]), *args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 180) -> str:
        """The first line (from here on) that holds `text`."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {text!r} in {timeout}s:\n" + "\n".join(self.output))
            self.output.append(line)
            if text in line:
                return line

    def admin_key(self) -> str | None:
        found = [line.split("admin key: ", 1)[1] for line in self.output if "admin key: " in line]
        return found[0] if found else None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(120)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code
