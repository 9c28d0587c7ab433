"""Render nginx's configuration for this stack and run nginx in the foreground.

The templates are impetus/share/nginx/*.conf. Every path goes into them
through `quoted` (nginx's double-quoted string): a Mac's data dir is
`~/Library/Application Support/Impetus`, and unquoted, `nginx -t` reads its
space as the end of the argument (`invalid number of arguments in "pid"
directive`). A path with `$` is refused: nginx would read a variable there
(in `alias` and `access_log`), and its quotes have no escape for it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

from impetus.share import DASHBOARD
from impetus.share import NGINX as TEMPLATES
from impetus.system.info import find_program

UPSTREAM_FILE = "impetus-upstream.conf"


@dataclass
class NginxConfig:
    listen_host: str
    listen_port: int
    upstream: str  # "127.0.0.1:8081", or '"unix:/…/run/workers.sock"' (stack.cluster.unix_target)
    run_dir: Path
    log_dir: Path
    max_body: str = "32m"
    conn_per_client: int = 256
    read_timeout_s: int = 600  # IMPETUS_UPSTREAM_READ_TIMEOUT_S
    admin_allow: tuple[str, ...] = ()  # addresses besides loopback allowed /metrics and admin
    tls_cert: Path | None = None
    tls_key: Path | None = None
    dashboard_dir: Path = DASHBOARD  # the built dashboard (may be absent: nginx answers 404 there)
    # Whom nginx's workers run as when its master starts as root: None decides
    # by who renders (see below), "" writes no `user` line, a name that account.
    worker_user: str | None = None
    pid_file: Path | None = None  # None: run_dir/nginx/nginx.pid


def quoted(path: Path | str) -> str:
    """`path` as the inside of an nginx double-quoted string (the template
    holds the quotes, so compose's envsubst fills the same template)."""
    text = str(path)
    if "$" in text or any(ord(c) < 32 for c in text):
        raise ValueError(f"nginx cannot be given the path {text!r}: it holds '$' or a control character")
    return text.replace("\\", "\\\\").replace('"', '\\"')


def render_files(config: NginxConfig, templates: Path = TEMPLATES) -> dict[str, str]:
    """The configuration files' names and texts, for run_dir/nginx."""
    conf_dir = config.run_dir / "nginx"
    listen = f"listen {config.listen_host}:{config.listen_port}"
    if ":" in config.listen_host:  # IPv6
        listen = f"listen [{config.listen_host}]:{config.listen_port}"
    if config.tls_cert and config.tls_key:
        listen += (f' ssl;\n    ssl_certificate "{quoted(config.tls_cert)}";\n'
                   f'    ssl_certificate_key "{quoted(config.tls_key)}";\n'
                   "    ssl_protocols TLSv1.2 TLSv1.3;")
    else:
        listen += ";"
    allowed = ["127.0.0.1", "::1", *config.admin_allow]
    values = {
        "RUN_DIR": quoted(conf_dir),
        "PID_FILE": quoted(config.pid_file or conf_dir / "nginx.pid"),
        "LOG_DIR": quoted(config.log_dir),
        "CONF_DIR": quoted(conf_dir),
        "UPSTREAM": config.upstream,
        "LISTEN": listen,
        "MAX_BODY": config.max_body,
        "CONN_PER_CLIENT": str(config.conn_per_client),
        "READ_TIMEOUT": f"{config.read_timeout_s}s",
        "ADMIN_ALLOW": " ".join(f"allow {a};" for a in allowed),
        "ADMIN_ALLOW_NOTE": f" and {', '.join(config.admin_allow)}" if config.admin_allow else "",
        "DASHBOARD_DIR": quoted(config.dashboard_dir),
    }
    files = {}
    for name in ("nginx.conf", "impetus-http.conf", UPSTREAM_FILE, "impetus-server.conf"):
        text = Template((templates / name).read_text()).safe_substitute(values)
        if "${" in text:
            raise ValueError(f"{name}: a placeholder was not filled: {text[text.index('${'):][:40]}")
        if name == "nginx.conf" and config.worker_user:
            # A system service started as root to bind a port below 1024: the
            # workers, which talk to clients, drop to the service account.
            text = f"user {config.worker_user};\n" + text
        elif name == "nginx.conf" and config.worker_user is None and os.geteuid() == 0:
            # `impetus up` started as root (CI, containers): nginx would run its
            # workers as "nobody", which cannot reach a data dir under /root. As
            # a normal user (production) nginx switches no users at all.
            text = "user root;\n" + text
        files[name] = text
    return files


def render(config: NginxConfig, templates: Path = TEMPLATES) -> Path:
    """Write nginx.conf and its includes into run_dir/nginx; return nginx.conf."""
    conf_dir = config.run_dir / "nginx"
    conf_dir.mkdir(parents=True, exist_ok=True)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    for name, text in render_files(config, templates).items():
        (conf_dir / name).write_text(text)
    return conf_dir / "nginx.conf"


def nginx_binary() -> str:
    found = find_program("nginx")
    if found is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx, or brew install nginx)")
    return found


def check(conf: Path) -> None:
    result = subprocess.run([nginx_binary(), "-t", "-q", "-c", str(conf), "-p", str(conf.parent)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nginx rejected {conf}:\n{result.stderr}")


def start(conf: Path, **popen) -> subprocess.Popen:
    """nginx in the foreground (daemon off), so its parent owns its lifetime."""
    check(conf)
    return spawn(conf, **popen)


def command(conf: Path) -> list[str]:
    """nginx in the foreground with `conf`."""
    return [nginx_binary(), "-c", str(conf), "-p", str(conf.parent), "-g", "daemon off;"]


def spawn(conf: Path, **popen) -> subprocess.Popen:
    """nginx with a configuration already checked."""
    return subprocess.Popen(command(conf), **popen)
