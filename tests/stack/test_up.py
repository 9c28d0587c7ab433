"""`impetus up` as an operator runs it: real redis-server, Gunicorn workers and nginx."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port
from impetus.settings import private_redis_url, redis_socket

from processes import Foreground

pytestmark = pytest.mark.slow


class Stack(Foreground):
    """`impetus up` on `port`, its workers on a free internal port."""

    def __init__(self, data_dir, port: int, backoff_s: float | None = None):
        """`backoff_s`: IMPETUS_RESTART_BACKOFF_S (the first wait before a restart)."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.internal_port = free_port()
        env = {"IMPETUS_PORT": str(self.internal_port)}
        if backoff_s is not None:
            env["IMPETUS_RESTART_BACKOFF_S"] = str(backoff_s)
        super().__init__(["up", "--port", str(port), "--data-dir", str(data_dir)], env)


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


def _pid_of(pattern: str) -> int:
    """The oldest process whose command line matches (a component's main process)."""
    found = subprocess.run(["pgrep", "-o", "-f", pattern], capture_output=True, text=True).stdout.split()
    assert found, f"no process matches {pattern!r}"
    return int(found[0])


def _requests_of(name: str, stack_dir) -> int:
    from impetus.gateway import connect
    from impetus.gateway.keys import KeyStore

    store = KeyStore(connect(private_redis_url(stack_dir)))
    return next(int(usage.get("requests", 0)) for record, usage in store.list() if record.name == name)


class Client(threading.Thread):
    """Sends requests one after another with a key, as a user's script would
    (the openai SDK with retries), and keeps what failed."""

    def __init__(self, url: str, key: str):
        super().__init__(daemon=True)
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=6, timeout=60)
        self.done = threading.Event()
        self.answers = 0
        self.failures: list[str] = []

    def run(self):
        while not self.done.is_set():
            try:
                self.client.chat.completions.create(model=DEFAULT_MODEL, max_tokens=4,
                                                    messages=[{"role": "user", "content": "Say hi"}])
                self.answers += 1
            except openai.OpenAIError as error:
                self.failures.append(repr(error))


def test_up_restarts_each_component_killed_while_a_client_works(data_dir, tmp_path):
    stack_dir = tmp_path / "stack"
    (stack_dir / "models").mkdir(parents=True)
    (stack_dir / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    stack = Stack(stack_dir, free_port())
    client = None
    try:
        stack.wait_for("impetus is up")
        created = impetus("keys", "create", "--name", "carol", "--data-dir", str(stack_dir))
        carol = created.stdout.strip().splitlines()[-1]
        client = Client(stack.url, carol)
        client.start()
        patterns = {
            # Redis shows its socket in its process title (in /tmp when the data dir's path is too long).
            "redis": f"redis-server.*{redis_socket(stack_dir)}",
            "workers": f"impetus serve --port {stack.internal_port}",
            "nginx": f"nginx.*{stack_dir}",
        }
        for restart, component in enumerate(("redis", "workers", "nginx"), start=1):
            before = client.answers
            while client.answers < before + 2:  # the client is working
                assert stack.process.poll() is None
                threading.Event().wait(0.2)
            threading.Event().wait(1.5)  # Redis' append-only file is written every second
            counted = _requests_of("carol", stack_dir)
            killed = _pid_of(patterns[component])
            os.kill(killed, signal.SIGKILL)
            started = time.monotonic()
            stack.wait_for(f"{component} is back", timeout=10)
            answered = client.answers
            while client.answers == answered:  # whole again: the client's requests pass
                assert time.monotonic() - started < 10, f"{component}: no answer within 10 s"
                threading.Event().wait(0.1)
            assert stack.process.poll() is None, "up is still running"
            assert f"{component} exited unexpectedly (code -9)" in "\n".join(stack.output)
            assert _pid_of(patterns[component]) != killed
            # Usage counted a second before the kill is kept (appendfsync everysec).
            assert _requests_of("carol", stack_dir) >= counted
        client.done.set()
        client.join(120)
        assert client.failures == [], client.failures
        assert client.answers > 6

        # Keys and usage written before the kills are still there.
        listed = impetus("keys", "list", "--data-dir", str(stack_dir)).stdout
        assert "carol" in listed and "admin" in listed
        assert "Paris" in ask(stack.url, carol)
        metrics = httpx.get(f"http://127.0.0.1:{stack.internal_port}/metrics", timeout=10).text
        for component in ("redis", "workers", "nginx"):
            assert f'impetus_component_restarts_total{{component="{component}"}} 1.0' in metrics
    finally:
        if client is not None:
            client.done.set()
        code = stack.stop()
    assert code == 0, "\n".join(stack.output)


def test_up_stops_after_five_failed_starts(data_dir, tmp_path):
    import socket

    stack_dir = tmp_path / "stack"
    (stack_dir / "models").mkdir(parents=True)
    (stack_dir / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    with socket.socket() as taken:  # nginx's port is someone else's
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # Waits of 0.1, 0.2, 0.4 and 0.8 s instead of 1, 2, 4 and 8: the count is what is tested.
        stack = Stack(stack_dir, taken.getsockname()[1], backoff_s=0.1)
        code = stack.process.wait(180)
    while not stack.lines.empty():
        stack.output.append(stack.lines.get())
    text = "\n".join(stack.output)
    assert code == 1, text
    assert "nginx failed to start 5 times in a row" in text and "nginx-error.log); stopping" in text
    assert text.count("trying again in") == 4
    assert "trying again in 0.8s" in text  # the setting doubles as 1 s does
    assert "impetus is up" not in text
    # Nothing is left running.
    assert subprocess.run(["pgrep", "-f", str(stack_dir)], capture_output=True).returncode == 1
