"""`impetus service`: launchd plists and systemd units rendered from deploy/,
installed into a temporary root (no launchctl/systemctl there), idempotent,
and uninstalled without a trace."""

from __future__ import annotations

import hashlib
import json
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from impetus.server.process import port_free
from impetus.settings import Settings
from impetus.stack import services


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path / "data", workers=2)


def install(settings, root, manager, system=False, **options):
    layout = services.layout_for(settings, system, manager, root)
    return layout, services.install(settings, layout, progress=lambda m: None, **options)


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("system", [False, True])
def test_launchd_plists_hold_what_launchd_needs(settings, tmp_path, system):
    root = tmp_path / "root"
    layout, _ = install(settings, root, "launchd", system)
    plists = {p.name: plistlib.loads(p.read_bytes()) for p in root.rglob("*.plist")}
    assert set(plists) == {"com.impetus.redis.plist", "com.impetus.server.plist", "com.impetus.nginx.plist"}
    expected_dir = Path("/Library/LaunchDaemons") if system else Path.home() / "Library/LaunchAgents"
    assert all((root / expected_dir.relative_to("/") / name).exists() for name in plists)
    for name, plist in plists.items():
        assert plist["Label"] == name.removesuffix(".plist")
        program = plist["ProgramArguments"][0]
        assert Path(program).is_absolute() and os.access(program, os.X_OK), program
        assert plist["KeepAlive"] is True and plist["RunAtLoad"] is True and plist["ThrottleInterval"] == 10
        assert plist["ExitTimeOut"] > settings.graceful_timeout  # streams finish before SIGKILL
        assert Path(plist["StandardErrorPath"]).parent == layout.log_dir
        assert Path(plist["WorkingDirectory"]) == settings.data_dir.resolve()
        assert ("UserName" in plist) == system
    server = plists["com.impetus.server.plist"]
    env = server["EnvironmentVariables"]
    assert server["ProgramArguments"][1:] == ["serve"]
    assert env["IMPETUS_WORKERS"] == "2" and env["IMPETUS_REQUIRE_API_KEYS"] == "true"
    # The server finds the Redis the redis service runs, under its data dir.
    assert "IMPETUS_REDIS_URL" not in env
    socket = plists["com.impetus.redis.plist"]["ProgramArguments"]
    assert Settings(data_dir=env["IMPETUS_DATA_DIR"]).effective_redis_url == \
        f"unix://{socket[socket.index('--unixsocket') + 1]}"
    assert Path(env["IMPETUS_LOG_FILE"]).parent == layout.log_dir
    nginx = plists["com.impetus.nginx.plist"]["ProgramArguments"]
    assert nginx[-2:] == ["-g", "daemon off;"] and (root / Path(nginx[2]).relative_to("/")).exists()
    # The rotation config goes to /etc only for a system install.
    assert (root / "etc/newsyslog.d/impetus.conf").exists() == system


@pytest.mark.parametrize("system", [False, True])
def test_systemd_units_are_accepted_by_systemd(settings, tmp_path, system):
    root = tmp_path / "root"
    layout, _ = install(settings, root, "systemd", system)
    units = sorted(root.rglob("*.service"))
    assert [u.name for u in units] == ["impetus-nginx.service", "impetus-redis.service", "impetus-server.service"]
    server = (root / layout.unit_dir.relative_to("/") / "impetus-server.service").read_text()
    for line in ("Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict", "KillMode=mixed",
                 # quoted: the data dir's path holds a space (conftest), and the setting is a list split on blanks
                 f'ReadWritePaths="{settings.data_dir.resolve()}"', "ExecReload=/bin/kill -HUP $MAINPID",
                 f"WantedBy={'multi-user.target' if system else 'default.target'}"):
        assert line in server, line
    assert ("User=" in server) == system
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)],
                            capture_output=True, text=True, cwd=units[0].parent)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@pytest.mark.parametrize("manager", ["launchd", "systemd"])
def test_installing_twice_changes_nothing_and_uninstall_leaves_nothing(settings, tmp_path, manager):
    root = tmp_path / "root"
    root.mkdir()
    layout, first = install(settings, root, manager, system=True)
    assert first and len(first) == 8  # 3 services, 4 nginx files, log rotation
    before = tree(root)
    _, second = install(settings, root, manager, system=True)
    assert second == [] and tree(root) == before
    # A changed setting rewrites exactly the unit it concerns.
    _, third = install(Settings(data_dir=settings.data_dir, workers=4), root, manager, system=True)
    assert [p.name for p in third] == [
        "com.impetus.server.plist" if manager == "launchd" else "impetus-server.service"]
    removed = services.uninstall(settings, layout, progress=lambda m: None)
    assert len(removed) == 8
    assert list(root.rglob("*")) == []  # not a file, not a folder
    assert services.uninstall(settings, layout, progress=lambda m: None) == []


