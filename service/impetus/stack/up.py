"""`impetus up`: the whole stack in the foreground, supervised.

redis-server (a private instance under the data dir, unless IMPETUS_REDIS_URL
names one), the Gunicorn workers (API keys required) and nginx in front, each
started natively and waited for. A component that exits is restarted with
backoff while the others go on (`impetus.stack.supervisor`); only one that
fails to start five times in a row, or Ctrl-C / SIGTERM, stops the stack, in
order: nginx first (no new requests), then the workers (running streams
drain), Redis last (usage of the last requests is still recorded).

The stack owns what it runs (impetus.stack.identity, impetus.stack.lifeline):
its workers listen on a unix socket in its run dir, answer with this run's id,
and every child dies with `up` however `up` ends; a second `up` on the same
data dir is refused, and one after a `kill -9` first ends what the last left.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from impetus.server.process import spawn_server, stop_server
from impetus.settings import redis_socket, workers_socket
from impetus.stack import cluster, lifeline, nginx
from impetus.stack.identity import answers_as, check_port, new_stack_id
from impetus.stack.supervisor import Component, StackError, StopOnSignal, Supervisor
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


def redis_arguments(data_dir: Path, log_dir: Path, appendfsync: str = "everysec",
                    listen: tuple[str, int] | None = None) -> list[str]:
    """The stack's private Redis: no TCP port, a unix socket only its user can
    open, and an append-only file (fsync every second by default, so a crash
    loses at most a second of usage; `always` loses none) so keys and usage
    survive restarts. Also what the launchd/systemd services run.

    Once a cluster password exists (impetus.stack.cluster) it is required on
    every connection, read from a 0600 file (not the command line, which `ps`
    shows); `listen` (address, port) adds the LAN port other Macs join on."""
    directory = data_dir / "redis"
    arguments = ["--port", "0", "--unixsocket", str(redis_socket(data_dir)), "--unixsocketperm", "700",
                 "--dir", str(directory), "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "",
                 "--logfile", str(log_dir / "redis.log")]
    password_conf = cluster.redis_password_conf(data_dir)
    if password_conf is not None:
        arguments.insert(0, str(password_conf))  # a config file comes first, the flags override it
    if listen is not None:
        arguments[arguments.index("--port") + 1] = str(listen[1])
        arguments += ["--bind", listen[0]]
    return arguments


def spawn_redis(data_dir: Path, log_dir: Path, appendfsync: str = "everysec",
                listen: tuple[str, int] | None = None) -> subprocess.Popen:
    """The stack's redis-server (not waited for)."""
    (data_dir / "redis").mkdir(parents=True, exist_ok=True)
    socket_folder(redis_socket(data_dir), data_dir / "redis", "Redis' socket")
    # SIGTERM when `up` dies: Redis writes its append-only file and exits.
    return lifeline.spawn(["redis-server", *redis_arguments(data_dir, log_dir, appendfsync, listen)], signal.SIGTERM)


def socket_folder(socket: Path, home: Path, what: str) -> None:
    """Make `socket`'s folder: `home` in the data dir, or (settings.stack_socket:
    the data dir's path is too long for a socket) a short place in /tmp that
    must be ours alone, or refused."""
    socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if socket.parent != home:
        status = socket.parent.stat()
        if status.st_uid != os.getuid() or status.st_mode & 0o077:
            raise StackError(f"{socket.parent} (for {what}: the data dir's path is too long for one) belongs "
                             "to someone else or is open to others; remove it, or use a shorter data dir")


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


def _launch_workers(command: list[str], **popen) -> subprocess.Popen:
    # SIGINT when the supervisor dies: Gunicorn's quick shutdown (its workers end now).
    return lifeline.spawn(command, signal.SIGINT, **popen)


def workers_component(port: int, log_dir: Path, env: dict[str, str], ready) -> Component:
    """The Gunicorn master and its workers (`impetus serve` with `env`), as
    `up` and a joined host (`serve --join`) supervise them: loading a large
    model may take minutes; after a crash the orphaned workers get SIGTERM.
    `ready()`: whether they answer as this supervisor's."""
    return Component("workers", lambda: spawn_server(port, log_dir / "impetus.log", env, launch=_launch_workers),
                     ready, start_timeout=600, orphan_signal=signal.SIGTERM, log_hint=str(log_dir / "impetus.log"))


