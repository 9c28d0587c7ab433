"""Keeping a Mac awake while it serves.

A Mac mini or a MacBook on a desk falls asleep when nobody touches it (by
default after 1-10 minutes idle; `pmset -g` shows `sleep N`), and a server
that sleeps answers nobody. launchd's `ProcessType Interactive` only keeps
App Nap from throttling the job; it does not hold off sleep. So `impetus
serve` runs Apple's caffeinate(8) beside itself: `caffeinate -i -w PID`
holds a PreventUserIdleSystemSleep assertion until the server's process
exits, and `pmset -g assertions` lists it. The display may still sleep, and
a lid closed on battery still sleeps the machine (that is the hardware's).
IMPETUS_KEEP_AWAKE=false leaves sleep to the Mac's settings; `impetus doctor`
reports them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CAFFEINATE = "/usr/bin/caffeinate"


def keep_awake(pid: int | None = None, program: str = CAFFEINATE,
               platform: str = sys.platform) -> subprocess.Popen | None:
    """Hold off idle sleep while `pid` (this process) lives; the caffeinate
    process, or None where there is none (not a Mac)."""
    if platform != "darwin" or not Path(program).exists():
        return None
    pid = os.getpid() if pid is None else pid
    # Its own session: a Ctrl-C meant for the server does not end it first; it ends with the server.
    return subprocess.Popen([program, "-i", "-w", str(pid)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
