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
