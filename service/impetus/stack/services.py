"""`impetus service install|uninstall|status`: the stack as launchd services
(macOS) or systemd units (Linux), so it comes back after a reboot or a crash
without anyone logging in.

Three services, rendered from deploy/launchd/service.plist or
deploy/systemd/service.service: the model server (`impetus serve`, Gunicorn
with gevent workers), its private Redis (unix socket, append-only file) and
nginx in front. Per user (LaunchAgent / systemd --user) by default, for the
whole machine (LaunchDaemon / system unit) with --system.

Services never run as root. A system install (--system, run with sudo) runs
them as a dedicated unprivileged account, `_impetus` on macOS and `impetus` on
Linux (or --user NAME), made at install if it does not exist and given the
data and log folders; uninstall removes the account only if install made it.
nginx alone starts as root when its port is below 1024 (only root may bind
it), and its workers, which talk to clients, drop to the account. A per-user
install runs as that user.

Installing is idempotent: files are written only when their text changes, and
services are (re)started only then. Everything written is listed in a manifest
in the data dir, and uninstall removes exactly that. With --root the files are
written below that folder and launchctl/systemctl are not called (for
packaging, and for the tests).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape

from impetus.stack import nginx
from impetus.stack.up import redis_arguments

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
LABEL_PREFIX = "com.impetus"
MANIFEST = "services.json"
# The unprivileged account system services run as (macOS names system accounts with "_").
SERVICE_ACCOUNTS = {"launchd": "_impetus", "systemd": "impetus"}
SYSTEM_DATA_DIRS = {"launchd": Path("/Library/Application Support/Impetus"), "systemd": Path("/var/lib/impetus")}
PRIVILEGED_PORTS = 1024


class ServiceError(RuntimeError):
    pass


@dataclass
class Layout:
    manager: str  # "launchd" or "systemd"
    system: bool
    data_dir: Path
    log_dir: Path
    unit_dir: Path
    user: str  # whom the services run as: the service account (system), or this user
    root: Path | None = None  # write below this folder, and do not start anything

    def real(self, path: Path) -> Path:
        """Where a file goes on disk (below root, if there is one)."""
        return self.root / path.relative_to("/") if self.root else path


@dataclass
class Rendered:
    files: dict[Path, str] = field(default_factory=dict)  # absolute path (as installed) -> text
    services: list[str] = field(default_factory=list)  # labels / unit names, in start order
    private: set[Path] = field(default_factory=set)  # written readable by their owner only (a password)


def _platform_manager() -> str:
    return "launchd" if sys.platform == "darwin" else "systemd"


def layout_for(settings, system: bool, manager: str | None = None, root: Path | None = None,
               user: str | None = None) -> Layout:
    manager = manager or _platform_manager()
    if manager not in SERVICE_ACCOUNTS:
        raise ServiceError(f"unknown service manager {manager!r} (launchd or systemd)")
    home = Path.home()
    if manager == "launchd":
        unit_dir = Path("/Library/LaunchDaemons") if system else home / "Library/LaunchAgents"
        log_dir = Path("/Library/Logs/Impetus") if system else home / "Library/Logs/Impetus"
    elif manager == "systemd":
        unit_dir = Path("/etc/systemd/system") if system else home / ".config/systemd/user"
        log_dir = settings.data_dir / "logs"
    import getpass

    if not system and user is not None:
        raise ServiceError("--user is for a system install (--system); a per-user install runs as you")
    account = (user or SERVICE_ACCOUNTS[manager]) if system else getpass.getuser()
    if system and (account == "root" or _uid(account) == 0):
        raise ServiceError("a network-facing model server must not run as root: leave out --user for the "
                           f"service account {SERVICE_ACCOUNTS[manager]!r}, or name an unprivileged one")
    data_dir = settings.data_dir
    if system and "data_dir" not in settings.model_fields_set:
        data_dir = SYSTEM_DATA_DIRS[manager]  # not root's home, which the account cannot enter
        if manager == "systemd":
            log_dir = data_dir / "logs"
    return Layout(manager, system, data_dir.resolve(), log_dir, unit_dir, account, root)


def _uid(account: str) -> int | None:
    try:
        return pwd.getpwnam(account).pw_uid
    except KeyError:
        return None


def _which(program: str, *fallbacks: str) -> str:
    for candidate in (shutil.which(program), *fallbacks):
        if candidate and Path(candidate).exists():
            # Absolute, but not resolved: Debian's redis-server is a link to
            # redis-check-rdb, which acts by the name it is started under.
            return str(Path(candidate).absolute())
    raise ServiceError(f"{program} is not installed (make setup installs it)")


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
    nginx_files = nginx.render_files(nginx.NginxConfig(
        public_host, public_port, upstream, data / "run", logs,
        max_body=f"{max(1, settings.max_body_bytes // (1024 * 1024))}m", admin_allow=tuple(settings.admin_allow),
        worker_user=(layout.user if nginx_as_root else "") if layout.system else None))
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
                  [_which("redis-server", "/opt/homebrew/bin/redis-server"),
                   *redis_arguments(data, logs, settings.redis_appendfsync)],
                  {"PATH": path}, [], account),
        "server": ("LLM server (Gunicorn workers on MLX)", [impetus, "serve"], server_env, ["redis"], account),
        "nginx": ("nginx in front of the server",
                  [nginx.nginx_binary(), "-c", str(nginx_conf), "-p", str(nginx_conf.parent), "-g", "daemon off;"],
                  {"PATH": path}, ["server"], None if nginx_as_root else account),
    }
    rendered = Rendered()
    for name, text in nginx_files.items():
        rendered.files[nginx_conf.parent / name] = text
    return _render_services(settings, layout, services, rendered)


def _program(impetus: str | None) -> tuple[str, str]:
    """The `impetus` executable the services run, and the PATH they get (it
    and Homebrew's programs first: launchd and systemd start with a bare one)."""
    impetus = impetus or str(Path(sys.executable).parent / "impetus")
    return impetus, os.pathsep.join([str(Path(impetus).parent), "/opt/homebrew/bin", "/usr/local/bin", "/usr/bin",
                                     "/bin"])


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
    exit_timeout = str(settings.graceful_timeout + 15)
    for name, (description, arguments, environment, after, run_as) in services.items():
        if layout.manager == "launchd":
            label = f"{LABEL_PREFIX}.{name}"
            text = Template((DEPLOY / "launchd" / "service.plist").read_text()).safe_substitute(
                DESCRIPTION=escape(description), LABEL=label, NAME=name, DATA_DIR=escape(str(data)),
                LOG_DIR=escape(str(logs)), EXIT_TIMEOUT=exit_timeout,
                PROGRAM_ARGUMENTS="\n".join(f"        <string>{escape(a)}</string>" for a in arguments),
                ENVIRONMENT="\n".join(f"        <key>{escape(k)}</key>\n        <string>{escape(v)}</string>"
                                      for k, v in environment.items()),
                USER_NAME=(f"    <key>UserName</key>\n    <string>{escape(run_as)}</string>\n"
                           f"    <key>GroupName</key>\n    <string>{escape(run_as)}</string>\n" if run_as else ""))
            rendered.files[layout.unit_dir / f"{label}.plist"] = text
            rendered.services.append(label)
        else:
            unit = f"impetus-{name}.service"
            text = Template((DEPLOY / "systemd" / "service.service").read_text()).safe_substitute(
                DESCRIPTION=description, DATA_DIR=str(data), EXIT_TIMEOUT=exit_timeout,
                AFTER=" ".join(f"impetus-{a}.service" for a in after),
                EXEC_START=" ".join(_systemd_quote(a) for a in arguments),
                ENVIRONMENT="\n".join(f'Environment="{k}={v}"' for k, v in environment.items()),
                USER_NAME=f"User={run_as}\nGroup={run_as}\n" if run_as else "",
                WANTED_BY="multi-user.target" if layout.system else "default.target")
            rendered.files[layout.unit_dir / unit] = text
            rendered.services.append(unit)
    rotation = ("newsyslog", "impetus.conf", Path("/etc/newsyslog.d/impetus.conf")) if layout.manager == "launchd" \
        else ("logrotate", "impetus", Path("/etc/logrotate.d/impetus"))
    if layout.system:  # the rotation config lives in a system folder
        rendered.files[rotation[2]] = Template((DEPLOY / rotation[0] / rotation[1]).read_text()).safe_substitute(
            LOG_DIR=str(logs), DATA_DIR=str(data))
    for path, text in rendered.files.items():
        if "${" in text:
            raise ServiceError(f"{path}: a placeholder was not filled")
    return rendered


def _systemd_quote(argument: str) -> str:
    if argument and all(c.isalnum() or c in "/._-:=@+," for c in argument):
        return argument
    return '"' + argument.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _manifest_path(layout: Layout) -> Path:
    return layout.real(layout.data_dir / MANIFEST)


# -- the service account ------------------------------------------------------------


def account_commands(manager: str, name: str, home: Path, uid: int | None = None) -> list[list[str]]:
    """How the account is made: a system account with its own group, no login
    shell, no password, its home the data dir (not created by the command)."""
    if manager == "systemd":
        nologin = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if Path(p).exists()), "/bin/false")
        return [["useradd", "--system", "--user-group", "--home-dir", str(home), "--no-create-home",
                 "--shell", nologin, "--comment", "Impetus LLM server", name]]
    group, user = f"/Groups/{name}", f"/Users/{name}"
    return [["dscl", ".", "-create", group], ["dscl", ".", "-create", group, "PrimaryGroupID", str(uid)],
            ["dscl", ".", "-create", group, "RealName", "Impetus LLM server"],
            ["dscl", ".", "-create", user], ["dscl", ".", "-create", user, "UniqueID", str(uid)],
            ["dscl", ".", "-create", user, "PrimaryGroupID", str(uid)],
            ["dscl", ".", "-create", user, "UserShell", "/usr/bin/false"],
            ["dscl", ".", "-create", user, "NFSHomeDirectory", str(home)],
            ["dscl", ".", "-create", user, "RealName", "Impetus LLM server"],
            ["dscl", ".", "-create", user, "Password", "*"], ["dscl", ".", "-create", user, "IsHidden", "1"]]


