"""`impetus up` as an operator runs it: real redis-server, Gunicorn workers and nginx."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading

import httpx
import openai
import pytest

from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port

pytestmark = pytest.mark.slow


class Stack:
    def __init__(self, data_dir, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.internal_port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "impetus", "up", "--port", str(port), "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "IMPETUS_PORT": str(self.internal_port), "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 180) -> None:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {text!r} in {timeout}s:\n" + "\n".join(self.output))
            self.output.append(line)
            if text in line:
                return

    def admin_key(self) -> str | None:
        found = [line.split("admin key: ", 1)[1] for line in self.output if "admin key: " in line]
        return found[0] if found else None

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(120)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code


def impetus(*args):
    return subprocess.run([sys.executable, "-m", "impetus", *args], capture_output=True, text=True, timeout=60)


def ask(url: str, key: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model=DEFAULT_MODEL, temperature=0, max_tokens=12,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    return reply.choices[0].message.content


def test_up_runs_the_stack_and_stops_it_cleanly(data_dir, tmp_path):
    stack_dir = tmp_path / "stack"
    (stack_dir / "models").mkdir(parents=True)
    # Share the already imported model instead of importing it again.
    (stack_dir / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    stack = Stack(stack_dir, free_port())
    try:
        stack.wait_for("impetus is up")
        stack.wait_for("admin key: ")
        text = "\n".join(stack.output)
        for component in ("redis    ready", "workers  ready", "nginx    ready"):
            assert component in text
        admin = stack.admin_key()
        assert admin.startswith("imp_")
        assert "Paris" in ask(stack.url, admin)
        assert httpx.get(f"{stack.url}/v1/models", timeout=10).status_code == 401

        # The keys command reaches the same stack through the data dir.
        created = impetus("keys", "create", "--name", "bob", "--data-dir", str(stack_dir))
        assert created.returncode == 0, created.stderr
        bob = created.stdout.strip().splitlines()[-1]
        assert "Paris" in ask(stack.url, bob)
        listing = impetus("keys", "list", "--data-dir", str(stack_dir)).stdout
        assert "admin" in listing and "bob" in listing
    finally:
        code = stack.stop()
    assert code == 0, "\n".join(stack.output)
    assert "stopping" in "\n".join(stack.output)
    for url in (stack.url, f"http://127.0.0.1:{stack.internal_port}"):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=2)

    # Keys live in Redis' append-only file: a restart keeps them, and makes no new admin key.
    again = Stack(stack_dir, free_port())
    try:
        again.wait_for("impetus is up")
        assert again.admin_key() is None
        assert "Paris" in ask(again.url, admin)
        assert "Paris" in ask(again.url, bob)
    finally:
        assert again.stop() == 0
