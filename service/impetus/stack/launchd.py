"""launchd (macOS): the plists, the newsyslog lines, and (re)starting a job so
that it really starts.

Decides: which domain a job goes to, what its plist says, how a job is
replaced, and the newsyslog config. Must not touch: what the services run
(impetus.stack.services decides that) or the accounts (stack.accounts).

Three things launchd does that a naive `bootout; bootstrap` misses:
- `launchctl bootout` returns before the job is gone: launchd sends SIGTERM
  and waits up to the job's ExitTimeOut (75 s for the server, which lets its
  streams finish). A `bootstrap` meanwhile fails with `5: Input/output
  error`. So `replace` waits until `launchctl print` no longer finds the job,
  bounded by the exit timeout, and retries a failed bootstrap until then.
- A per-user agent goes to `gui/UID`, which exists only while that user is
  logged in at the screen; over SSH or on a Mac mini nobody logged into,
  bootstrapping there fails with `125: Domain does not support specified
  action`. Then the agent goes to `user/UID`, and says so in its plist:
  `LimitLoadToSessionType` Background (an agent without it is Aqua, a GUI
  session's, by Apple's TN2083), so a later login at the screen does not
  start a second copy. Only a --system daemon starts at boot with nobody
  logged in at all.
- launchd's default open-file limit is 256 (launchctl limit): nginx holds two
  descriptors a proxied stream and Gunicorn one; every plist raises it.

newsyslog(8) splits its lines on blanks and knows no quoting: a field with a
space (the data dir's `Application Support`) shifts the fields after it and
newsyslog stops parsing, which stops rotation for the whole machine. The
lines name only paths without blanks (nginx's pid file is kept in the log
dir for that reason) and refuse any other.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape

from impetus.share import SERVICES
from impetus.stack.accounts import ServiceError

LABEL_PREFIX = "com.impetus"
# launchd.plist(5): every key a plist of ours may hold, and the resource limits' keys.
PLIST_KEYS = frozenset({
    "Label", "Disabled", "UserName", "GroupName", "InitGroups", "LimitLoadToSessionType", "Program",
    "ProgramArguments", "EnableGlobbing", "EnableTransactions", "EnablePressuredExit", "KeepAlive", "RunAtLoad",
    "RootDirectory", "WorkingDirectory", "EnvironmentVariables", "Umask", "TimeOut", "ExitTimeOut",
    "ThrottleInterval", "WatchPaths", "QueueDirectories", "StartOnMount", "StartInterval",
    "StartCalendarInterval", "StandardInPath", "StandardOutPath", "StandardErrorPath", "Debug",
    "WaitForDebugger", "SoftResourceLimits", "HardResourceLimits", "Nice", "ProcessType", "AbandonProcessGroup",
    "LowPriorityIO", "LowPriorityBackgroundIO", "LaunchOnlyOnce", "MachServices", "Sockets", "LaunchEvents",
    "SessionCreate", "AssociatedBundleIdentifiers"})
RESOURCE_LIMIT_KEYS = frozenset({"Core", "CPU", "Data", "FileSize", "MemoryLock", "NumberOfFiles",
                                 "NumberOfProcesses", "ResidentSetSize", "Stack"})
# Two descriptors for each of nginx's 4096 connections a worker, and room
# for Gunicorn's 1000 and the keepalive pools; within macOS' kern.maxfilesperproc
# (10,240 on the smallest Macs).
OPEN_FILES = 10240
# launchctl's exit statuses while a job is still being torn down: EIO, and "operation in progress".
TRANSIENT = (5, 37)


def label(name: str) -> str:
    return f"{LABEL_PREFIX}.{name}"


def plist(name: str, description: str, arguments: list[str], environment: dict[str, str], data_dir: Path,
          log_dir: Path, exit_timeout: int, run_as: str | None, session: str | None = None) -> str:
    """The plist of one job. `session`: LimitLoadToSessionType, for an agent
    bootstrapped into the user domain ("Background")."""
    lines = []
    if run_as:
        lines += [f"    <key>UserName</key>\n    <string>{escape(run_as)}</string>",
                  f"    <key>GroupName</key>\n    <string>{escape(run_as)}</string>"]
    if session:
        lines.append(f"    <key>LimitLoadToSessionType</key>\n    <string>{escape(session)}</string>")
    return Template((SERVICES / "launchd.plist").read_text()).substitute(
        DESCRIPTION=escape(description), LABEL=label(name), NAME=name, DATA_DIR=escape(str(data_dir)),
        LOG_DIR=escape(str(log_dir)), EXIT_TIMEOUT=str(exit_timeout), OPEN_FILES=str(OPEN_FILES),
        PROGRAM_ARGUMENTS="\n".join(f"        <string>{escape(a)}</string>" for a in arguments),
        ENVIRONMENT="\n".join(f"        <key>{escape(k)}</key>\n        <string>{escape(v)}</string>"
                              for k, v in environment.items()),
        ACCOUNT="".join(line + "\n" for line in lines))


# -- newsyslog ------------------------------------------------------------------------


def newsyslog_conf(log_dir: Path, owner: str, pid_file: Path) -> str:
    """/etc/newsyslog.d/impetus.conf: rotate at 10 MB, keep 5 bzip2'd copies,
    recreate each log owned by the service account (without an owner field
    newsyslog makes it root:wheel, which the account cannot reopen)."""
    rows = [(log_dir / "impetus.log", "JN", None, None)]  # the server reopens it itself (WatchedFileHandler)
    rows += [(log_dir / name, "J", pid_file, "30") for name in ("nginx-access.log", "nginx-error.log")]
    text = (SERVICES / "newsyslog.conf").read_text()
    for path, flags, pid, signal in rows:
        fields = [str(path), f"{owner}:{owner}", "644", "5", "10240", "*", flags]
        fields += [str(pid), signal] if pid else []
        for field in fields:
            if not field or any(c.isspace() for c in field):
                raise ServiceError(f"newsyslog cannot rotate with the path {field!r}: its lines are split on "
                                   "blanks and have no quoting (choose a log dir without spaces)")
        text += " ".join(fields) + "\n"
    return text


# -- launchctl --------------------------------------------------------------------------


@dataclass
class Launchctl:
    """launchctl, as a function of its arguments (a stand-in in the tests),
    with the clock it waits by."""

    program: str = "launchctl"
    sleep: object = time.sleep
    clock: object = time.monotonic

    def __call__(self, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.program, *arguments], capture_output=True, text=True)

    def loaded(self, target: str) -> bool:
        return self("print", target).returncode == 0

    def domain(self, system: bool, uid: int | None = None) -> str:
        """Where a job goes: the system domain for a daemon; for an agent the
        GUI session's domain while one exists, else the user's own."""
        if system:
            return "system"
        uid = os.getuid() if uid is None else uid
        return f"gui/{uid}" if self.loaded(f"gui/{uid}") else f"user/{uid}"

    def remove(self, target: str, timeout: float) -> None:
        """bootout, and wait until the job is gone (launchd gives it its
        ExitTimeOut before SIGKILL; `timeout` should be a little more)."""
        if not self.loaded(target):
            return
        self("bootout", target)
        deadline = self.clock() + timeout
        while self.loaded(target):
            if self.clock() > deadline:
                raise ServiceError(f"{target} was still running {timeout:.0f} s after launchctl bootout")
            self.sleep(0.25)

    def replace(self, domain: str, name: str, plist_path: Path, timeout: float) -> None:
        """Start the job from `plist_path`, removing the one running first."""
        target = f"{domain}/{name}"
        self.remove(target, timeout)
        deadline = self.clock() + timeout
        while True:
            result = self("bootstrap", domain, str(plist_path))
            if result.returncode == 0:
                return
            # 5 (EIO) and 37 (in progress): still being torn down; anything else will not pass by waiting.
            if result.returncode not in TRANSIENT or self.clock() > deadline:
                raise ServiceError(f"launchctl bootstrap {domain} {plist_path} failed: "
                                   f"{(result.stderr or result.stdout).strip()}")
            self.sleep(0.5)

    def state(self, target: str) -> str:
        result = self("print", target)
        return next((line.split("=", 1)[1].strip() for line in result.stdout.splitlines()
                     if line.strip().startswith("state =")), "not loaded")