@dataclass
class ClusterOptions:
    """`impetus up --cluster`: Redis also on `address:redis_port` for the other Macs."""

    address: str
    redis_port: int = cluster.DEFAULT_REDIS_PORT


def components(settings, public_host: str, public_port: int, tls: bool, console,
               cluster_options: ClusterOptions | None = None, stack_id: str = ""):
    """The stack's components in start order, its endpoint, its Redis URL and,
    for a cluster, the watcher that keeps nginx's upstream equal to the hosts."""
    run_dir, log_dir = settings.data_dir / "run", settings.data_dir / "logs"
    parts = []
    if cluster_options is not None:
        cluster.ensure_password(settings.data_dir)
    if settings.redis_url:
        redis_url = settings.redis_url
        console.print(f"[green]✓[/] redis    using {cluster.redacted(redis_url)}")
    else:
        redis_url = settings.effective_redis_url
        listen = (cluster_options.address, cluster_options.redis_port) if cluster_options else None
        parts.append(Component(
            "redis", lambda: spawn_redis(settings.data_dir, log_dir, settings.redis_appendfsync, listen),
            lambda: redis_answers(redis_url), log_hint=str(log_dir / "redis.log")))
    socket_path = workers_socket(settings.data_dir)
    upstream = cluster.unix_target(socket_path)
    if settings.workers > 0:
        socket_folder(socket_path, settings.data_dir / "run", "the workers' socket")
        server_env = {
            "IMPETUS_DATA_DIR": str(settings.data_dir), "IMPETUS_SOCKET": str(socket_path),
            "IMPETUS_STACK_ID": stack_id, "IMPETUS_WORKERS": str(settings.workers), "IMPETUS_MODEL": settings.model,
            "IMPETUS_REQUIRE_API_KEYS": "true", "IMPETUS_REDIS_URL": redis_url,
        }
        if cluster_options is not None:  # one host of the cluster, reached by nginx on its socket
            server_env.update(IMPETUS_GATEWAY_GUARD="true", IMPETUS_ADVERTISE=f"unix:{socket_path}")
        parts.append(workers_component(settings.port, log_dir, server_env,
                                       lambda: answers_as("http://workers/readyz", stack_id, uds=socket_path)))
    elif cluster_options is None:
        raise StackError("--workers 0 (a gateway with no model of its own) needs --cluster")

    cert = key = None
    if tls:
        cert, key = tls_paths(settings.data_dir)
        if not cert.exists():
            make_certificate(settings.data_dir)
            console.print(f"made a self-signed certificate: {cert} (clients must trust it)")
    conf = nginx.render(nginx.NginxConfig(
        public_host, public_port, upstream, run_dir, log_dir,
        max_body=f"{max(1, settings.max_body_bytes // (1024 * 1024))}m", read_timeout_s=settings.upstream_read_timeout_s,
        admin_allow=tuple(settings.admin_allow), tls_cert=cert, tls_key=key,
    ))
    watcher = None
    if cluster_options is not None:
        local = {upstream: f"unix:{socket_path}"} if settings.workers > 0 else {}
        watcher = _watcher(settings, redis_url, conf, local, parts, console)
    nginx.check(conf)
    endpoint = f"{'https' if tls else 'http'}://{public_host}:{public_port}"
    verify = ssl.create_default_context(cafile=cert) if cert else True
    # Through nginx to this stack's workers, which answer with its id. A gateway with
    # no workers of its own may have no host yet: nginx's own page says it runs.
    if settings.workers > 0:
        def nginx_ready() -> bool:
            return answers_as(f"{endpoint}/healthz", stack_id, verify=verify)
    else:
        def nginx_ready() -> bool:
            return answers(f"{endpoint}/nginx_status", verify=verify)

    def start_nginx() -> subprocess.Popen:
        if watcher is not None:  # Redis is up by now: the secret, and the hosts known so far
            watcher.prepare()
        return lifeline.spawn(nginx.command(conf), signal.SIGTERM)

    parts.append(Component(
        "nginx", start_nginx, nginx_ready, orphan_signal=signal.SIGQUIT,
        log_hint=str(log_dir / "nginx-error.log")))
    return parts, endpoint, redis_url, watcher


