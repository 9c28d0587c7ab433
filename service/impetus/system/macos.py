"""What a Mac says about itself, for `impetus doctor`: its macOS version (not
Darwin's), whether this Python runs under Rosetta (an x86_64 Python has no
MLX wheel with Metal), the GPU's wired-memory limit and whether the Mac
sleeps when idle. Each reader takes the command runner, so the parsing is
tested on Linux with the commands' documented output; on a Mac they run
Apple's own tools by their full paths (launchd's PATH may lack /usr/sbin).

Must not touch: anything but reading. Fixing is the person's, and doctor
prints the command.
"""

from __future__ import annotations

import platform
import re
import subprocess


def run(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def macos_version() -> str | None:
    """"15.1", from the system (platform.release() is Darwin's, "24.1.0")."""
    return platform.mac_ver()[0] or None


def under_rosetta(run=run) -> bool:
    """sysctl.proc_translated is 1 for a process Rosetta translates, 0 for a native one, absent on Intel."""
    return (run(["/usr/sbin/sysctl", "-n", "sysctl.proc_translated"]) or "").strip() == "1"


def wired_limit_mb(run=run) -> int | None:
    """iogpu.wired_limit_mb: how much memory the GPU may wire (0: macOS' default, ~2/3 to 3/4 of RAM)."""
    value = (run(["/usr/sbin/sysctl", "-n", "iogpu.wired_limit_mb"]) or "").strip()
    return int(value) if value.isdigit() else None


def idle_sleep_minutes(run=run) -> int | None:
    """The `sleep` line of `pmset -g` (minutes of idle before the system sleeps; 0: never)."""
    output = run(["/usr/bin/pmset", "-g"]) or ""
    found = re.search(r"^\s*sleep\s+(\d+)", output, re.M)
    return int(found.group(1)) if found else None
