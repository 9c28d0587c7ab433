"""The Mac's service manager, as far as Linux can check it: plists against
launchd.plist(5), the activation sequence against a scripted launchctl that
behaves as launchctl(1) and the cited reports say (tests/stack/fake_launchctl.py),
newsyslog lines by newsyslog's own field rules, and what a --system service
account can read."""

from __future__ import annotations

import dataclasses
import json
import os
import plistlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from impetus.settings import Settings, redis_socket
from impetus.stack import accounts, launchd, nginx, services

FAKE = Path(__file__).with_name("fake_launchctl.py")
PROCESS_TYPES = {"Background", "Standard", "Adaptive", "Interactive"}
SESSION_TYPES = {"Aqua", "Background", "LoginWindow", "StandardIO", "System"}


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path / "Application Support" / "Impetus", workers=1)


def rendered_plists(settings, tmp_path, system: bool, domain: str | None = None):
    layout = services.layout_for(settings, system, "launchd", tmp_path / "root", domain=domain)
    services.install(settings, layout, progress=lambda m: None)
    return layout, {p.name: plistlib.loads(p.read_bytes()) for p in (tmp_path / "root").rglob("*.plist")}


@pytest.mark.parametrize("system", [False, True])
def test_plists_hold_only_launchds_keys_and_raise_the_open_file_limit(settings, tmp_path, system):
    layout, plists = rendered_plists(settings, tmp_path, system)
    assert len(plists) == 3
    for name, job in plists.items():
        assert set(job) <= launchd.PLIST_KEYS, set(job) - launchd.PLIST_KEYS
        assert job["ProcessType"] in PROCESS_TYPES
        for limits in ("SoftResourceLimits", "HardResourceLimits"):
            assert set(job[limits]) <= launchd.RESOURCE_LIMIT_KEYS
            # nginx: 4096 connections a worker, two descriptors each (launchd's default is 256)
            assert job[limits]["NumberOfFiles"] >= 2 * 4096, name
        assert job["SoftResourceLimits"]["NumberOfFiles"] <= job["HardResourceLimits"]["NumberOfFiles"]
        assert all(isinstance(v, str) for v in job["EnvironmentVariables"].values())
        path = job["EnvironmentVariables"]["PATH"].split(":")
        assert "/usr/sbin" in path  # sysctl, for the CPU's name
        # The data dir's space survives: one argument, one path.
        assert job["WorkingDirectory"] == str(layout.data_dir) and " " in job["WorkingDirectory"]
        assert "LimitLoadToSessionType" not in job  # a GUI session's agent, or a daemon
    redis = plists["com.impetus.redis.plist"]["ProgramArguments"]
    assert redis[redis.index("--unixsocket") + 1] == str(redis_socket(layout.data_dir))


def test_an_agent_for_the_user_domain_is_a_background_one(settings, tmp_path):
    _, plists = rendered_plists(settings, tmp_path, False, domain=f"user/{os.getuid()}")
    assert {job["LimitLoadToSessionType"] for job in plists.values()} == {"Background"} <= SESSION_TYPES


class Fake(launchd.Launchctl):
    def __init__(self, state: Path):
        super().__init__(program=str(FAKE))
        self.state = state

    def log(self) -> list[list[str]]:
        return json.loads(self.state.read_text())["log"]

    def jobs(self) -> dict:
        return json.loads(self.state.read_text())["jobs"]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    state = tmp_path / "launchd.json"
    monkeypatch.setenv("FAKE_LAUNCHD_STATE", str(state))
    return Fake(state)


def activate(settings, layout, fake, changed=None, old_domain=None):
    rendered = services.render(settings, layout)
    for path, text in rendered.files.items():
        layout.real(path).parent.mkdir(parents=True, exist_ok=True)
        layout.real(path).write_text(text)
    layout = dataclasses.replace(layout, unit_dir=layout.real(layout.unit_dir))  # where the stand-in reads them
    lines = []
    services._activate(settings, layout, rendered, list(rendered.files) if changed is None else changed,
                       old_domain, lines.append, launchctl=fake)
    return lines


