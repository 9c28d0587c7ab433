"""systemd (Linux): the units, and starting them.

Decides: what a unit file says and how a path is written into one; how units
are enabled and (re)started. Must not touch: what the services run
(impetus.stack.services) or the accounts (stack.accounts).

systemd splits ExecStart= and ReadWritePaths= on blanks, and reads `%` as a
specifier (and `$` in a command line as a variable): a data dir such as `/srv/Impetus Data` has
to be quoted, and those two doubled (systemd.syntax(7), systemd.unit(5)
"Specifiers", systemd.service(5) "Command lines"). `quoted` is that rule.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from string import Template

from impetus.share import SERVICES
from impetus.stack.accounts import ServiceError


def unit_name(name: str) -> str:
    return f"impetus-{name}.service"


def quoted(value: str, word: bool = True, command: bool = False) -> str:
    """`value` for a unit file: specifiers escaped (and in a `command` line
    variables), and as one word (double-quoted when it must be) where the
    setting splits on blanks."""
    value = value.replace("%", "%%")
    if command:
        value = value.replace("$", "$$")
    if not word or (value and all(c.isalnum() or c in "/._-:=@+," for c in value)):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit(description: str, arguments: list[str], environment: dict[str, str], data_dir: Path, after: list[str],
         run_as: str | None, exit_timeout: int, system: bool) -> str:
    return Template((SERVICES / "systemd.service").read_text()).substitute(
        DESCRIPTION=quoted(description, word=False), EXIT_TIMEOUT=str(exit_timeout),
        WORKING_DIRECTORY=quoted(str(data_dir), word=False), READ_WRITE_PATHS=quoted(str(data_dir)),
        AFTER=" ".join(unit_name(a) for a in after),
        EXEC_START=" ".join(quoted(a, command=True) for a in arguments),
        ENVIRONMENT="\n".join(f"Environment={quoted(f'{k}={v}')}" for k, v in environment.items()),
        USER_NAME=f"User={run_as}\nGroup={run_as}\n" if run_as else "",
        WANTED_BY="multi-user.target" if system else "default.target", MAINPID="$MAINPID")


def logrotate_conf(log_dir: Path) -> str:
    path = str(log_dir).replace("\\", "\\\\").replace('"', '\\"')
    return Template((SERVICES / "logrotate.conf").read_text()).substitute(LOG_DIR=path)


def systemctl(system: bool, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["systemctl", *([] if system else ["--user"]), *arguments], capture_output=True,
                            text=True)
    if check and result.returncode != 0:
        raise ServiceError(f"systemctl {' '.join(arguments)} failed: {(result.stderr or result.stdout).strip()}")
    return result


def activate(system: bool, units: list[str], changed: set[str], progress) -> None:
    systemctl(system, "daemon-reload")
    for name in units:
        systemctl(system, "enable", name)
        action = "restart" if name in changed else "start"
        systemctl(system, action, name)
        progress(f"{action}ed {name}")
    if not system:
        progress("to start at boot without a login: loginctl enable-linger")
