"""Facts about this machine, for `impetus doctor` and status pages."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys

# Where programs are when PATH does not say (launchd's and systemd's PATH is bare):
# Homebrew on Apple silicon, Homebrew on Intel, and the system's sbin.
PROGRAM_DIRS = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/sbin", "/usr/bin")


def find_program(name: str) -> str | None:
    """`name`'s absolute path on PATH or in PROGRAM_DIRS, not resolved
    (Debian's redis-server is a link that acts by the name it is run under)."""
    import shutil
    from pathlib import Path

    for candidate in (shutil.which(name), *(f"{d}/{name}" for d in PROGRAM_DIRS)):
        if candidate and Path(candidate).exists():
            return str(Path(candidate).absolute())
    return None


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


class ProcTaskInfo(ctypes.Structure):
    """<sys/proc_info.h> struct proc_taskinfo (96 bytes), what proc_pidinfo(PROC_PIDTASKINFO) fills."""

    _fields_ = [("pti_virtual_size", ctypes.c_uint64), ("pti_resident_size", ctypes.c_uint64),
                ("pti_total_user", ctypes.c_uint64), ("pti_total_system", ctypes.c_uint64),
                ("pti_threads_user", ctypes.c_uint64), ("pti_threads_system", ctypes.c_uint64),
                ("pti_policy", ctypes.c_int32), ("pti_faults", ctypes.c_int32), ("pti_pageins", ctypes.c_int32),
                ("pti_cow_faults", ctypes.c_int32), ("pti_messages_sent", ctypes.c_int32),
                ("pti_messages_received", ctypes.c_int32), ("pti_syscalls_mach", ctypes.c_int32),
                ("pti_syscalls_unix", ctypes.c_int32), ("pti_csw", ctypes.c_int32), ("pti_threadnum", ctypes.c_int32),
                ("pti_numrunning", ctypes.c_int32), ("pti_priority", ctypes.c_int32)]


PROC_PIDTASKINFO = 4


@functools.cache
def _proc_pidinfo():
    """libproc's proc_pidinfo (macOS), or None."""
    try:
        function = ctypes.CDLL("/usr/lib/libproc.dylib").proc_pidinfo
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def resident_memory_bytes(pid: int | None = None, proc_pidinfo=None) -> int | None:
    """This process's resident memory now (not its peak): /proc on Linux, the
    kernel's task info on macOS (getrusage's ru_maxrss there is the largest
    it ever was, so a graph of it never comes down after an idle release)."""
    pid = os.getpid() if pid is None else pid
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    proc_pidinfo = proc_pidinfo or _proc_pidinfo()
    if proc_pidinfo is None:
        return None
    info = ProcTaskInfo()
    if proc_pidinfo(pid, PROC_PIDTASKINFO, 0, ctypes.byref(info), ctypes.sizeof(info)) != ctypes.sizeof(info):
        return None
    return info.pti_resident_size
