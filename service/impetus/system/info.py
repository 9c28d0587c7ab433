"""Facts about this machine, for `impetus doctor` and status pages."""

from __future__ import annotations

import os
import platform
import sys


def total_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_name() -> str:
    if sys.platform == "darwin":
        import subprocess

        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        except OSError:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mlx_device() -> str:
    import mlx.core as mx

    device = mx.default_device()
    return "gpu (Metal)" if device == mx.gpu and sys.platform == "darwin" else str(device.type).split(".")[-1]
