"""What keeps `impetus up` whole: each component (redis-server, the Gunicorn
master, nginx) is watched and restarted when it exits, while the others keep
running.

Why a supervisor in `up` and not "stop everything": the server already serves
through a Redis outage (known keys keep working, limits and the cache are
skipped), so one crashed helper is a degraded minute, not an outage. Measured
with `kill -9` on the 2-core VM: Redis is back in ~1 s, nginx in ~1 s, the
workers in ~5 s (the model is loaded again).

Policy, per component:
- an unexpected exit is restarted after a backoff of 1 s, doubling up to 30 s;
  the backoff starts over once the component has been healthy for a minute;
- a start that fails (the process exits, or is not ready in time) counts; five
  failed starts in a row stop the stack, with the last reason;
- every restart is one log line and one count in `restarts.json` under the
  run dir, which the workers export as `impetus_component_restarts_total`.

A component's `stop_orphans` runs when its main process has died: nginx's and
Gunicorn's own children outlive a `kill -9` of their master and keep the
listening socket, so they are asked to finish gracefully (SIGQUIT to nginx's
workers, SIGTERM to Gunicorn's) and the new master can bind the port again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from impetus.metrics.components import RESTARTS_FILE

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_RESET_S = 60.0
MAX_FAILED_STARTS = 5


class StackError(RuntimeError):
    pass


class StopOnSignal:
    """Ctrl-C or SIGTERM (launchd, systemd) asks a supervising loop to stop
    after its current step; the loop then stops its components in order."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True


@dataclass
class Component:
    """One supervised program: how to start it, when it is ready, how long a
    start may take, and which signal lets its process group finish."""

    name: str
    start: Callable[[], subprocess.Popen]
    ready: Callable[[], bool]
    start_timeout: float = 60.0
    orphan_signal: int | None = None  # sent to the process group after the main process died
    log_hint: str = ""  # where its own log says why it failed

    process: subprocess.Popen | None = None
    state: str = "waiting"  # waiting -> starting -> up -> (exited) waiting ...
    started_at: float = 0.0
    up_since: float = 0.0
    next_start: float = 0.0
    backoff: float = BACKOFF_FIRST_S
    failed_starts: int = 0
    restarts: int = 0
    last_failure: str = ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Supervisor:
    components: list[Component]
    log: Callable[[str], None]
    run_dir: Path
    clock: Callable[[], float] = time.monotonic
    on_ready: Callable[[Component, bool], None] = lambda component, again: None
    on_start: Callable[[Component], None] = lambda component: None  # each (re)start: its pid is recorded
    first_backoff: float = BACKOFF_FIRST_S  # IMPETUS_RESTART_BACKOFF_S
    _first_start_done: set = field(default_factory=set)

    def __post_init__(self):
        for component in self.components:
            component.backoff = self.first_backoff

    def step(self) -> None:
        """One look at every component. Components start in order the first
        time (the workers need Redis, nginx's health check needs the
        workers); afterwards each is restarted on its own."""
        now = self.clock()
        for index, component in enumerate(self.components):
            if component.name not in self._first_start_done and any(
                    c.name not in self._first_start_done for c in self.components[:index]):
                return  # an earlier component is not up yet
            self._look_at(component, now)

    @property
    def all_up(self) -> bool:
        return all(c.state == "up" for c in self.components)

    def _look_at(self, component: Component, now: float) -> None:
        if component.state == "waiting":
            if now >= component.next_start:
                self._start(component, now)
        elif component.state == "starting":
            if component.process.poll() is not None:
                self._failed(component, now, f"exited during start-up (code {component.process.returncode})")
            elif self._ready(component):
                again = component.name in self._first_start_done
                component.state, component.up_since = "up", now
                component.failed_starts = 0
                self._first_start_done.add(component.name)
                if again:
                    self.log(f"{component.name} is back after restart {component.restarts}")
                self.on_ready(component, again)
            elif now - component.started_at > component.start_timeout:
                self._kill(component)
                self._failed(component, now, f"not ready in {component.start_timeout:.0f}s")
        elif component.state == "up" and component.process.poll() is not None:
            code = component.process.returncode
            if now - component.up_since >= HEALTHY_RESET_S:
                component.backoff = self.first_backoff
            self._stop_orphans(component)
            component.restarts += 1
            self.record_restarts()
            self.log(f"{component.name} exited unexpectedly (code {code}); restarting in "
                     f"{component.backoff:g}s (restart {component.restarts})")
            self._schedule(component, now)

    def _ready(self, component: Component) -> bool:
        try:
            return component.ready()
        except Exception:  # a check that cannot connect yet
            return False

    def _start(self, component: Component, now: float) -> None:
        try:
            component.process = component.start()
        except OSError as error:
            component.process = None
            self._failed(component, now, f"could not be started: {error}")
            return
        component.state, component.started_at = "starting", now
        self.on_start(component)

    def _failed(self, component: Component, now: float, reason: str) -> None:
        if component.process is not None:
            self._stop_orphans(component)
        component.failed_starts += 1
        component.last_failure = reason
        if component.failed_starts >= MAX_FAILED_STARTS:
            hint = f"; its log: {component.log_hint}" if component.log_hint else ""
            raise StackError(f"{component.name} failed to start {component.failed_starts} times in a row "
                             f"(last: {reason}{hint}); stopping")
        self.log(f"{component.name} {reason}; trying again in {component.backoff:g}s "
                 f"(failed start {component.failed_starts} of {MAX_FAILED_STARTS})")
        self._schedule(component, now)

    def _schedule(self, component: Component, now: float) -> None:
        component.state = "waiting"
        component.next_start = now + component.backoff
        component.backoff = min(component.backoff * 2, BACKOFF_MAX_S)

    def _kill(self, component: Component) -> None:
        try:
            os.killpg(component.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        component.process.wait()

    def _stop_orphans(self, component: Component) -> None:
        """The main process is gone; its children (same process group) may not be."""
        if component.orphan_signal is None:
            return
        try:
            os.killpg(component.process.pid, component.orphan_signal)
        except (ProcessLookupError, PermissionError):
            pass

    def record_restarts(self) -> None:
        """Counts for the metrics, written atomically (workers read it at scrape time)."""
        path = self.run_dir / RESTARTS_FILE
        staging = path.with_suffix(f".{os.getpid()}")
        staging.write_text(json.dumps({c.name: c.restarts for c in self.components}))
        staging.replace(path)

