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
            # By its full path: launchd's jobs start with a PATH that may lack /usr/sbin.
            return subprocess.run(["/usr/sbin/sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
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


# NSProcessInfoThermalState: what macOS reports while it throttles to keep cool.
THERMAL_STATES = ("nominal", "fair", "serious", "critical")


def thermal_state() -> int | None:
    """0 (nominal) to 3 (critical) on macOS; None where the OS does not say."""
    if sys.platform != "darwin":
        return None
    import ctypes

    try:
        objc = ctypes.cdll.LoadLibrary("/usr/lib/libobjc.A.dylib")
        ctypes.cdll.LoadLibrary("/System/Library/Frameworks/Foundation.framework/Foundation")
        objc.objc_getClass.restype = ctypes.c_void_p
        objc.sel_registerName.restype = ctypes.c_void_p
        send = objc.objc_msgSend
        send.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        send.restype = ctypes.c_void_p
        info = send(objc.objc_getClass(b"NSProcessInfo"), objc.sel_registerName(b"processInfo"))
        send.restype = ctypes.c_long
        state = send(info, objc.sel_registerName(b"thermalState"))
    except (OSError, AttributeError):
        return None
    return state if 0 <= state < len(THERMAL_STATES) else None


def thermal_state_name(state: int | None) -> str:
    return THERMAL_STATES[state] if state is not None else "unknown"
