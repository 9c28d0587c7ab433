"""The service account a --system install runs as, and what it can reach.

Decides: how the account is made and removed, which folders it owns, and
whether it can read everything its services run. Must not touch: the unit
files (stack.launchd, stack.systemd) or what they run (stack.services).

A system service runs as `_impetus` (macOS) or `impetus` (Linux), not as the
person who installed it, so the code it runs must be readable by that
account. On a Mac a home folder is drwxr-x--- (group staff): a venv in a
checkout under /Users/NAME gives EACCES, and macOS' privacy protection keeps
launchd jobs out of ~/Documents, ~/Desktop, ~/Downloads, iCloud Drive and
external volumes whatever the modes say. So `check_readable` refuses any
path under a home folder or /Volumes, and any path whose folders or file the
account's permission bits do not let through, and says to install Impetus
where every account can read it (Homebrew, or `pipx install --global`). On
Linux only the permission bits count (there is no privacy protection).
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path

SERVICE_ACCOUNTS = {"launchd": "_impetus", "systemd": "impetus"}
SYSTEM_DATA_DIRS = {"launchd": Path("/Library/Application Support/Impetus"), "systemd": Path("/var/lib/impetus")}
# Where no launchd job may read from on a Mac (privacy protection), besides home folders.
PROTECTED = (Path("/Volumes"),)
HOW_TO_INSTALL = ("install Impetus where every account can read it — `brew install --build-from-source "
                  "packaging/homebrew/impetus.rb`, or `sudo pipx install --global impetus-*.whl` — and run "
                  "`sudo impetus service install --system` from that copy")


class ServiceError(RuntimeError):
    """What an install cannot do, said so that the person knows what to do
    instead (raised by every stack.services room)."""


def uid_of(account: str) -> int | None:
    try:
        return pwd.getpwnam(account).pw_uid
    except KeyError:
        return None


def _run(command: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ServiceError(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()}")
    return result


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


def ensure_account(layout, progress=print) -> bool:
    """Make the service account if it does not exist; True if it was made."""
    if uid_of(layout.user) is not None:
        return False
    uid = _free_macos_id() if layout.manager == "launchd" else None
    for command in account_commands(layout.manager, layout.user, layout.data_dir, uid):
        _run(command)
    progress(f"made the service account {layout.user} (no login, no password)")
    return True


def remove_account(layout, name: str, progress=print) -> None:
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
    uid = uid_of(account)
    for parent in reversed(folder.parents):
        status = parent.stat()
        if status.st_uid != uid and not status.st_mode & 0o001:
            raise ServiceError(f"the service account {account!r} cannot enter {parent} (mode "
                               f"{oct(status.st_mode & 0o777)}), which holds the data dir {folder}; "
                               "choose a data dir it can reach, e.g. --data-dir "
                               f"'{SYSTEM_DATA_DIRS[manager or ('launchd' if sys.platform == 'darwin' else 'systemd')]}'")


# -- can the account read what it runs? -------------------------------------------------


def interpreter(program: str) -> Path | None:
    """The Python a console script runs (its #! line), which the account must read too."""
    try:
        with open(program, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    return Path(first[2:].decode(errors="replace").strip().split()[0]) if first.startswith(b"#!/") else None


def home_folders() -> set[Path]:
    """People's home folders: /Users/* on a Mac (but Shared), and every
    account's home with a login-range id, and the installer's own (under sudo)."""
    homes = {Path(p) for p in Path("/Users").glob("*") if p.name != "Shared"} if Path("/Users").is_dir() else set()
    for record in pwd.getpwall():
        if record.pw_uid == 0 or record.pw_uid >= 500 and record.pw_dir not in ("/", "/nonexistent", "/var/empty"):
            homes.add(Path(record.pw_dir))
    installer = os.environ.get("SUDO_USER")
    if installer and uid_of(installer) is not None:
        homes.add(Path(pwd.getpwnam(installer).pw_dir))
    return {home for home in homes if str(home) not in ("/", "")}


def _allows(status: os.stat_result, uid: int, gids: set[int], bits: int) -> bool:
    """Whether the permission class `uid` falls in grants every bit of `bits` (4 read, 1 search)."""
    if status.st_uid == uid:
        granted = status.st_mode >> 6
    elif status.st_gid in gids:
        granted = status.st_mode >> 3
    else:
        granted = status.st_mode
    return granted & bits == bits


def unreadable(account: str, path: Path, homes: set[Path] | None = None) -> str | None:
    """Why `account` cannot read `path` (a file, or a folder's entries), or None."""
    record = pwd.getpwnam(account)
    gids = {record.pw_gid} | {g.gr_gid for g in grp.getgrall() if account in g.gr_mem}
    path = Path(os.path.abspath(path))
    for forbidden in sorted(homes if homes is not None else home_folders()) + list(PROTECTED):
        if path == forbidden or forbidden in path.parents:
            return f"{path} is under {forbidden}, where a system service cannot read"
    for parent in reversed(path.parents):
        if not _allows(parent.stat(), record.pw_uid, gids, 1):
            return f"{account} cannot enter {parent} (mode {oct(parent.stat().st_mode & 0o777)})"
    status = path.stat()
    if not _allows(status, record.pw_uid, gids, 4 | (1 if path.is_dir() else 0)):
        return f"{account} cannot read {path} (mode {oct(status.st_mode & 0o777)})"
    if path.is_symlink():
        return unreadable(account, path.resolve(), homes)
    return None


def check_readable(account: str, paths: list[Path], homes: set[Path] | None = None) -> None:
    homes = home_folders() if homes is None else homes  # once for all paths (it reads every account)
    problems = [reason for reason in (unreadable(account, p, homes) for p in paths) if reason]
    if problems:
        raise ServiceError(f"the service account {account!r} could not run this copy of Impetus: "
                           + "; ".join(problems) + f". So: {HOW_TO_INSTALL}")
