"""`impetus service`: launchd plists and systemd units rendered from deploy/,
installed into a temporary root (no launchctl/systemctl there), idempotent,
and uninstalled without a trace."""

from __future__ import annotations

import hashlib
import os
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

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
    assert env["IMPETUS_REDIS_URL"] == f"unix://{settings.data_dir.resolve()}/redis/redis.sock"
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
                 f"ReadWritePaths={settings.data_dir.resolve()}", "ExecReload=/bin/kill -HUP $MAINPID",
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
    assert first and len(first) == 7  # 3 services, 3 nginx files, log rotation
    before = tree(root)
    _, second = install(settings, root, manager, system=True)
    assert second == [] and tree(root) == before
    # A changed setting rewrites exactly the unit it concerns.
    _, third = install(Settings(data_dir=settings.data_dir, workers=4), root, manager, system=True)
    assert [p.name for p in third] == [
        "com.impetus.server.plist" if manager == "launchd" else "impetus-server.service"]
    removed = services.uninstall(settings, layout, progress=lambda m: None)
    assert len(removed) == 7
    assert list(root.rglob("*")) == []  # not a file, not a folder
    assert services.uninstall(settings, layout, progress=lambda m: None) == []


def test_uninstall_keeps_logs_and_redis_data(settings, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    layout, _ = install(settings, root, "systemd")
    aof = layout.real(settings.data_dir.resolve() / "redis" / "appendonly.aof")
    aof.write_text("keys live here")
    services.uninstall(settings, layout, progress=lambda m: None)
    assert aof.read_text() == "keys live here"
    assert not any(p.suffix == ".service" for p in root.rglob("*"))
