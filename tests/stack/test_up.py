"""`impetus up` as an operator runs it: real redis-server, Gunicorn workers and nginx."""

from __future__ import annotations

import json
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
from impetus.settings import private_redis_url, redis_socket, workers_socket
from impetus.system.info import find_program

from processes import Foreground

pytestmark = pytest.mark.slow


class Stack(Foreground):
    """`impetus up` on `port` (its workers on their socket in the run dir; IMPETUS_PORT only names them)."""

    def __init__(self, data_dir, port: int, backoff_s: float | None = None, path: str | None = None,
                 internal_port: int | None = None):
        """`backoff_s`: IMPETUS_RESTART_BACKOFF_S (the first wait before a restart)."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.internal_port = internal_port or free_port()
        env = {"IMPETUS_PORT": str(self.internal_port), **({"PATH": path} if path else {})}
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().split(") ")[1].startswith("Z")  # a zombie is gone


class Impostor:
    """Something else on the workers' old fixed port that answers every GET with
    200 "ready", as another stack's workers (or the installed service) would."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Ready(BaseHTTPRequestHandler):
            def do_GET(self):
                body = b'{"status": "ready", "stack": "someone-else"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _stack_dir(data_dir, where):
    (where / "models").mkdir(parents=True)
    # Share the already imported model instead of importing it again.
    (where / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    return where


def test_up_runs_the_stack_and_a_kill_9_of_it_leaves_nothing_behind(data_dir, tmp_path):
    stack_dir = _stack_dir(data_dir, tmp_path / "stack")
    # Two stacks on one machine, both told the same workers' port, which a third program answers on.
    impostor = Impostor()
    stack = Stack(stack_dir, free_port(), internal_port=impostor.port)
    other = Stack(_stack_dir(data_dir, tmp_path / "other"), free_port(), internal_port=impostor.port)
    client = None
    try:
        stack.wait_for("impetus is up")
        stack.wait_for("admin key: ")
        other.wait_for("admin key: ")
        # Each serves its own keys, through its own workers; neither took the other's (or the impostor's) answer.
        assert "Paris" in ask(other.url, other.admin_key())
        for one, two in ((stack, other), (other, stack)):
            assert httpx.get(f"{one.url}/v1/models", headers={"Authorization": f"Bearer {two.admin_key()}"},
                             timeout=10).status_code == 401
        assert other.stop() == 0, "\n".join(other.output)
        impostor.server.shutdown()
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
        # A second `up` on the same data dir is refused, by name.
        second = impetus("up", "--port", str(free_port()), "--data-dir", str(stack_dir))
        assert second.returncode == 1 and f"another `impetus up` (pid {stack.process.pid})" in second.stderr

        # `kill -9` of up itself while a client works (an OOM kill, a service manager's restart).
        children = json.loads((stack_dir / "run" / "up.json").read_text())["children"]
        assert set(children) == {"redis", "workers", "nginx"}
        client = Client(stack.url, bob)
        client.start()
        while client.answers < 2:
            threading.Event().wait(0.1)
        threading.Event().wait(1.5)  # Redis' append-only file is written every second
        stack.process.kill()
        killed = time.monotonic()
        while any(_alive(child["pid"]) for child in children.values()):
            assert time.monotonic() - killed < 10, f"left running: {children}"
            threading.Event().wait(0.1)
        print(f"kill -9 of up: its children were gone after {time.monotonic() - killed:.1f} s")
    finally:
        if client is not None:
            client.done.set()
        other.stop()
        stack.stop()
    # Nothing of it answers: not nginx's port, not the workers' socket (nginx's only way to them).
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{stack.url}/healthz", timeout=2)
    with pytest.raises(httpx.TransportError):
        httpx.Client(transport=httpx.HTTPTransport(uds=str(workers_socket(stack_dir)))).get("http://w/healthz")
    for pattern in (str(stack_dir), f"impetus serve --port {stack.internal_port}"):  # Gunicorn's workers too
        assert subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 1, pattern

    # A new `up` starts cleanly on the same port; keys live in Redis' append-only file and make no new admin key.
    again = Stack(stack_dir, stack.port)
    try:
        again.wait_for("impetus is up")
        assert again.admin_key() is None
        assert "Paris" in ask(again.url, admin)
        assert "Paris" in ask(again.url, bob)
    finally:
        code = again.stop()
    assert code == 0, "\n".join(again.output)
    assert "stopping" in "\n".join(again.output)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{again.url}/healthz", timeout=2)
    assert not (stack_dir / "run" / "up.json").exists()


def _pid_of(pattern: str) -> int:
    """The oldest process whose command line matches (a component's main process)."""
    found = subprocess.run(["pgrep", "-o", "-f", pattern], capture_output=True, text=True).stdout.split()
    assert found, f"no process matches {pattern!r}"
    return int(found[0])


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


def test_up_stops_after_five_failed_starts(data_dir, tmp_path):
    stack_dir = tmp_path / "stack"
    (stack_dir / "models").mkdir(parents=True)
    (stack_dir / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    # nginx's configuration passes `nginx -t`, but every start of nginx fails (as when a
    # program takes its port between the stack's check and nginx's bind).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nginx").write_text(f'#!/bin/sh\ncase " $* " in *" -t "*) exec {find_program("nginx")} "$@";; esac\n'
                                   'echo "nginx: [emerg] bind() failed (98: Address in use)" >&2; exit 1\n')
    (bin_dir / "nginx").chmod(0o755)
    # Waits of 0.1, 0.2, 0.4 and 0.8 s instead of 1, 2, 4 and 8: the count is what is tested.
    stack = Stack(stack_dir, free_port(), backoff_s=0.1, path=f"{bin_dir}:{os.environ['PATH']}")
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


def test_a_port_someone_else_holds_is_one_line_naming_the_holder(tmp_path):
    import socket

    with socket.socket() as taken:  # a plain listener, as another program would hold it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = impetus("up", "--port", str(port), "--data-dir", str(tmp_path / "stack"))
    assert started.returncode == 1
    errors = [line for line in started.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, started.stderr
    assert errors[0].startswith(f"error: port {port} on 127.0.0.1 (the stack's endpoint) is already in use by ")
    assert f"(pid {os.getpid()})" in errors[0] and "--port" in errors[0]
    assert "redis" not in started.stderr  # nothing was started


def _stream(client: openai.OpenAI) -> dict:
    """One streamed answer; the usage its last chunk reported."""
    chunks = client.chat.completions.create(model=DEFAULT_MODEL, max_tokens=1, stream=True, temperature=1.0,
                                            stream_options={"include_usage": True},  # sampled: never a cache hit
                                            messages=[{"role": "user", "content": "Hi"}])
    usage = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert len(usage) == 1
    return {"requests": 1, "prompt_tokens": usage[0].prompt_tokens, "completion_tokens": usage[0].completion_tokens}


def test_up_restarts_each_component_killed_under_load_and_loses_no_usage(data_dir, tmp_path):
    """200 streamed requests from 4 keys while Redis is killed twice: the
    key totals and the daily ledger equal what the clients were told, to the
    token. Then the workers and nginx, each killed while a client works: up
    brings each back within 10 s and the client sees no failure."""
    from concurrent.futures import ThreadPoolExecutor

    from impetus.gateway import connect
    from impetus.gateway.keys import KeyStore
    from impetus.gateway.usage import UsageLedger

    stack_dir = tmp_path / "stack"
    (stack_dir / "models").mkdir(parents=True)
    (stack_dir / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    stack = Stack(stack_dir, free_port(), backoff_s=0.5)
    client = None
    try:
        stack.wait_for("admin key: ")
        admin = stack.admin_key()
        keys = {}
        for index in range(4):
            made = httpx.post(f"{stack.url}/v1/admin/keys", json={"name": f"user-{index}"}, timeout=30,
                              headers={"Authorization": f"Bearer {admin}"})
            assert made.status_code == 201, made.text
            keys[made.json()["name"]] = made.json()["key"]
        clients = {name: openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60)
                   for name, key in keys.items()}
        jobs = [name for _ in range(50) for name in clients]
        told = {name: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0} for name in clients}
        done = threading.Semaphore(0)

        def one(name: str) -> None:
            try:
                for metric, value in _stream(clients[name]).items():
                    told[name][metric] += value
            finally:
                done.release()

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(one, name) for name in jobs]
            for kill, after in enumerate((40, 70), start=1):  # requests finished before each kill (more in flight)
                for _ in range(after):
                    done.acquire(timeout=120)
                os.kill(_pid_of(f"redis-server.*{redis_socket(stack_dir)}"), signal.SIGKILL)
                stack.wait_for("redis is back", timeout=15)
                assert "\n".join(stack.output).count("redis is back") == kill
            failures = [repr(f.exception()) for f in futures if f.exception(timeout=300) is not None]
        assert failures == [], failures
        assert sum(t["requests"] for t in told.values()) == 200

        store = KeyStore(connect(private_redis_url(stack_dir)))
        ledger = UsageLedger(connect(private_redis_url(stack_dir)))

        def recorded() -> dict:
            by_key = {record.name: {m: int(usage.get(m, 0)) for m in told["user-0"]} for record, usage in store.list()
                      if record.name in told}
            daily = {name: {m: sum(getattr(row, m) for row in ledger.report(days=2) if row.key == name)
                            for m in told["user-0"]} for name in told}
            return {"totals": by_key, "daily": daily}

        deadline = time.monotonic() + 30
        while recorded() != {"totals": told, "daily": told}:  # what waited in the spool goes in within seconds
            assert time.monotonic() < deadline, f"recorded {recorded()}, told {told}"
            time.sleep(0.5)

        # The workers and nginx, each killed while a client works (the openai SDK with its retries).
        client = Client(stack.url, keys["user-0"])
        client.start()
        patterns = {"workers": f"impetus serve --port {stack.internal_port}", "nginx": f"nginx.*{stack_dir}"}
        for component in ("workers", "nginx"):
            before = client.answers
            while client.answers < before + 2:  # the client is working
                assert stack.process.poll() is None
                threading.Event().wait(0.2)
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
        client.done.set()
        client.join(120)
        assert client.failures == [], client.failures
        listed = impetus("keys", "list", "--data-dir", str(stack_dir)).stdout
        assert "user-0" in listed and "admin" in listed
        metrics = httpx.get(f"{stack.url}/metrics", timeout=10).text  # through nginx, from this machine
        for component, restarts in (("redis", 2), ("workers", 1), ("nginx", 1)):
            assert f'impetus_component_restarts_total{{component="{component}"}} {restarts}.0' in metrics
    finally:
        if client is not None:
            client.done.set()
        code = stack.stop()
    assert code == 0, "\n".join(stack.output)