@pytest.mark.parametrize("manager", ["launchd", "systemd"])
def test_a_joined_host_installs_only_its_workers_and_keeps_the_password_out_of_the_unit(settings, tmp_path,
                                                                                        manager):
    root = tmp_path / "root"
    join = "redis://:s3cret-pw@10.0.0.2:6390"
    layout, written = install(settings, root, manager, system=True, public_host="0.0.0.0", join=join,
                              advertise="http://mac-2.local:8081")
    units = [p for p in written if p.suffix in (".plist", ".service")]
    assert [p.name for p in units] == ["com.impetus.server.plist" if manager == "launchd"
                                       else "impetus-server.service"]
    unit = layout.real(units[0]).read_text()
    assert "s3cret-pw" not in unit
    join_file = layout.real(settings.data_dir.resolve() / "cluster" / "join.url")
    assert join_file.read_text().strip() == join and oct(join_file.stat().st_mode & 0o777) == "0o600"
    if manager == "launchd":
        arguments = plistlib.loads(unit.encode())["ProgramArguments"]
    else:
        # systemd's quoting, as a shell reads it (the path holds a space)
        arguments = shlex.split(next(line for line in unit.splitlines() if line.startswith("ExecStart=")))
    assert arguments[1:] == ["serve", "--join-file", str(settings.data_dir.resolve() / "cluster" / "join.url"),
                             "--host", "0.0.0.0", "--port", str(settings.port),
                             "--advertise", "http://mac-2.local:8081"]
    # What the unit runs reads the file as --join would take the URL.
    from impetus.cli.serve import read_join_file

    assert read_join_file(str(join_file)) == join
    services.uninstall(settings, layout, progress=lambda m: None)
    assert not join_file.exists()


def test_uninstall_keeps_logs_and_redis_data(settings, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    layout, _ = install(settings, root, "systemd")
    aof = layout.real(settings.data_dir.resolve() / "redis" / "appendonly.aof")
    aof.write_text("keys live here")
    services.uninstall(settings, layout, progress=lambda m: None)
    assert aof.read_text() == "keys live here"
    assert not any(p.suffix == ".service" for p in root.rglob("*"))


def _units(root: Path, manager: str) -> dict[str, str]:
    suffix = ".plist" if manager == "launchd" else ".service"
    return {p.name.removesuffix(suffix).split(".")[-1].removeprefix("impetus-"): p.read_text()
            for p in root.rglob(f"*{suffix}")}


def _runs_as(manager: str, text: str) -> str | None:
    if manager == "launchd":
        plist = plistlib.loads(text.encode())
        assert plist.get("GroupName") == plist.get("UserName")
        return plist.get("UserName")
    users = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("User=")]
    groups = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("Group=")]
    assert users == groups
    return users[0] if users else None


@pytest.mark.parametrize("manager", ["launchd", "systemd"])
@pytest.mark.parametrize("system", [False, True])
@pytest.mark.parametrize("user", [None, "llm-svc"])
@pytest.mark.parametrize("port", [80, 8080])
def test_services_never_run_as_root(settings, tmp_path, manager, system, user, port):
    root = tmp_path / "root"
    if user and not system:
        with pytest.raises(services.ServiceError, match="--user is for a system install"):
            services.layout_for(settings, system, manager, root, user)
        return
    layout = services.layout_for(settings, system, manager, root, user)
    services.install(settings, layout, progress=lambda m: None, public_port=port)
    units = _units(root, manager)
    conf = next(root.rglob("nginx.conf")).read_text()
    if not system:  # a per-user install runs as the user who installed it
        assert {name: _runs_as(manager, text) for name, text in units.items()} == dict.fromkeys(units)
        return
    account = user or {"launchd": "_impetus", "systemd": "impetus"}[manager]
    assert layout.user == account
    assert _runs_as(manager, units["redis"]) == account
    assert _runs_as(manager, units["server"]) == account
    if port < 1024:  # only root binds it: nginx starts as root, its workers drop to the account
        assert _runs_as(manager, units["nginx"]) is None
        assert conf.startswith(f"user {account};\n")
    else:
        assert _runs_as(manager, units["nginx"]) == account
        assert not conf.startswith("user ")
    assert json.loads((layout.real(layout.data_dir) / "services.json").read_text())["account"] == account
    assert "root" not in {_runs_as(manager, text) for text in units.values()}


