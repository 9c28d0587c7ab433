"""Children that die with their supervisor, and what an older one left behind.

Why: `impetus up` and `impetus serve --join` start redis-server, Gunicorn and
nginx in sessions of their own (so Ctrl-C in the terminal reaches only the
supervisor, which stops them in order). A `kill -9` of the supervisor (an OOM
kill, launchd or systemd restarting it) left them serving, unmanaged: the
joined host kept heartbeating into the gateway, and the next start found its
ports taken.

Two guards:
1. A lifeline for every child. On Linux the kernel's PR_SET_PDEATHSIG sends
   the child a signal when its parent dies. Elsewhere (macOS has no such
   call) the child runs under `python -m impetus.stack.lifeline`, which
   holds the read end of a pipe whose write end only the supervisor has:
   the pipe reads EOF when the supervisor is gone, however it died, and the
   wrapper signals its child (and forwards every other signal to it).
   Measured on the 2-core VM under traffic: redis, Gunicorn and nginx gone
   within ~1 s of `kill -9` of `up`.
2. A record: each start writes run/<name>.json (the supervisor's pid, and
   each child's pid and start time) while the supervisor holds
   run/<name>.lock. A new supervisor whose lock is free ends what the record
   names that still runs (the same pid *and* start time, never a process that
   reused the pid) before it starts anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGWINCH)
_pipe: tuple[int, int] | None = None  # this supervisor's lifeline: (read end, write end), never written


def use_pipe() -> bool:
    return sys.platform != "linux" or os.environ.get("IMPETUS_LIFELINE") == "pipe"


def _die_with_parent(sig: int, parent: int):
    def preexec() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)
    return preexec


def spawn(command: list[str], death_signal: int, **popen) -> subprocess.Popen:
    """`command` in a session of its own, ended by `death_signal` when this
    process dies. Signals sent to the result reach the program."""
    global _pipe
    if not use_pipe():
        return subprocess.Popen(command, start_new_session=True,
                                preexec_fn=_die_with_parent(death_signal, os.getpid()), **popen)
    if _pipe is None:
        _pipe = os.pipe()  # both ends close-on-exec: no child but the wrappers (pass_fds) holds either
    read_end = _pipe[0]
    wrapper = [sys.executable, "-m", "impetus.stack.lifeline", str(read_end), str(int(death_signal)), "--", *command]
    return subprocess.Popen(wrapper, start_new_session=True, pass_fds=(read_end,), **popen)


def _wrapper(argv: list[str]) -> int:
    """Run argv's program; signal it when the lifeline reads EOF."""
    read_end, death_signal, command = int(argv[0]), int(argv[1]), argv[3:]
    child = subprocess.Popen(command)  # in the wrapper's process group; without the lifeline's fd
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    while child.poll() is None:
        try:
            ready, _, _ = select.select([read_end], [], [], 1.0)
        except InterruptedError:
            continue
        if ready and not os.read(read_end, 1):
            child.send_signal(death_signal)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            break
    code = child.wait()
    if code < 0:  # died of a signal: so does the wrapper, and the supervisor sees the same
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def process_started(pid: int) -> str | None:
    """When `pid` started (as `ps` tells it), None if it does not run (or
    there is no `ps`: then nothing is ever ended by its record)."""
    try:
        found = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True)
    except OSError:
        return None
    return found.stdout.strip() or None


class Record:
    """run/<name>.lock (held while the supervisor runs) and run/<name>.json."""

    def __init__(self, run_dir: Path, name: str):
        self.path = run_dir / f"{name}.json"
        self.lock_path = run_dir / f"{name}.lock"
        self.children: dict[str, dict] = {}
        self._lock = None

    def claim(self) -> str | None:
        """Take the lock; the holder's description when another supervisor has it."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.lock_path, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "?"
            self._lock.close()
            self._lock = None
            return holder
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        return None

    def clean(self, log) -> list[int]:
        """End what an older supervisor of this record left running; their pids."""
        try:
            old = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        ended = []
        for name, child in old.get("children", {}).items():
            pid = child.get("pid")
            if pid and child.get("started") and process_started(pid) == child["started"]:
                log(f"ending {name} (pid {pid}) left running by an earlier supervisor (pid {old.get('supervisor')})")
                _end_group(pid)
                ended.append(pid)
        self.path.unlink(missing_ok=True)
        return ended

    def started(self, name: str, process: subprocess.Popen) -> None:
        self.children[name] = {"pid": process.pid, "started": process_started(process.pid)}
        staging = self.path.with_suffix(".staging")
        staging.write_text(json.dumps({"supervisor": os.getpid(), "children": self.children}))
        staging.replace(self.path)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _end_group(pid: int, timeout: float = 10) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # a child of this process: reaped
                    return
            except ChildProcessError:
                pass
            try:
                os.killpg(pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(_wrapper(sys.argv[1:]))