def test_a_reinstall_waits_for_the_draining_job_before_bootstrapping(settings, tmp_path, fake, monkeypatch):
    gui = f"gui/{os.getuid()}"
    assert fake.domain(False) == gui
    layout = services.layout_for(settings, False, "launchd", tmp_path / "root", domain=gui)
    activate(settings, layout, fake)
    assert set(fake.jobs()) == {f"{gui}/com.impetus.{name}" for name in ("redis", "server", "nginx")}

    # The stand-in is faithful: bootstrap right after bootout fails with 5 while the job drains.
    monkeypatch.setenv("FAKE_LAUNCHD_DRAIN_S", "1.5")
    plist = str(layout.real(layout.unit_dir) / "com.impetus.server.plist")
    assert fake("bootout", f"{gui}/com.impetus.server").returncode == 0
    naive = fake("bootstrap", gui, plist)
    assert naive.returncode == 5 and "Input/output error" in naive.stderr
    time.sleep(1.6)
    assert fake("bootstrap", gui, plist).returncode == 0

    # The server's plist changed: bootout, wait until print no longer finds it, then bootstrap.
    started = time.monotonic()
    lines = activate(settings, layout, fake, changed=[layout.unit_dir / "com.impetus.server.plist"])
    assert time.monotonic() - started >= 1.4
    assert lines == [f"started com.impetus.server in {gui}"]
    log = fake.log()
    out = len(log) - 1 - log[::-1].index(["bootout", f"{gui}/com.impetus.server"])
    after = log[out + 1:]
    server = [call for call in after if call[-1].endswith("com.impetus.server") or call[-1] == plist]
    assert server[-1] == ["bootstrap", gui, plist]
    assert server[:-1] and set(map(tuple, server[:-1])) == {("print", f"{gui}/com.impetus.server")}
    assert sum(1 for call in after if call[0] == "bootstrap") == 1  # no failed attempt: it waited
    assert "started" in fake.jobs()[f"{gui}/com.impetus.server"]


def test_a_job_that_does_not_go_within_its_exit_timeout_is_an_error(settings, tmp_path, fake, monkeypatch):
    gui = f"gui/{os.getuid()}"
    layout = services.layout_for(settings, False, "launchd", tmp_path / "root", domain=gui)
    activate(settings, layout, fake)
    monkeypatch.setenv("FAKE_LAUNCHD_DRAIN_S", "30")
    with pytest.raises(services.ServiceError, match="still running 1 s after launchctl bootout"):
        fake.remove(f"{gui}/com.impetus.server", timeout=1)
    # A refusal that waiting does not mend is said at once, not after the exit timeout.
    broken = tmp_path / "broken.plist"
    broken.write_bytes(plistlib.dumps({"Label": "com.impetus.broken", "ProgramArguments": ["/bin/true"]}))
    monkeypatch.setenv("FAKE_LAUNCHD_NO_GUI", "1")
    started = time.monotonic()
    with pytest.raises(services.ServiceError, match="125: Domain does not support"):
        fake.replace(gui, "com.impetus.broken", broken, timeout=30)
    assert time.monotonic() - started < 5


