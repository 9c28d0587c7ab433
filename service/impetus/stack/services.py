"""`impetus service install|uninstall|status`: the stack as launchd services
(macOS) or systemd units (Linux), so it comes back after a crash, and after a
reboot: a --system install at boot, with nobody logged in; a per-user one
when its user logs in (impetus.stack.launchd says which domain an agent
goes to over SSH).

Decides: which services there are and what each runs, where files go, and
what an install writes, changes and removes. The formats are stack.launchd
and stack.systemd; the service account is stack.accounts.

Three services: the model server (`impetus serve`, Gunicorn with gevent
workers), its private Redis (unix socket, append-only file) and nginx in
front. Per user (LaunchAgent / systemd --user) by default, for the whole
machine (LaunchDaemon / system unit) with --system.

Services never run as root. A system install (--system, run with sudo) runs
them as a dedicated unprivileged account, `_impetus` on macOS and `impetus` on
Linux (or --user NAME), made at install if it does not exist and given the
data and log folders; uninstall removes the account only if install made it.
nginx alone starts as root when its port is below 1024 (only root may bind
it), and its workers, which talk to clients, drop to the account. A per-user
install runs as that user. A system install refuses to run a copy of
Impetus the account cannot read (one in a home folder).

Installing is idempotent: files are written only when their text changes, and
services are (re)started only then. Everything written is listed in a manifest
in the data dir, and uninstall removes exactly that. With --root the files are
written below that folder and launchctl/systemctl are not called (for
packaging, and for the tests).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from impetus.settings import SOCKET_PATH_LIMIT, redis_socket
from impetus.share import SHARE
from impetus.stack import launchd, nginx, systemd
from impetus.stack.accounts import (
    SERVICE_ACCOUNTS,
    SYSTEM_DATA_DIRS,
    ServiceError,
    account_commands,
    check_reachable,
    check_readable,
    ensure_account,
    give_to_account,
    interpreter,
    remove_account,
    uid_of,
)
from impetus.stack.up import redis_arguments
from impetus.system.info import find_program

__all__ = ["ServiceError", "Layout", "layout_for", "render", "install", "uninstall", "status", "account_commands",
           "check_reachable", "ensure_account", "give_to_account", "remove_account", "SERVICE_ACCOUNTS",
           "SYSTEM_DATA_DIRS"]

MANIFEST = "services.json"
PRIVILEGED_PORTS = 1024
# What the services find programs by: launchd and systemd start them with a
# bare PATH. /usr/sbin holds sysctl (the CPU's name on a Mac), Homebrew's
# programs come before the system's.
SYSTEM_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")


@dataclass
class Layout:
    manager: str  # "launchd" or "systemd"
    system: bool
    data_dir: Path
    log_dir: Path
    unit_dir: Path
    user: str  # whom the services run as: the service account (system), or this user
    root: Path | None = None  # write below this folder, and do not start anything
    domain: str | None = None  # launchd's domain (stack.launchd.Launchctl.domain); None: decided at install

    def real(self, path: Path) -> Path:
        """Where a file goes on disk (below root, if there is one)."""
        return self.root / path.relative_to("/") if self.root else path


@dataclass
class Rendered:
    files: dict[Path, str] = field(default_factory=dict)  # absolute path (as installed) -> text
    services: list[str] = field(default_factory=list)  # labels / unit names, in start order
    private: set[Path] = field(default_factory=set)  # written readable by their owner only (a password)
    reads: set[Path] = field(default_factory=set)  # what the services read outside the data dir


def _platform_manager() -> str:
    return "launchd" if sys.platform == "darwin" else "systemd"


def layout_for(settings, system: bool, manager: str | None = None, root: Path | None = None,
               user: str | None = None, domain: str | None = None) -> Layout:
    manager = manager or _platform_manager()
    if manager not in SERVICE_ACCOUNTS:
        raise ServiceError(f"unknown service manager {manager!r} (launchd or systemd)")
    home = Path.home()
    if manager == "launchd":
        unit_dir = Path("/Library/LaunchDaemons") if system else home / "Library/LaunchAgents"
        log_dir = Path("/Library/Logs/Impetus") if system else home / "Library/Logs/Impetus"
    else:
        unit_dir = Path("/etc/systemd/system") if system else home / ".config/systemd/user"
        log_dir = settings.data_dir / "logs"
    if not system and user is not None:
        raise ServiceError("--user is for a system install (--system); a per-user install runs as you")
    account = (user or SERVICE_ACCOUNTS[manager]) if system else getpass.getuser()
    if system and (account == "root" or uid_of(account) == 0):
        raise ServiceError("a network-facing model server must not run as root: leave out --user for the "
                           f"service account {SERVICE_ACCOUNTS[manager]!r}, or name an unprivileged one")
    data_dir = settings.data_dir
    if system and "data_dir" not in settings.model_fields_set:
        data_dir = SYSTEM_DATA_DIRS[manager]  # not root's home, which the account cannot enter
        if manager == "systemd":
            log_dir = data_dir / "logs"
    if manager == "launchd" and system:
        domain = "system"
    return Layout(manager, system, data_dir.resolve(), log_dir, unit_dir, account, root, domain)


def _which(program: str) -> str:
    found = find_program(program)
    if found is None:
        raise ServiceError(f"{program} is not installed (make setup installs it)")
    return found


def render(settings, layout: Layout, public_host: str = "127.0.0.1", public_port: int = 8080,
           impetus: str | None = None, join: str | None = None, advertise: str | None = None) -> Rendered:
    """Every file the install writes, with its text. With `join` (the gateway's
    Redis URL) the Mac is one more host of a cluster: one service, `impetus
    serve --join-file` on `public_host` (the LAN), no Redis or nginx of its own;
    the URL, which holds the password, goes to a file only the account reads."""
    if join is not None:
        return _render_joined(settings, layout, public_host, impetus, join, advertise)
    impetus, path = _program(impetus)
    data, logs = layout.data_dir, layout.log_dir
    upstream = f"127.0.0.1:{settings.port}"
    # Only root binds a port below 1024: then nginx's master starts as root and
    # its workers drop to the account; otherwise nginx runs as the account too.
    nginx_as_root = layout.system and public_port < PRIVILEGED_PORTS
    # newsyslog signals nginx by its pid file, and newsyslog's lines cannot
    # hold a space: on a Mac the pid file lives in the log dir, not under
    # "Application Support".
    pid_file = logs / "nginx.pid" if layout.manager == "launchd" else None
    nginx_files = nginx.render_files(nginx.NginxConfig(
        public_host, public_port, upstream, data / "run", logs,
        max_body=f"{max(1, settings.max_body_bytes // (1024 * 1024))}m", admin_allow=tuple(settings.admin_allow),
        read_timeout_s=settings.upstream_read_timeout_s,
        worker_user=(layout.user if nginx_as_root else "") if layout.system else None, pid_file=pid_file))
    nginx_conf = data / "run" / "nginx" / "nginx.conf"
    server_env = {
        "IMPETUS_DATA_DIR": str(data), "IMPETUS_HOST": "127.0.0.1", "IMPETUS_PORT": str(settings.port),
        "IMPETUS_WORKERS": str(settings.workers), "IMPETUS_MODEL": settings.model,
        # No IMPETUS_REDIS_URL: the default is this data dir's Redis socket, with the
        # cluster password read from its 0600 file when there is one (never in a unit).
        "IMPETUS_REQUIRE_API_KEYS": "true", "PATH": path,
    }
    if layout.manager == "launchd":  # systemd keeps stderr in the journal instead
        server_env["IMPETUS_LOG_FILE"] = str(logs / "impetus.log")
    account = layout.user if layout.system else None  # None: the installing user's own services
    services = {
        "redis": ("its private Redis (keys, limits, usage)",
                  [_which("redis-server"),
                   *redis_arguments(data, logs, settings.redis_appendfsync)],
                  {"PATH": path}, [], account),
        "server": ("LLM server (Gunicorn workers on MLX)", [impetus, "serve"], server_env, ["redis"], account),
        "nginx": ("nginx in front of the server",
                  [nginx.nginx_binary(), "-c", str(nginx_conf), "-p", str(nginx_conf.parent), "-g", "daemon off;"],
                  {"PATH": path}, ["server"], None if nginx_as_root else account),
    }
    rendered = Rendered(reads={SHARE.parent, nginx.DASHBOARD})  # the impetus package, and what nginx serves
    for name, text in nginx_files.items():
        rendered.files[nginx_conf.parent / name] = text
    return _render_services(settings, layout, services, rendered)


def _program(impetus: str | None) -> tuple[str, str]:
    """The `impetus` executable the services run, and the PATH they get (it
    and Homebrew's programs first)."""
    impetus = stable_path(impetus or str(Path(sys.executable).parent / "impetus"))
    return impetus, os.pathsep.join([str(Path(impetus).parent), *SYSTEM_PATH])


def stable_path(program: str) -> str:
    """A Homebrew keg's program by its `opt` link, which `brew upgrade` keeps:
    PREFIX/Cellar/NAME/VERSION/x becomes PREFIX/opt/NAME/x when that exists
    (the Cellar's version folder is removed by the upgrade after next)."""
    parts = Path(program).parts
    if "Cellar" in parts:
        at = parts.index("Cellar")
        if len(parts) > at + 3:
            prefix, name, rest = Path(*parts[:at]), parts[at + 1], parts[at + 3:]
            opt = prefix / "opt" / name
            if opt.exists():
                return str(opt.joinpath(*rest))
    return program


def _render_joined(settings, layout: Layout, host: str, impetus: str | None, join: str,
                   advertise: str | None) -> Rendered:
    impetus, path = _program(impetus)
    data, logs = layout.data_dir, layout.log_dir
    join_file = data / "cluster" / "join.url"
    arguments = [impetus, "serve", "--join-file", str(join_file), "--host", host, "--port", str(settings.port),
                 "--advertise", advertise or settings.advertise_address]
    environment = {"IMPETUS_DATA_DIR": str(data), "IMPETUS_WORKERS": str(settings.workers),
                   "IMPETUS_MODEL": settings.model, "PATH": path}
    if layout.manager == "launchd":
        environment["IMPETUS_LOG_FILE"] = str(logs / "impetus.log")
    rendered = Rendered(files={join_file: join + "\n"}, private={join_file})
    services = {"server": ("LLM server, one host of a cluster (Gunicorn workers on MLX)", arguments, environment,
                           [], layout.user if layout.system else None)}
    return _render_services(settings, layout, services, rendered)


def _render_services(settings, layout: Layout, services: dict, rendered: Rendered) -> Rendered:
    data, logs = layout.data_dir, layout.log_dir
    exit_timeout = settings.graceful_timeout + 15
    # An agent in the user domain (nobody at the screen) is a Background one.
    session = "Background" if layout.domain and layout.domain.startswith("user/") else None
    for name, (description, arguments, environment, after, run_as) in services.items():
        rendered.reads.add(Path(arguments[0]))
        python = interpreter(arguments[0])
        if python is not None:
            rendered.reads.add(python)
        if layout.manager == "launchd":
            text = launchd.plist(name, description, arguments, environment, data, logs, exit_timeout, run_as, session)
            rendered.files[layout.unit_dir / f"{launchd.label(name)}.plist"] = text
            rendered.services.append(launchd.label(name))
        else:
            text = systemd.unit(description, arguments, environment, data, after, run_as, exit_timeout, layout.system)
            rendered.files[layout.unit_dir / systemd.unit_name(name)] = text
            rendered.services.append(systemd.unit_name(name))
    if layout.system:  # the rotation config lives in a system folder
        if layout.manager == "launchd":
            rendered.files[Path("/etc/newsyslog.d/impetus.conf")] = launchd.newsyslog_conf(
                logs, layout.user, logs / "nginx.pid")
        else:
            rendered.files[Path("/etc/logrotate.d/impetus")] = systemd.logrotate_conf(logs)
    return rendered


def _manifest_path(layout: Layout) -> Path:
    return layout.real(layout.data_dir / MANIFEST)


def check_socket_path(data_dir: Path) -> None:
    """Redis' socket must lie in the data dir: the short place in /tmp that
    `impetus up` falls back to is gone after a reboot, before launchd or
    systemd start Redis (which makes no folders)."""
    if redis_socket(data_dir).parent != data_dir / "redis":
        raise ServiceError(f"the data dir {data_dir} is too long a path for Redis' unix socket "
                           f"({SOCKET_PATH_LIMIT} bytes at most, with redis/redis.sock); choose a shorter --data-dir")


def install(settings, layout: Layout, progress=print, join: str | None = None, **options) -> list[Path]:
    """Write what changed and (re)start those services; returns the files changed."""
    live = layout.root is None
    manifest = _manifest_path(layout)
    previous = json.loads(manifest.read_text()) if manifest.exists() else {}
    if layout.manager == "launchd" and layout.domain is None:
        layout.domain = launchd.Launchctl().domain(False) if live else f"gui/{os.getuid()}"
    rendered = render(settings, layout, join=join, **options)
    created_dirs, changed = [], []
    made_account = False
    if live and join is None:
        check_socket_path(layout.data_dir)
    if layout.system and live:
        made_account = ensure_account(layout, progress)
        # A Mac keeps launchd jobs out of home folders whatever the modes say; Linux goes by the modes.
        check_readable(layout.user, sorted(rendered.reads), homes=None if layout.manager == "launchd" else set())

    def make_dirs(directory: Path) -> None:
        created_dirs.extend(str(d) for d in (directory, *directory.parents) if not d.exists())
        directory.mkdir(parents=True, exist_ok=True)

    for path, text in rendered.files.items():
        target = layout.real(path)
        make_dirs(target.parent)
        if not target.exists() or target.read_text() != text:
            if path in rendered.private:
                target.touch(mode=0o600)
                target.chmod(0o600)
            target.write_text(text)
            changed.append(path)
    for directory in (layout.log_dir, layout.data_dir / "redis"):
        make_dirs(layout.real(directory))
    if layout.system and live:
        check_reachable(layout.user, layout.data_dir, layout.manager)
        give_to_account(layout.user, layout.data_dir, layout.log_dir)
    record = {
        "manager": layout.manager, "system": layout.system, "services": rendered.services,
        "files": sorted(str(p) for p in rendered.files),
        # Folders the first install made (removed again if empty at uninstall).
        "created_dirs": previous.get("created_dirs") or sorted(set(created_dirs)),
        "account": layout.user if layout.system else None,
        # Uninstall removes the account only if an install made it.
        "created_account": bool(previous.get("created_account") or made_account),
    }
    if layout.manager == "launchd":
        record["domain"] = layout.domain
    if previous != record:
        manifest.write_text(json.dumps(record, indent=2) + "\n")
    for path in changed:
        progress(f"wrote {path}")
    if live:
        _activate(settings, layout, rendered, changed, previous.get("domain"), progress)
    elif not changed:
        progress("nothing changed")
    return changed


def uninstall(settings, layout: Layout, progress=print) -> list[Path]:
    manifest = _manifest_path(layout)
    if not manifest.exists():
        progress("nothing installed")
        return []
    record = json.loads(manifest.read_text())
    if layout.root is None:
        for service in reversed(record["services"]):
            _stop(settings, layout, service, record.get("domain"))
    removed = []
    for name in record["files"]:
        target = layout.real(Path(name))
        if target.exists():
            target.unlink()
            removed.append(Path(name))
            progress(f"removed {name}")
    manifest.unlink()
    for directory in sorted(record.get("created_dirs", []), key=len, reverse=True):
        try:
            Path(directory).rmdir()  # only if empty: logs and Redis data stay
        except OSError:
            pass
    if layout.root is None and layout.manager == "systemd":
        systemd.systemctl(layout.system, "daemon-reload", check=False)
    if layout.root is None and record.get("created_account") and record.get("account"):
        remove_account(layout, record["account"], progress)
    return removed


def status(layout: Layout) -> list[tuple[str, str]]:
    manifest = _manifest_path(layout)
    if not manifest.exists():
        return []
    record = json.loads(manifest.read_text())
    states = []
    for service in record["services"]:
        if layout.manager == "launchd":
            state = launchd.Launchctl().state(f"{record.get('domain') or layout.domain}/{service}")
        else:
            state = systemd.systemctl(layout.system, "is-active", service, check=False).stdout.strip() or "unknown"
        states.append((service, state))
    return states


def _activate(settings, layout: Layout, rendered: Rendered, changed: list[Path], old_domain: str | None,
              progress, launchctl: launchd.Launchctl | None = None) -> None:
    changed_names = {p.name for p in changed}
    if layout.manager != "launchd":
        systemd.activate(layout.system, rendered.services, changed_names, progress)
        return
    launchctl = launchctl or launchd.Launchctl()
    timeout = settings.graceful_timeout + 30  # past the plists' ExitTimeOut (graceful + 15)
    for label in rendered.services:
        plist = layout.unit_dir / f"{label}.plist"
        if old_domain and old_domain != layout.domain:  # installed while nobody / somebody was at the screen
            launchctl.remove(f"{old_domain}/{label}", timeout)
        elif launchctl.loaded(f"{layout.domain}/{label}") and plist.name not in changed_names:
            continue
        launchctl.replace(layout.domain, label, plist, timeout)
        progress(f"started {label} in {layout.domain}")
    if layout.domain.startswith("user/"):
        progress("nobody is logged in at the screen: the services run in the user domain until a restart, and "
                 "start again when you next log in; to start at boot without a login use --system")


def _stop(settings, layout: Layout, service: str, domain: str | None) -> None:
    if layout.manager == "launchd":
        try:
            launchd.Launchctl().remove(f"{domain or layout.domain}/{service}", settings.graceful_timeout + 30)
        except ServiceError:
            pass  # uninstall goes on: its files are removed, and launchd forgets a job whose plist is gone
    else:
        systemd.systemctl(layout.system, "disable", "--now", service, check=False)
