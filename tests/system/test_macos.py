"""What `impetus doctor` reads on a Mac (impetus.system.macos), from the
outputs Apple's tools print: `pmset -g` (pmset(1)) and `sysctl -n` of
sysctl.proc_translated (1 under Rosetta) and iogpu.wired_limit_mb."""

from __future__ import annotations

from impetus.system import macos

# `pmset -g` on a MacBook on power (macOS 14); "Sleep On Power Button" must not be read as `sleep`.
PMSET = """System-wide power settings:
Currently in use:
 standby              1
 Sleep On Power Button 1
 hibernatefile        /var/vm/sleepimage
 powernap             1
 networkoversleep     0
 disksleep            10
 sleep                1 (sleep prevented by coreaudiod)
 ttyskeepawake        1
 displaysleep         10
 tcpkeepalive         1
 womp                 1
"""


def runner(outputs: dict[str, str | None]):
    calls = []

    def run(command):
        calls.append(command)
        return outputs.get(command[-1])

    run.calls = calls
    return run


def test_idle_sleep_is_read_from_pmset():
    run = runner({"-g": PMSET})
    assert macos.idle_sleep_minutes(run) == 1
    assert run.calls == [["/usr/bin/pmset", "-g"]]
    assert macos.idle_sleep_minutes(runner({"-g": PMSET.replace("sleep                1", "sleep 0")})) == 0
    assert macos.idle_sleep_minutes(runner({})) is None


def test_rosetta_and_the_wired_limit_are_read_from_sysctl():
    assert macos.under_rosetta(runner({"sysctl.proc_translated": "1\n"})) is True
    assert macos.under_rosetta(runner({"sysctl.proc_translated": "0\n"})) is False
    assert macos.under_rosetta(runner({})) is False  # Intel: no such sysctl
    assert macos.wired_limit_mb(runner({"iogpu.wired_limit_mb": "0\n"})) == 0
    assert macos.wired_limit_mb(runner({"iogpu.wired_limit_mb": "98304\n"})) == 98304
    assert macos.wired_limit_mb(runner({})) is None


def test_the_real_runner_gives_none_for_a_command_that_is_not_there():
    assert macos.run(["/nonexistent/pmset", "-g"]) is None
    assert macos.run(["/bin/sh", "-c", "exit 3"]) is None
    assert macos.run(["/bin/sh", "-c", "echo 15.1"]) == "15.1\n"