def test_over_ssh_with_nobody_at_the_screen_agents_go_to_the_user_domain(settings, tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_LAUNCHD_NO_GUI", "1")
    user = f"user/{os.getuid()}"
    assert fake.domain(False) == user
    assert fake.domain(True) == "system"
    # The old way fails there: a gui/ bootstrap says 125.
    layout = services.layout_for(settings, False, "launchd", tmp_path / "root", domain=user)
    lines = activate(settings, layout, fake)
    assert set(fake.jobs()) == {f"{user}/com.impetus.{name}" for name in ("redis", "server", "nginx")}
    assert any("--system" in line for line in lines)
    gui = fake("bootstrap", f"gui/{os.getuid()}", str(layout.real(layout.unit_dir) / "com.impetus.redis.plist"))
    assert gui.returncode == 125
    # Someone logs in at the screen and installs again: the jobs move, none is left behind.
    monkeypatch.delenv("FAKE_LAUNCHD_NO_GUI")
    gui_layout = services.layout_for(settings, False, "launchd", tmp_path / "root", domain=f"gui/{os.getuid()}")
    activate(settings, gui_layout, fake, old_domain=user)
    assert set(fake.jobs()) == {f"gui/{os.getuid()}/com.impetus.{name}" for name in ("redis", "server", "nginx")}


def newsyslog_fields(line: str) -> dict:
    """One newsyslog.conf(5) line, read as newsyslog reads it: split on blanks,
    no quoting; owner:group optional (it holds ':'), then mode, count, size,
    when, flags, and an optional pid file (it starts with '/') and signal."""
    words = line.split()
    entry = {"path": words.pop(0)}
    if ":" in words[0]:
        entry["owner"], entry["group"] = words.pop(0).split(":")
    entry["mode"], entry["count"], entry["size"], entry["when"] = words[:4]
    rest = words[4:]
    if rest and not rest[0].startswith("/"):
        entry["flags"] = rest.pop(0)
    if rest:
        entry["pid_file"] = rest.pop(0)
    if rest:
        entry["signal"] = rest.pop(0)
    assert not rest, line
    return entry


def test_newsyslog_lines_name_the_owner_and_a_pid_file_without_blanks(tmp_path):
    settings = Settings(data_dir=tmp_path / "Application Support" / "Impetus")
    layout = services.layout_for(settings, True, "launchd", tmp_path / "root")
    services.install(settings, layout, progress=lambda m: None)
    conf = (tmp_path / "root" / "etc/newsyslog.d/impetus.conf").read_text()
    entries = [newsyslog_fields(line) for line in conf.splitlines() if line.strip() and not line.startswith("#")]
    assert [Path(e["path"]).name for e in entries] == ["impetus.log", "nginx-access.log", "nginx-error.log"]
    nginx_conf = (tmp_path / "root" / layout.data_dir.relative_to("/") / "run/nginx/nginx.conf").read_text()
    for entry in entries:
        assert Path(entry["path"]).parent == layout.log_dir == Path("/Library/Logs/Impetus")
        assert (entry["owner"], entry["group"]) == ("_impetus", "_impetus")
        assert (entry["mode"], entry["count"], entry["size"], entry["when"]) == ("644", "5", "10240", "*")
        if entry["path"].endswith("impetus.log"):
            assert entry["flags"] == "JN" and "pid_file" not in entry  # the server reopens its log itself
        else:
            assert entry["flags"] == "J" and entry["signal"] == "30"  # SIGUSR1: nginx reopens its logs
            assert f'pid "{entry["pid_file"]}";' in nginx_conf
    with pytest.raises(services.ServiceError, match="no quoting"):
        launchd.newsyslog_conf(Path("/Users/a b/Library/Logs/Impetus"), "_impetus", Path("/x/nginx.pid"))


def test_nginx_refuses_a_path_it_would_read_a_variable_in():
    assert nginx.quoted('/a b/"c"') == '/a b/\\"c\\"'
    with pytest.raises(ValueError, match="nginx cannot be given"):
        nginx.quoted("/Users/$HOME/x")


@pytest.fixture
def tree():
    """A folder every account may enter (not under pytest's 0700 temp dir)."""
    folder = Path(tempfile.mkdtemp(prefix="impetus-reads-"))
    folder.chmod(0o755)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)])


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="needs root to make files of another mode")
def test_a_system_account_may_not_run_code_from_a_home_folder(tree):
    account = "nobody"
    program = tree / "opt" / "impetus" / "bin" / "impetus"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    for folder in (tree / "opt", tree / "opt/impetus", program.parent):
        folder.chmod(0o755)
    assert accounts.unreadable(account, program, homes=set()) is None
    # A Mac's home folder: drwxr-x--- (group staff), the account is not in it.
    home = tree / "Users" / "ann"
    checkout = home / "src" / "impetus" / ".venv" / "bin" / "impetus"
    checkout.parent.mkdir(parents=True)
    checkout.write_text("#!/bin/sh\n")
    (tree / "Users").chmod(0o755)
    home.chmod(0o750)
    assert "cannot enter" in accounts.unreadable(account, checkout, homes=set())
    # Under a home folder it is refused whatever the modes say (macOS' privacy protection).
    home.chmod(0o755)
    for folder in checkout.parents:
        if tree in folder.parents:
            folder.chmod(0o755)
    assert "where a system service cannot read" in accounts.unreadable(account, checkout, homes={home})
    private = tree / "opt" / "impetus" / "secret"
    private.write_text("x")
    private.chmod(0o600)
    assert "cannot read" in accounts.unreadable(account, private, homes=set())
    with pytest.raises(services.ServiceError, match="brew install"):
        accounts.check_readable(account, [program, checkout], homes={home})


def test_a_system_install_lists_what_its_account_must_read(tmp_path):
    settings = Settings(data_dir=tmp_path / "Impetus")
    layout = services.layout_for(settings, True, "launchd", tmp_path / "root")
    rendered = services.render(settings, layout)
    programs = {Path(plistlib.loads(text.encode())["ProgramArguments"][0])
                for path, text in rendered.files.items() if path.suffix == ".plist"}
    assert programs <= rendered.reads and len(programs) == 3
    assert nginx.DASHBOARD in rendered.reads and nginx.DASHBOARD.parent.parent in rendered.reads  # the package
    # The console script's interpreter too (a venv's python is a link into where Python lives).
    assert accounts.interpreter(str(Path(sys.executable).parent / "impetus")) in rendered.reads


def test_a_homebrew_copy_is_run_by_its_opt_link_which_upgrades_keep(tmp_path):
    keg = tmp_path / "homebrew" / "Cellar" / "impetus" / "0.1.0" / "libexec" / "bin" / "impetus"
    assert services.stable_path(str(keg)) == str(keg)  # no opt link: as it is
    keg.parent.mkdir(parents=True)
    (tmp_path / "homebrew" / "opt").mkdir(parents=True)
    (tmp_path / "homebrew" / "opt" / "impetus").symlink_to(tmp_path / "homebrew" / "Cellar" / "impetus" / "0.1.0")
    assert services.stable_path(str(keg)) == str(tmp_path / "homebrew" / "opt" / "impetus" / "libexec" / "bin"
                                                 / "impetus")
    assert services.stable_path("/opt/homebrew/bin/impetus") == "/opt/homebrew/bin/impetus"
