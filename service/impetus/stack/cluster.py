"""Several Macs behind one endpoint: the gateway side of `impetus up --cluster`.

The gateway Mac runs the stack as usual, and its Redis also listens on a
LAN port with a password (`requirepass`, generated once, kept in
<data dir>/cluster/redis.password, mode 0600). Other Macs join with
`impetus serve --join redis://:PASSWORD@GATEWAY:PORT --advertise
http://THIS-MAC:8081`: their workers use that Redis for keys, limits, the
cache, the Responses store and usage, and heartbeat into the host registry
(impetus.gateway.hosts).

Routing is nginx's, not ours. Every two seconds `up` reads the registry and,
when the set of hosts or the gateway secret changed, rewrites one include
(impetus-upstream.conf: the servers, `hash` of the caller's API key
`consistent`, and the secret header's value), checks it with `nginx -t` and
reloads nginx gracefully (SIGHUP: streams in flight go on in the old
workers). The same pass writes Prometheus' file-based service discovery
(run/prometheus/hosts.json), so every host is scraped.

Why these nginx settings (impetus/share/nginx/impetus-server.conf and below):
- `hash $impetus_affinity consistent`: a person's next turn lands on the host
  that has their prompt prefix cached (a Codex prompt is 6-10k tokens, a
  minute of prefill on a CPU); adding a host moves only ~1/N of the keys.
- `proxy_next_upstream error timeout http_404 http_503 non_idempotent`: a host
  that cannot serve the model (404 model_not_found) or whose queue is full
  (503) passes the request to the next host; bodies are buffered (small
  JSON) so a POST can be sent again, responses stay unbuffered for streaming.
- `max_fails=1 fail_timeout=5s` (passive health): a host that refuses a
  connection is skipped for 5 s, then tried again; its heartbeat's TTL
  (15 s) takes it out of the upstream for good.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urlsplit

from impetus.settings import CLUSTER_PASSWORD_FILE, read_password
from impetus.stack import nginx

DEFAULT_REDIS_PORT = 6390
WATCH_INTERVAL_S = 2.0
# A host that stopped heartbeating without leaving stays a Prometheus target
# this long, so that it is seen down and ImpetusDown fires (deploy/prometheus).
LOST_KEEP_S = 3600
FAIL_TIMEOUT_S = 5


def password_path(data_dir: Path) -> Path:
    return data_dir / CLUSTER_PASSWORD_FILE


def redis_password_conf(data_dir: Path) -> Path | None:
    """A redis.conf holding only `requirepass` (0600), once a password exists."""
    password = read_password(data_dir)
    if password is None:
        return None
    conf = password_path(data_dir).with_name("redis-auth.conf")
    write_atomic(conf, f'requirepass "{password}"\n')
    return conf


def ensure_password(data_dir: Path) -> str:
    """The cluster's Redis password, made once; only this user can read it."""
    existing = read_password(data_dir)
    if existing:
        return existing
    path = password_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    password = secrets.token_urlsafe(24)
    write_atomic(path, password + "\n")
    return password