def account_removal_commands(manager: str, name: str) -> list[list[str]]:
    if manager == "systemd":
        return [["userdel", name], ["groupdel", name]]  # the group may already be gone with the user
    return [["dscl", ".", "-delete", f"/Users/{name}"], ["dscl", ".", "-delete", f"/Groups/{name}"]]


def _free_macos_id() -> int:
    """A user and group id in macOS' range for role accounts (200-400) that neither uses."""
    taken = set()
    for kind, attribute in (("/Users", "UniqueID"), ("/Groups", "PrimaryGroupID")):
        listed = _run(["dscl", ".", "-list", kind, attribute]).stdout.split()
        taken |= {int(word) for word in listed if word.isdigit()}
    for candidate in range(200, 400):
        if candidate not in taken:
            return candidate
    raise ServiceError("no free id between 200 and 400 for the service account; make one and pass --user")


def ensure_account(layout: Layout, progress=print) -> bool:
    """Make the service account if it does not exist; True if it was made."""
    if _uid(layout.user) is not None:
        return False
    uid = _free_macos_id() if layout.manager == "launchd" else None
    for command in account_commands(layout.manager, layout.user, layout.data_dir, uid):
        _run(command)
    progress(f"made the service account {layout.user} (no login, no password)")
    return True


def remove_account(layout: Layout, name: str, progress=print) -> None:
    first, *rest = account_removal_commands(layout.manager, name)
    _run(first)
    for command in rest:
        _run(command, check=False)
    progress(f"removed the service account {name}")


