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
What it must not do: schedule (it only says whether someone is waiting).
"""

from __future__ import annotations

import multiprocessing
import os
import time

SLOTS = 256
STALE_S = 300.0
YIELD_S = 0.02


class HostActivity:
    def __init__(self):
        self._counts = multiprocessing.Array("i", SLOTS)
        self._touched = multiprocessing.Array("d", SLOTS, lock=False)

    def _slot(self) -> int:
        return os.getpid() % SLOTS

    def begin(self) -> None:
        slot = self._slot()
        with self._counts.get_lock():
            self._counts[slot] += 1
        self._touched[slot] = time.time()

    def end(self) -> None:
        slot = self._slot()
        with self._counts.get_lock():
            self._counts[slot] = max(0, self._counts[slot] - 1)
        self._touched[slot] = time.time()

    def interactive(self) -> int:
        """Interactive requests in flight on the host (slots touched in the last STALE_S)."""
        now = time.time()
        return sum(c for c, t in zip(self._counts[:], self._touched[:]) if c > 0 and now - t < STALE_S)