def lan_address() -> str:
    """This Mac's address on the LAN (the one its default route leaves by);
    loopback when it has none. No packet is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed, just picks the interface
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def join_url(password: str, address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"redis://:{quote(password, safe='')}@{host}:{port}"


def redacted(url: str) -> str:
    """A Redis URL fit for a log line: the password replaced by ***."""
    url = re.sub(r"^([a-z]+://[^/@:]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"([?&])password=[^&]*", r"\1password=***", url)


def unix_target(path: Path) -> str:
    """A unix socket as nginx's upstream server (quoted: a Mac's data dir has a space)."""
    return f'"unix:{nginx.quoted(path)}"'


def upstream_target(address: str) -> str | None:
    """An advertised address (http://mac-2.local:8081) as nginx's upstream
    server: "IP:PORT", resolved now (nginx would refuse the whole file for a
    name it cannot resolve); None when it does not resolve. `unix:PATH` is
    the gateway's own workers, on their socket."""
    if address.startswith("unix:"):
        return unix_target(Path(address[len("unix:"):]))
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        info = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return None
    ip = sorted(info, key=lambda i: i[0] != socket.AF_INET)[0][4][0]  # IPv4 first
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def render_upstream(servers: dict[str, str], secret: str | None) -> str:
    """The cluster's impetus-upstream.conf: `servers` maps "IP:PORT" to the
    advertised address it came from (a comment for the reader)."""
    lines = ["# Written by `impetus up --cluster` from the host registry; rewritten, and nginx",
             "# reloaded, when hosts come or go or the gateway secret is rotated.",
             "upstream impetus {",
             "    hash $impetus_affinity consistent;"]
    for target in sorted(servers):
        lines.append(f"    server {target} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;  # {servers[target]}")
    if not servers:
        lines.append("    server 127.0.0.1:9 down;  # no host yet: nginx answers 503 upstream_unavailable")
    lines += ["    keepalive 64;", "}",
              "# Proves to the workers that a request came through this nginx (impetus.gateway.guard).",
              f'map $scheme $impetus_gateway_secret {{ default "{secret or ""}"; }}', ""]
    return "\n".join(lines)


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Atomically (a reader never sees half a file); by default readable only
    by this user (the password, the gateway secret)."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    staging.replace(path)


def service_discovery(addresses, skip=()) -> list[dict]:
    """Prometheus' file_sd format: one target group per host, but those in
    `skip` (the gateway's own workers: the `impetus` job scrapes them)."""
    groups = []
    for address in sorted(addresses):
        parts = urlsplit(address)
        if address not in skip and parts.hostname:
            groups.append({"targets": [f"{parts.netloc.rsplit('@', 1)[-1]}"], "labels": {"host": address}})
    return groups


@dataclass
class ClusterWatcher:
    """Keeps nginx's upstream and Prometheus' targets equal to the registry.
    `nginx_process` returns nginx's master (None while it is restarting: the
    new one reads the file already written)."""

    registry: object  # impetus.gateway.hosts.HostRegistry
    secret: object  # impetus.gateway.guard.ClusterSecret
    conf: Path  # nginx.conf; impetus-upstream.conf lies beside it
    sd_file: Path
    nginx_process: Callable[[], object]
    log: Callable[[str], None]
    local: dict[str, str] = field(default_factory=dict)  # this Mac's own workers, before their first beat
    clock: Callable[[], float] = time.monotonic
    servers: dict[str, str] = field(default_factory=dict)
    secret_value: str | None = None
    wall: Callable[[], float] = time.time
    # Hosts seen: address -> (their workers' pids, when last seen); those that
    # vanish without leaving stay Prometheus targets for LOST_KEEP_S.
    seen: dict = field(default_factory=dict)
    unresolved: set = field(default_factory=set)  # said once, not every pass
    _next: float = 0.0

    @property
    def upstream_file(self) -> Path:
        return self.conf.parent / nginx.UPSTREAM_FILE

    def prepare(self) -> None:
        """Before nginx (re)starts: the secret (made on the first start) and
        the hosts known so far, this Mac's own workers first of all."""
        from redis.exceptions import RedisError

        try:
            self.secret_value = self.secret.ensure()
        except RedisError as error:
            self.log(f"cannot read the gateway secret ({error}); keeping the last one")
        self.servers = {**self.local, **self.servers}
        write_atomic(self.upstream_file, render_upstream(self.servers, self.secret_value))

    def step(self) -> None:
        now = self.clock()
        if now < self._next:
            return
        self._next = now + WATCH_INTERVAL_S
        from redis.exceptions import RedisError

        try:
            hosts = self.registry.hosts()
            secret = self.secret.current() or self.secret_value
            self._write_sd(self._scraped(hosts))
        except RedisError:
            return  # keep routing as it is until Redis is back
        servers = dict(self.local)
        for host in hosts:
            target = upstream_target(host.address)
            if target is None:
                if host.address not in self.unresolved:
                    self.log(f"host {host.address} does not resolve; not routed to")
                self.unresolved.add(host.address)
                continue
            self.unresolved.discard(host.address)
            servers.setdefault(target, host.address)
        if servers == self.servers and secret == self.secret_value:
            return
        self._apply(servers, secret)

    def _apply(self, servers: dict[str, str], secret: str) -> None:
        previous = self.upstream_file.read_text()
        write_atomic(self.upstream_file, render_upstream(servers, secret))
        try:
            nginx.check(self.conf)
        except RuntimeError as error:
            write_atomic(self.upstream_file, previous)
            self.log(f"nginx refused the new upstream, keeping the old one: {error}")
            return
        came = sorted(set(servers.values()) - set(self.servers.values()))
        went = sorted(set(self.servers.values()) - set(servers.values()))
        what = [f"+{a}" for a in came] + [f"-{a}" for a in went]
        if secret != self.secret_value:
            what.append("new gateway secret")
        self.servers, self.secret_value = servers, secret
        process = self.nginx_process()
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGHUP)  # graceful: old workers finish their streams
        self.log(f"hosts: {len(servers)} routed ({', '.join(what) or 'reordered'}); nginx reloaded")

    def _scraped(self, hosts) -> list[str]:
        """The hosts alive, and those that died (stopped beating without
        leaving) within LOST_KEEP_S."""
        now = self.wall()
        for host in hosts:
            self.seen[host.address] = (host.pids, now)
        alive = {host.address for host in hosts}
        for address, (pids, when) in list(self.seen.items()):
            if address not in alive and (now - when > LOST_KEEP_S or self.registry.left(address, pids)):
                del self.seen[address]
        return list(self.seen)

    def _write_sd(self, addresses) -> None:
        text = json.dumps(service_discovery(addresses, skip=set(self.local.values())), indent=1)
        try:
            if self.sd_file.read_text() == text:
                return
        except FileNotFoundError:
            self.sd_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.sd_file, text, mode=0o644)  # Prometheus may run as another user
