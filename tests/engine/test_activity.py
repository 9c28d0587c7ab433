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


def test_keystrokes_are_counted_apart_and_another_engine_waits_for_one_but_not_for_ever(monkeypatch):
    """An editor's keystroke in flight on the host: an engine with none of its own waits before a
    step until it is answered, at most KEYSTROKE_S; the engine running it does not wait."""
    from types import SimpleNamespace

    from impetus.engine import engine as engine_module
    from impetus.engine.engine import Engine

    shared = HostActivity()
    shared.begin(keystroke=True)
    shared.begin()
    assert (shared.interactive(), shared.keystrokes()) == (2, 1)
    shared.end()
    shared.end(keystroke=True)
    assert (shared.interactive(), shared.keystrokes()) == (0, 0)

    polls = []

    def answered_on_the_fourth_look() -> int:
        polls.append(1)
        return int(len(polls) < 4)

    chat = SimpleNamespace(activity=SimpleNamespace(keystrokes=answered_on_the_fourth_look), keystrokes_here=0)
    Engine._let_a_keystroke_through(chat)
    assert len(polls) == 4  # it waited until the keystroke was answered
    coder = SimpleNamespace(activity=chat.activity, keystrokes_here=1)
    polls.clear()
    Engine._let_a_keystroke_through(coder)
    assert polls == []  # its own keystroke: it steps at once
    monkeypatch.setattr(engine_module, "KEYSTROKE_S", 0.05)
    stuck = SimpleNamespace(activity=SimpleNamespace(keystrokes=lambda: 1), keystrokes_here=0)
    Engine._let_a_keystroke_through(stuck)  # returns: a keystroke never answered holds nobody for ever
