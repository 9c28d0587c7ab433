"""Interactive requests in flight on this host, across its workers: what a batch yields to.

A batch's lines (api.batch_runner) run at batch priority in one worker's engine,
while a person's question may land in another worker: two processes on the same
cores. Measured on a 2-core VM, a 16-line batch doubled a person's time to first
token (165 -> 350 ms) though each engine's scheduler serves interactive work
first, because the other worker's batch kept stepping. So engines whose running
requests are all batch priority wait YIELD_S before a step while any interactive
request is in flight on the host.

The counts live in shared memory the Gunicorn master makes before it forks its
workers (`HostActivity()` there, handed to each worker's EngineHost), one slot a
worker process; a slot not touched for STALE_S (a worker killed mid-request) is
ignored. Without a master (tests, one process) it is this process's alone.

An editor's keystroke (a fill-in-the-middle request, api.fim) is the most
impatient request there is, and on a code model other than the chat model it
runs in another engine, whose steps contend with the chat model's for the same
cores: in the team benchmark (bench.team) 2 of 80 keystrokes got a first
token within the 1 s pause while coding agents' prompts were computed, and
9 of 80 with the other engines held back 250 ms a step (a keystroke needs
about 0.6 s of the cores). So `keystrokes` are counted too, and an engine with
none of its own waits before a step, at most KEYSTROKE_S, while one is in
flight on the host: while people type, the other models step between keystrokes.
What it must not do: schedule (it only says whether someone is waiting).
"""

from __future__ import annotations

import multiprocessing
import os
import time

SLOTS = 256
STALE_S = 300.0
YIELD_S = 0.02
KEYSTROKE_S = 1.0  # at most this per step: about what a keystroke takes alone (0.6 s here), the pause editors leave


class HostActivity:
    def __init__(self):
        self._counts = multiprocessing.Array("i", SLOTS)
        self._keys = multiprocessing.Array("i", SLOTS)  # of which keystrokes
        self._touched = multiprocessing.Array("d", SLOTS, lock=False)

    def _slot(self) -> int:
        return os.getpid() % SLOTS

    def begin(self, keystroke: bool = False) -> None:
        slot = self._slot()
        with self._counts.get_lock():
            self._counts[slot] += 1
            self._keys[slot] += keystroke
        self._touched[slot] = time.time()

    def end(self, keystroke: bool = False) -> None:
        slot = self._slot()
        with self._counts.get_lock():
            self._counts[slot] = max(0, self._counts[slot] - 1)
            self._keys[slot] = max(0, self._keys[slot] - keystroke)
        self._touched[slot] = time.time()

    def keystrokes(self) -> int:
        """Keystrokes in flight on the host."""
        return self._live(self._keys)

    def interactive(self) -> int:
        """Interactive requests in flight on the host."""
        return self._live(self._counts)

    def _live(self, counts) -> int:
        """The sum of `counts` over the slots touched in the last STALE_S."""
        now = time.time()
        return sum(c for c, t in zip(counts[:], self._touched[:]) if c > 0 and now - t < STALE_S)
