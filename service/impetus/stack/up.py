"""`impetus up`: the whole stack in the foreground, supervised.

redis-server (a private instance under the data dir, unless IMPETUS_REDIS_URL
names one), the Gunicorn workers (API keys required) and nginx in front, each
started natively and waited for. A component that exits is restarted with
backoff while the others go on (`impetus.stack.supervisor`); only one that
fails to start five times in a row, or Ctrl-C / SIGTERM, stops the stack, in
order: nginx first (no new requests), then the workers (running streams
drain), Redis last (usage of the last requests is still recorded).
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from impetus.server.process import spawn_server, stop_server
from impetus.stack import nginx
from impetus.stack.supervisor import Component, StackError, Supervisor
from impetus.stack.tls import make_certificate, tls_paths

__all__ = ["StackError", "redis_arguments", "run", "main"]


def wait_until(condition, what: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise StackError(f"{what} exited during start-up (code {process.returncode})")
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not become ready in {timeout:.0f}s")
        time.sleep(0.1)


def redis_arguments(data_dir: Path, log_dir: Path, appendfsync: str = "everysec") -> list[str]:
    """The stack's private Redis: no TCP port, a unix socket only its user can
    open, and an append-only file (fsync every second by default, so a crash
    loses at most a second of usage; `always` loses none) so keys and usage
    survive restarts. Also what the launchd/systemd services run."""
    directory = data_dir / "redis"
    return ["--port", "0", "--unixsocket", str(directory / "redis.sock"), "--unixsocketperm", "700",
            "--dir", str(directory), "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "",
            "--logfile", str(log_dir / "redis.log")]


def spawn_redis(data_dir: Path, log_dir: Path, appendfsync: str = "everysec") -> tuple[subprocess.Popen, str]:
    """A private redis-server on a unix socket (not waited for)."""
    directory = data_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(["redis-server", *redis_arguments(data_dir, log_dir, appendfsync)],
                               start_new_session=True)
    return process, f"unix://{directory / 'redis.sock'}"


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _stop(process: subprocess.Popen | None, sig: int, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def components(settings, public_host: str, public_port: int, tls: bool, console) -> tuple[list[Component], str, str]:
    """The stack's components in start order, its endpoint and Redis URL."""
    run_dir, log_dir = settings.data_dir / "run", settings.data_dir / "logs"
    parts = []
    if settings.redis_url:
        redis_url = settings.redis_url
        console.print(f"[green]✓[/] redis    using {redis_url}")
    else:
        redis_url = settings.effective_redis_url
        parts.append(Component(
            "redis", lambda: spawn_redis(settings.data_dir, log_dir, settings.redis_appendfsync)[0],
            lambda: redis_answers(redis_url), log_hint=str(log_dir / "redis.log")))
    upstream = f"127.0.0.1:{settings.port}"
    server_env = {
        "IMPETUS_DATA_DIR": str(settings.data_dir), "IMPETUS_HOST": "127.0.0.1",
        "IMPETUS_WORKERS": str(settings.workers), "IMPETUS_MODEL": settings.model,
        "IMPETUS_REQUIRE_API_KEYS": "true", "IMPETUS_REDIS_URL": redis_url,
    }
    parts.append(Component(
        "workers", lambda: spawn_server(settings.port, log_dir / "impetus.log", server_env),
        lambda: _answers(f"http://{upstream}/readyz"), start_timeout=600, orphan_signal=signal.SIGTERM,
        log_hint=str(log_dir / "impetus.log")))

    cert = key = None
    if tls:
        cert, key = tls_paths(settings.data_dir)
        if not cert.exists():
            make_certificate(settings.data_dir)
            console.print(f"made a self-signed certificate: {cert} (clients must trust it)")
    conf = nginx.render(nginx.NginxConfig(
        public_host, public_port, upstream, run_dir, log_dir,
        max_body=f"{max(1, settings.max_body_bytes // (1024 * 1024))}m",
        admin_allow=tuple(settings.admin_allow), tls_cert=cert, tls_key=key,
    ))
    nginx.check(conf)
    endpoint = f"{'https' if tls else 'http'}://{public_host}:{public_port}"
    verify = ssl.create_default_context(cafile=cert) if cert else True
    parts.append(Component(
        "nginx", lambda: nginx.spawn(conf, start_new_session=True),
        lambda: _answers(f"{endpoint}/healthz", verify=verify), orphan_signal=signal.SIGQUIT,
        log_hint=str(log_dir / "nginx-error.log")))
    return parts, endpoint, redis_url