def _watcher(settings, redis_url: str, conf: Path, local: dict[str, str], parts, console) -> cluster.ClusterWatcher:
    from impetus.gateway import connect
    from impetus.gateway.guard import ClusterSecret
    from impetus.gateway.hosts import HostRegistry

    client = connect(redis_url)

    def nginx_process():
        return next((c.process for c in parts if c.name == "nginx"), None)

    watcher = cluster.ClusterWatcher(
        HostRegistry(client), ClusterSecret(client), conf, settings.data_dir / "run" / "prometheus" / "hosts.json",
        nginx_process, log=lambda line: console.print(f"[cyan]~[/] {line}"), local=local)
    return watcher


def run(settings, public_host: str, public_port: int, tls: bool = False,
        cluster_options: ClusterOptions | None = None) -> int:
    console = Console(stderr=True, soft_wrap=True)
    run_dir = settings.data_dir / "run"
    log_dir = settings.data_dir / "logs"
    for directory in (run_dir, log_dir):
        directory.mkdir(parents=True, exist_ok=True)

    stop = StopOnSignal()
    parts: list[Component] = []
    record = None
    code = 0
    try:
        record = _take_over(settings, public_host, public_port, cluster_options, console)
        parts, endpoint, redis_url, watcher = components(settings, public_host, public_port, tls, console,
                                                         cluster_options, new_stack_id())
        ready_lines = {
            "redis": lambda: f"ready  {cluster.redacted(redis_url)} (append-only file in {settings.data_dir / 'redis'}, "
                             f"fsync {settings.redis_appendfsync})",
            "workers": lambda: f"ready  {settings.workers} × {settings.model} on {workers_socket(settings.data_dir)} "
                               f"(log: {log_dir / 'impetus.log'})",
            "nginx": lambda: f"ready  {endpoint} (logs in {log_dir})",
        }

        def on_ready(component: Component, again: bool) -> None:
            if not again:
                console.print(f"[green]✓[/] {component.name:<8} {ready_lines[component.name]()}")

        supervisor = Supervisor(parts, log=lambda line: console.print(f"[yellow]![/] {line}"), run_dir=run_dir,
                                on_ready=on_ready, first_backoff=settings.restart_backoff_s,
                                on_start=lambda component: record.started(component.name, component.process))
        supervisor.record_restarts()
        while not stop.requested and not supervisor.all_up:
            supervisor.step()
            time.sleep(0.1)
        if not stop.requested:
            _announce(endpoint, redis_url, console)
            if cluster_options is not None:
                _announce_cluster(settings, cluster_options, console)
        while not stop.requested:
            supervisor.step()
            if watcher is not None:
                watcher.step()
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
        if record is not None:
            record.release()
    return code


def take_over(record: lifeline.Record, busy: str, ports, console) -> lifeline.Record:
    """`record` claimed for this supervisor (`busy`, with {pid}, says why not
    when another holds it), what a supervisor killed before left running
    ended, and the ports it must have (host, port, what, flag) free, or one
    line naming who holds them."""
    holder = record.claim()
    if holder is not None:
        raise StackError(busy.replace("{pid}", holder))
    try:
        record.clean(log=lambda line: console.print(f"[yellow]![/] {line}"))
        for host, port, what, flag in ports:
            problem = check_port(host, port, what, flag)
            if problem:
                raise StackError(problem)
    except BaseException:
        record.release()
        raise
    return record


def _take_over(settings, public_host: str, public_port: int, cluster_options, console) -> lifeline.Record:
    """This data dir's `up` record: refused while another `up` runs from it."""
    ports = [(public_host, public_port, "the stack's endpoint", "--port")]
    if cluster_options is not None and not settings.redis_url:
        ports.append((cluster_options.address, cluster_options.redis_port, "the cluster's Redis", "--redis-port"))
    return take_over(lifeline.Record(settings.data_dir / "run", "up"),
                     f"another `impetus up` (pid {{pid}}) runs from {settings.data_dir}; stop it, or give this one "
                     "another --data-dir", ports, console)


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


def _announce_cluster(settings, options: ClusterOptions, console) -> None:
    url = cluster.join_url(cluster.read_password(settings.data_dir), options.address, options.redis_port)
    console.print(f"cluster: Redis listens on {options.address}:{options.redis_port} (password in "
                  f"{cluster.password_path(settings.data_dir)}); on each other Mac run:")
    print(f"join: impetus serve --join {url} --advertise http://THIS-MAC:8081", flush=True)


def answers(url: str, verify=True) -> bool:
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


def main(settings, host: str, port: int, tls: bool = False,
         cluster_options: ClusterOptions | None = None) -> None:
    sys.exit(run(settings, host, port, tls, cluster_options))
