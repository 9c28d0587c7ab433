"""The supervisor's policy with real child processes and a clock the test moves."""

from __future__ import annotations

import subprocess

import pytest

from impetus.metrics.components import read_restarts
from impetus.stack.supervisor import Component, StackError, Supervisor


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _settle(supervisor, component, state):
    for _ in range(200):
        supervisor.step()
        if component.state == state:
            return
        if component.process is not None:
            try:
                component.process.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
    raise AssertionError(f"{component.name} never reached {state}: {component.state}")


def test_failed_starts_back_off_and_the_fifth_stops(tmp_path):
    clock, lines = Clock(), []
    failing = Component("nginx", lambda: subprocess.Popen(["false"], start_new_session=True), lambda: False)
    supervisor = Supervisor([failing], log=lines.append, run_dir=tmp_path, clock=clock)
    waits = []
    with pytest.raises(StackError, match=r"nginx failed to start 5 times in a row \(last: exited during"):
        while True:
            _settle(supervisor, failing, "waiting")
            waits.append(failing.next_start - clock.now)
            clock.now = failing.next_start
    assert waits == [1, 2, 4, 8]
    assert len(lines) == 4 and "failed start 4 of 5" in lines[-1]


def test_restarts_double_up_to_30s_and_reset_after_a_healthy_minute(tmp_path):
    clock, lines = Clock(), []
    sleeper = Component("redis", lambda: subprocess.Popen(["sleep", "600"], start_new_session=True), lambda: True)
    other = Component("workers", lambda: subprocess.Popen(["sleep", "600"], start_new_session=True), lambda: True)
    supervisor = Supervisor([sleeper, other], log=lines.append, run_dir=tmp_path, clock=clock)
    try:
        _settle(supervisor, sleeper, "up")
        _settle(supervisor, other, "up")
        survivor = other.process.pid
        delays = []
        for _ in range(7):
            sleeper.process.kill()
            _settle(supervisor, sleeper, "waiting")
            delays.append(sleeper.next_start - clock.now)
            clock.now = sleeper.next_start
            _settle(supervisor, sleeper, "up")
        assert delays == [1, 2, 4, 8, 16, 30, 30]
        clock.now += 61  # a healthy minute
        sleeper.process.kill()
        _settle(supervisor, sleeper, "waiting")
        assert sleeper.next_start - clock.now == 1
        assert other.process.pid == survivor and other.state == "up", "the others keep running"
        assert read_restarts(tmp_path) == {"redis": 8, "workers": 0}
        assert "redis exited unexpectedly (code -9); restarting in 1s (restart 8)" in lines[-1]
    finally:
        for component in (sleeper, other):
            if component.process is not None:
                component.process.kill()
