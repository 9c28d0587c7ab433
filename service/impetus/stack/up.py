"""`impetus up`: the whole stack in the foreground.

redis-server (a private instance under the data dir, unless IMPETUS_REDIS_URL
names one), the Gunicorn workers (API keys required) and nginx in front, each
started natively and waited for. Ctrl-C or SIGTERM stops them in order: nginx
first (no new requests), then the workers (running streams drain), Redis last
(usage of the last requests is still recorded). If any of them dies, the rest
are stopped too and `up` exits non-zero.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from impetus.server.process import start_server, stop_server
from impetus.stack import nginx
from impetus.stack.tls import make_certificate, tls_paths


class StackError(RuntimeError):
    pass


def wait_until(condition, what: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise StackError(f"{what} exited during start-up (code {process.returncode})")
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not become ready in {timeout:.0f}s")
        time.sleep(0.1)


def redis_arguments(data_dir: Path, log_dir: Path) -> list[str]:
    """The stack's private Redis: no TCP port, a unix socket only its user can
    open, and an append-only file (fsync every second) so keys and usage
    survive restarts. Also what the launchd/systemd services run."""
    directory = data_dir / "redis"
    return ["--port", "0", "--unixsocket", str(directory / "redis.sock"), "--unixsocketperm", "700",
            "--dir", str(directory), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--logfile", str(log_dir / "redis.log")]


def start_redis(data_dir: Path, log_dir: Path) -> tuple[subprocess.Popen, str]:
    """A private redis-server on a unix socket, with an append-only file so keys
    and usage survive restarts."""
    import redis

    directory = data_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    socket_path = directory / "redis.sock"
    process = subprocess.Popen(["redis-server", *redis_arguments(data_dir, log_dir)], start_new_session=True)
    wait_for_redis(redis.Redis(unix_socket_path=str(socket_path), socket_connect_timeout=0.2), process)
    return process, f"unix://{socket_path}"


def wait_for_redis(client, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the redis-server just started answers PING through `client`."""
    import redis

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_until(answers, "redis-server", process, timeout)


def _stop(process: subprocess.Popen | None, sig: int, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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

    redis_process = workers = proxy = None
    code = 0
    try:
        if settings.redis_url:
            redis_url = settings.redis_url
            console.print(f"[green]✓[/] redis    using {redis_url}")
        else:
            redis_process, redis_url = start_redis(settings.data_dir, log_dir)
            console.print(f"[green]✓[/] redis    ready  {redis_url} (append-only file in "
                          f"{settings.data_dir / 'redis'})")

        upstream = f"127.0.0.1:{settings.port}"
        workers = start_server(settings.port, log_dir / "impetus.log", {
            "IMPETUS_DATA_DIR": str(settings.data_dir),
            "IMPETUS_HOST": "127.0.0.1",
            "IMPETUS_WORKERS": str(settings.workers),
            "IMPETUS_MODEL": settings.model,
            "IMPETUS_REQUIRE_API_KEYS": "true",
            "IMPETUS_REDIS_URL": redis_url,
        }, timeout=600)
        console.print(f"[green]✓[/] workers  ready  {settings.workers} × {settings.model} on {upstream} "
                      f"(log: {log_dir / 'impetus.log'})")

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
        proxy = nginx.start(conf, start_new_session=True)
        endpoint = f"{'https' if tls else 'http'}://{public_host}:{public_port}"
        verify = ssl.create_default_context(cafile=cert) if cert else True
        wait_until(lambda: _answers(f"{endpoint}/healthz", verify=verify), "nginx", proxy)
        console.print(f"[green]✓[/] nginx    ready  {endpoint} (logs in {log_dir})")

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

        while not stopping:
            for name, process in (("redis", redis_process), ("workers", workers), ("nginx", proxy)):
                if process is not None and process.poll() is not None:
                    raise StackError(f"{name} exited unexpectedly (code {process.returncode}); stopping")
            time.sleep(0.5)
        console.print("stopping: nginx, then workers (running requests finish), then redis")
    except StackError as error:
        console.print(f"[red]error:[/] {error}")
        code = 1
    finally:
        _stop(proxy, signal.SIGQUIT, 30)  # SIGQUIT: graceful, in-flight requests finish
        if workers is not None:
            stop_server(workers, timeout=settings.graceful_timeout + 10)
        _stop(redis_process, signal.SIGTERM, 30)
    return code


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