def give_to_account(account: str, *folders: Path) -> None:
    """The account owns its folders (data: models, Redis, run; logs), all the way down."""
    record = pwd.getpwnam(account)
    for folder in folders:
        for path in (folder, *folder.rglob("*")):
            os.chown(path, record.pw_uid, record.pw_gid, follow_symlinks=False)


def check_reachable(account: str, folder: Path, manager: str | None = None) -> None:
    """Every folder above the data dir must let the account through."""
    uid = _uid(account)
    for parent in reversed(folder.parents):
        status = parent.stat()
        if status.st_uid != uid and not status.st_mode & 0o001:
            raise ServiceError(f"the service account {account!r} cannot enter {parent} (mode "
                               f"{oct(status.st_mode & 0o777)}), which holds the data dir {folder}; "
                               "choose a data dir it can reach, e.g. --data-dir "
                               f"'{SYSTEM_DATA_DIRS[manager or _platform_manager()]}'")


def install(settings, layout: Layout, progress=print, **options) -> list[Path]:
    """Write what changed and (re)start those services; returns the files changed."""
    rendered = render(settings, layout, **options)
    created_dirs, changed = [], []
    made_account = False
    if layout.system and layout.root is None:
        made_account = ensure_account(layout, progress)

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
    if layout.system and layout.root is None:
        check_reachable(layout.user, layout.data_dir, layout.manager)
        give_to_account(layout.user, layout.data_dir, layout.log_dir)
    manifest = _manifest_path(layout)
    previous = json.loads(manifest.read_text()) if manifest.exists() else {}
    record = {
        "manager": layout.manager, "system": layout.system, "services": rendered.services,
        "files": sorted(str(p) for p in rendered.files),
        # Folders the first install made (removed again if empty at uninstall).
        "created_dirs": previous.get("created_dirs") or sorted(set(created_dirs)),
        "account": layout.user if layout.system else None,
        # Uninstall removes the account only if an install made it.
        "created_account": bool(previous.get("created_account") or made_account),
    }
    if previous != record:
        manifest.write_text(json.dumps(record, indent=2) + "\n")
    for path in changed:
        progress(f"wrote {path}")
    if layout.root is None:
        _activate(layout, rendered, changed, progress)
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
            _stop(layout, service)
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
        _run(["systemctl", *_user(layout), "daemon-reload"], check=False)
    if layout.root is None and record.get("created_account") and record.get("account"):
        remove_account(layout, record["account"], progress)
    return removed