def run(settings, public_host: str, public_port: int, tls: bool = False) -> int:
    console = Console(stderr=True, soft_wrap=True)
    run_dir = settings.data_dir / "run"
    log_dir = settings.data_dir / "logs"
    for directory in (run_dir, log_dir):
        directory.mkdir(parents=True, exist_ok=True)

    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    parts: list[Component] = []
    code = 0
    try:
        parts, endpoint, redis_url = components(settings, public_host, public_port, tls, console)
        ready_lines = {
            "redis": lambda: f"ready  {redis_url} (append-only file in {settings.data_dir / 'redis'}, "
                             f"fsync {settings.redis_appendfsync})",
            "workers": lambda: f"ready  {settings.workers} × {settings.model} on 127.0.0.1:{settings.port} "
                               f"(log: {log_dir / 'impetus.log'})",
            "nginx": lambda: f"ready  {endpoint} (logs in {log_dir})",
        }

        def on_ready(component: Component, again: bool) -> None:
            if not again:
                console.print(f"[green]✓[/] {component.name:<8} {ready_lines[component.name]()}")

        supervisor = Supervisor(parts, log=lambda line: console.print(f"[yellow]![/] {line}"), run_dir=run_dir,
                                on_ready=on_ready)
        supervisor.record_restarts()
        while not stopping and not supervisor.all_up:
            supervisor.step()
            time.sleep(0.1)
        if not stopping:
            _announce(endpoint, redis_url, console)
        while not stopping:
            supervisor.step()
            time.sleep(0.2)
        console.print("stopping: nginx, then workers (running requests finish), then redis")
    except (StackError, RuntimeError, FileNotFoundError) as error:
        console.print(f"[red]error:[/] {error}")
        code = 1
    finally:
        by_name = {c.name: c.process for c in parts}
        _stop(by_name.get("nginx"), signal.SIGQUIT, 30)  # SIGQUIT: graceful, in-flight requests finish
        if by_name.get("workers") is not None:
            stop_server(by_name["workers"], timeout=settings.graceful_timeout + 10)
        _stop(by_name.get("redis"), signal.SIGTERM, 30)
    return code


def _announce(endpoint: str, redis_url: str, console) -> None:
    admin_key = _first_admin_key(redis_url)
    print(f"impetus is up: {endpoint}/v1", flush=True)
    from impetus.stack.nginx import DASHBOARD

    if (DASHBOARD / "index.html").exists():
        console.print(f"dashboard: {endpoint}/dashboard/ (sign in with an admin key)")
    else:
        console.print("dashboard: not built (make dashboard)")
    if admin_key:
        console.print("first start: an admin key was created; it is shown once, now:")
        print(f"admin key: {admin_key}", flush=True)


def _answers(url: str, verify=True) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1, verify=verify).status_code == 200
    except httpx.HTTPError:
        return False


def _first_admin_key(redis_url: str) -> str | None:
    """On a first start (no keys at all), make an admin key so the operator can
    get in; later starts print nothing."""
    from impetus.gateway import connect
    from impetus.gateway.keys import KeyExists, KeyStore

    store = KeyStore(connect(redis_url))
    if store.list():
        return None
    try:
        key, _ = store.create("admin", admin=True)
    except KeyExists:
        return None
    return key


def main(settings, host: str, port: int, tls: bool = False) -> None:
    sys.exit(run(settings, host, port, tls))
