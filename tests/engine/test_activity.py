"""engine.activity: the host's interactive requests in flight, counted in shared memory that
forked workers inherit (as Gunicorn's workers do from the master); a stale slot is ignored."""

from __future__ import annotations

import os
import time

from impetus.engine import activity
from impetus.engine.activity import HostActivity


def test_a_forked_workers_requests_are_seen_by_the_others_and_a_stale_slot_is_not():
    shared = HostActivity()  # made before the fork, as the master does
    reading, writing = os.pipe()
    while True:
        child = os.fork()
        if child == 0:  # a worker: one request starts and stays in flight
            shared.begin()
            os.write(writing, b"1")
            time.sleep(5)
            os._exit(0)
        if child % activity.SLOTS != os.getpid() % activity.SLOTS:
            break
        os.read(reading, 1)  # one slot for both (1 in 256): another worker
        os.kill(child, 9)
        os.waitpid(child, 0)
        shared._counts[child % activity.SLOTS] = 0
    try:
        assert os.read(reading, 1) == b"1"
        assert shared.interactive() == 1  # seen from another process
        shared.begin()
        assert shared.interactive() == 2
        shared.end()
        shared.end()  # never below zero for this process's slot
        assert shared.interactive() == 1
        slot = child % activity.SLOTS
        shared._touched[slot] = time.time() - activity.STALE_S - 1  # a worker killed mid-request, long ago
        assert shared.interactive() == 0
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
