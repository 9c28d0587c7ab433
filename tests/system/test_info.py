"""Facts about the machine that the status page and metrics report."""

from __future__ import annotations

import sys

from impetus.system import info


def test_thermal_state_is_a_macos_level_or_unknown():
    state = info.thermal_state()
    if sys.platform == "darwin":
        assert state in (0, 1, 2, 3)
    else:
        assert state is None
    assert info.thermal_state_name(None) == "unknown"
    assert [info.thermal_state_name(s) for s in range(4)] == ["nominal", "fair", "serious", "critical"]


def test_hardware_facts():
    assert info.cpu_name()
    assert info.total_memory_bytes() > 256 * 1024 * 1024


def test_resident_memory_is_now_not_the_peak():
    import mmap

    from impetus.system.info import resident_memory_bytes

    # Pages of their own (a bytearray may reuse freed, still resident heap,
    # as it did after other tests in one pytest-xdist worker).
    before = resident_memory_bytes()
    block = mmap.mmap(-1, 256 << 20)
    for offset in range(0, len(block), 4096):  # touch every page
        block[offset] = 1
    during = resident_memory_bytes()
    block.close()
    after = resident_memory_bytes()
    assert during - before > 200 << 20
    assert during - after > 200 << 20  # a peak (ru_maxrss) would not come down


def test_resident_memory_on_macos_comes_from_the_kernels_task_info():
    """proc_pidinfo(pid, PROC_PIDTASKINFO, 0, buffer, size) fills struct
    proc_taskinfo and returns its size; a stand-in of that call, as a C
    function, for a pid with no /proc entry (as on a Mac)."""
    import ctypes

    from impetus.system import info

    assert ctypes.sizeof(info.ProcTaskInfo) == 96
    assert info.ProcTaskInfo.pti_resident_size.offset == 8
    calls = []

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int)
    def proc_pidinfo(pid, flavor, arg, buffer, size):
        calls.append((pid, flavor, size))
        task = info.ProcTaskInfo.from_address(buffer)
        task.pti_resident_size, task.pti_virtual_size = 123 << 20, 400 << 30
        return size

    missing = 2**22 + 7  # above Linux' pid_max: no /proc entry
    assert info.resident_memory_bytes(missing, proc_pidinfo) == 123 << 20
    assert calls == [(missing, info.PROC_PIDTASKINFO, 96)]

    failing = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p,
                               ctypes.c_int)(lambda *a: 0)
    assert info.resident_memory_bytes(missing, failing) is None