@pytest.mark.parametrize("manager", ["launchd", "systemd"])
def test_root_is_refused_and_a_system_install_defaults_to_a_system_data_dir(tmp_path, manager):
    with pytest.raises(services.ServiceError, match="must not run as root"):
        services.layout_for(Settings(data_dir=tmp_path), True, manager, tmp_path / "root", "root")
    layout = services.layout_for(Settings(), True, manager, tmp_path / "root")
    assert layout.data_dir == {"launchd": Path("/Library/Application Support/Impetus"),
                               "systemd": Path("/var/lib/impetus")}[manager]
    made = services.account_commands(manager, layout.user, layout.data_dir, uid=250)
    if manager == "launchd":
        assert ["dscl", ".", "-create", "/Users/_impetus", "UniqueID", "250"] in made
        assert ["dscl", ".", "-create", "/Users/_impetus", "UserShell", "/usr/bin/false"] in made
        assert ["dscl", ".", "-create", "/Groups/_impetus", "PrimaryGroupID", "250"] in made
    else:
        assert made[0][:3] == ["useradd", "--system", "--user-group"] and made[0][-1] == "impetus"


needs_root_linux = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"),
    reason="making a system account needs root and useradd (Linux)")


@needs_root_linux
def test_the_account_is_made_owns_the_data_and_runs_redis_and_nginx_workers(tmp_path):
    """systemd is not PID 1 here, so each unit's ExecStart is run as its User=
    with runuser, as systemd would run it."""
    import pwd
    import time


    name = f"imp-t{os.getpid() % 100000}"
    data = Path(f"/tmp/{name}-data")  # /tmp/pytest-of-root is 0700: the account could not enter it
    shutil.rmtree(data, ignore_errors=True)
    settings = Settings(data_dir=data)
    layout = services.layout_for(settings, True, "systemd", tmp_path / "root", name)
    # A data dir the account cannot reach is refused with a way out.
    hidden = tmp_path / "hidden" / "data"
    hidden.mkdir(parents=True)
    (tmp_path / "hidden").chmod(0o700)
    assert services.ensure_account(layout, progress=lambda m: None) is True
    processes = []
    try:
        record = pwd.getpwnam(name)
        assert record.pw_uid != 0 and record.pw_shell.endswith("nologin") and record.pw_dir == str(data)
        assert services.ensure_account(layout, progress=lambda m: None) is False  # idempotent
        with pytest.raises(services.ServiceError, match="cannot enter"):
            services.check_reachable(name, hidden)
        port = next(p for p in range(900, 1000) if port_free(p))
        services.install(settings, layout, progress=lambda m: None, public_port=port)
        for folder in (data, data / "redis", data / "run" / "nginx", data / "logs"):
            layout.real(folder).mkdir(parents=True, exist_ok=True)
        # install() with --root writes below root: the real data dir is given to the account as install does.
        shutil.copytree(layout.real(data), data, dirs_exist_ok=True)
        services.check_reachable(name, data)
        services.give_to_account(name, data)
        assert all(p.stat().st_uid == record.pw_uid for p in (data, *data.rglob("*")))
        units = _units(tmp_path / "root", "systemd")
        for unit in ("redis", "nginx"):
            text = units[unit]
            command = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart="))
            run_as = _runs_as("systemd", text)
            argv = ["bash", "-c", f"exec {command}"]
            if run_as:
                argv = ["runuser", "-u", run_as, "--", *argv]
            processes.append(subprocess.Popen(argv, cwd=data, start_new_session=True,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        deadline = time.monotonic() + 20
        import redis

        client = redis.Redis(unix_socket_path=str(data / "redis" / "redis.sock"))
        while True:
            try:
                assert client.ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline, processes[0].stderr.read1().decode()
                time.sleep(0.2)
        owners = _owners("redis-server", str(data))
        assert owners == {name}, owners
        # This nginx's own processes (`exec`: the master is the one started; other
        # nginx run on this machine too, a test's beside on another pytest worker).
        master = str(processes[1].pid)
        while _users("--ppid", master) != {name}:
            assert time.monotonic() < deadline, (_users("--ppid", master), processes[1].poll())
            time.sleep(0.2)
        assert _users("-p", master) == {"root"}  # it alone binds port < 1024
    finally:
        for process in processes:
            os.killpg(process.pid, 15)
            process.wait(10)
        services.remove_account(layout, name, progress=lambda m: None)
        shutil.rmtree(data, ignore_errors=True)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)




def _users(*select: str) -> set[str]:
    """The users of the processes that `ps` selects (`-p PID`, `--ppid PID`)."""
    return set(subprocess.run(["ps", "-o", "user:32=", *select], capture_output=True, text=True).stdout.split())


def _owners(pattern: str, also: str) -> set[str]:
    """The users of the processes whose command starts with `pattern` (a program
    or a process title) and whose command line has `also`."""
    listed = subprocess.run(["ps", "-ww", "-eo", "user:32,args"], capture_output=True, text=True).stdout
    owners = set()
    for line in listed.splitlines()[1:]:
        user, args = line.split(None, 1)
        if (args.startswith(pattern) or args.split()[0].endswith("/" + pattern)) and also in args:
            owners.add(user)
    return owners
