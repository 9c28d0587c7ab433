"""Children that die with their supervisor (both lifelines: Linux's
PR_SET_PDEATHSIG, and the pipe that macOS uses, run here too), and a new
supervisor ending what a killed one left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from impetus.stack.lifeline import Record

SUPERVISOR = """
import signal, sys, time
from impetus.stack import lifeline
child = lifeline.spawn([sys.executable, "-c", "import time; time.sleep(300)"], signal.SIGTERM)
print(child.pid, flush=True)
time.sleep(300)
"""


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().split(") ")[1].startswith("Z"):
                return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("lifeline", ["pdeathsig", "pipe"])
def test_a_child_dies_with_its_supervisor_killed_with_9(lifeline):
    env = {**os.environ, "IMPETUS_LIFELINE": lifeline}
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR], stdout=subprocess.PIPE, text=True, env=env)
    child = int(supervisor.stdout.readline())
    try:
        assert not _gone(child, 0.3)  # it runs while its supervisor does
        if lifeline == "pipe":  # the wrapper is the child; the program is the wrapper's child
            assert "impetus.stack.lifeline" in open(f"/proc/{child}/cmdline").read()
        supervisor.kill()
        supervisor.wait()
        assert _gone(child, 5), f"the child (pid {child}) outlived its supervisor"
    finally:
        try:  # what is left of it, by its own process group (never by a name another run could share)
            os.killpg(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_pipe_wrapper_passes_signals_and_the_exit_code_through():
    from impetus.stack import lifeline

    os.environ["IMPETUS_LIFELINE"] = "pipe"
    try:
        child = lifeline.spawn([sys.executable, "-c", "import signal, sys, time\n"
                                "signal.signal(signal.SIGHUP, lambda *a: sys.exit(7))\ntime.sleep(30)"],
                               signal.SIGTERM)
        time.sleep(1.0)  # both Pythons are up
        child.send_signal(signal.SIGHUP)  # as the cluster watcher reloads nginx
        assert child.wait(10) == 7
        killed = lifeline.spawn(["sleep", "30"], signal.SIGTERM)
        time.sleep(0.5)
        os.killpg(killed.pid, signal.SIGKILL)
        assert killed.wait(10) == -signal.SIGKILL
    finally:
        del os.environ["IMPETUS_LIFELINE"]


def test_a_new_supervisor_ends_what_a_killed_one_left_and_nothing_else(tmp_path):
    old = Record(tmp_path, "up")
    assert old.claim() is None
    left = subprocess.Popen(["sleep", "300"], start_new_session=True)  # no lifeline: as an older version left it
    reused = subprocess.Popen(["sleep", "300"], start_new_session=True)
    old.started("workers", left)
    old.started("nginx", reused)
    record = json.loads((tmp_path / "up.json").read_text())
    record["children"]["nginx"]["started"] = "Thu Jan  1 00:00:00 1970"  # its pid now belongs to someone else
    (tmp_path / "up.json").write_text(json.dumps(record))

    assert Record(tmp_path, "up").claim() == str(os.getpid())  # the lock is held: refused, with the holder
    old._lock.close()  # the old supervisor is gone (kill -9 frees its lock)
    new = Record(tmp_path, "up")
    assert new.claim() is None
    lines = []
    assert new.clean(lines.append) == [left.pid]
    assert not os.path.exists(f"/proc/{left.pid}")  # ended, and reaped by clean() (it was our child)
    assert reused.poll() is None, "a process that only shares a recorded pid was ended"
    assert lines and "ending workers" in lines[0]
    reused.kill()
    reused.wait()
    new.release()