def status(layout: Layout) -> list[tuple[str, str]]:
    manifest = _manifest_path(layout)
    if not manifest.exists():
        return []
    states = []
    for service in json.loads(manifest.read_text())["services"]:
        if layout.manager == "launchd":
            result = _run(["launchctl", "print", f"{_domain(layout)}/{service}"], check=False)
            state = next((line.split("=", 1)[1].strip() for line in result.stdout.splitlines()
                          if line.strip().startswith("state =")), "not loaded")
        else:
            result = _run(["systemctl", *_user(layout), "is-active", service], check=False)
            state = result.stdout.strip() or "unknown"
        states.append((service, state))
    return states


# -- the service managers ---------------------------------------------------------


def _run(command: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ServiceError(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()}")
    return result


def _domain(layout: Layout) -> str:
    return "system" if layout.system else f"gui/{os.getuid()}"


def _user(layout: Layout) -> list[str]:
    return [] if layout.system else ["--user"]


def _activate(layout: Layout, rendered: Rendered, changed: list[Path], progress) -> None:
    changed_names = {p.name for p in changed}
    if layout.manager == "launchd":
        for label in rendered.services:
            plist = layout.unit_dir / f"{label}.plist"
            loaded = _run(["launchctl", "print", f"{_domain(layout)}/{label}"], check=False).returncode == 0
            if loaded and plist.name not in changed_names:
                continue
            if loaded:
                _run(["launchctl", "bootout", f"{_domain(layout)}/{label}"], check=False)
            _run(["launchctl", "bootstrap", _domain(layout), str(plist)])
            progress(f"started {label}")
    else:
        _run(["systemctl", *_user(layout), "daemon-reload"])
        for unit in rendered.services:
            _run(["systemctl", *_user(layout), "enable", unit])
            action = "restart" if unit in changed_names else "start"
            _run(["systemctl", *_user(layout), action, unit])
            progress(f"{action}ed {unit}")
        if not layout.system:
            progress("to start at boot without a login: loginctl enable-linger")


def _stop(layout: Layout, service: str) -> None:
    if layout.manager == "launchd":
        _run(["launchctl", "bootout", f"{_domain(layout)}/{service}"], check=False)
    else:
        _run(["systemctl", *_user(layout), "disable", "--now", service], check=False)
