"""Ways for the engine thread to wake whoever waits on a request.

The engine runs in a native OS thread. Greenlets in a gevent worker cannot be
woken with thread primitives (a blocked greenlet would block the whole hub), so
`GeventWaker` uses the hub loop's async watcher: `send()` is thread-safe and
makes the hub run our callback, which sets the request's gevent Event. No
polling anywhere.
"""

from __future__ import annotations

import threading
from collections import deque


class ThreadWaiter:
    """For plain threads (benchmarks, scripts): a threading.Event."""

    def __init__(self):
        self._event = threading.Event()

    def notify(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        ok = self._event.wait(timeout)
        self._event.clear()
        return ok


class GeventWaker:
    """One per worker process: delivers engine-thread wake-ups into the hub."""

    def __init__(self):
        import gevent

        self._ready: deque = deque()
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._dispatch)

    def send(self, event) -> None:  # any thread
        self._ready.append(event)
        self._watcher.send()

    def _dispatch(self) -> None:  # in the hub
        while self._ready:
            self._ready.popleft().set()

    def waiter(self) -> "GreenletWaiter":
        return GreenletWaiter(self)


class GreenletWaiter:
    def __init__(self, waker: GeventWaker):
        from gevent.event import Event

        self._waker = waker
        self._event = Event()

    def notify(self) -> None:
        self._waker.send(self._event)

    def wait(self, timeout: float | None = None) -> bool:
        # Clear before the caller drains the outbox again, so a notify that
        # lands in between is not lost: its event is already in the outbox.
        ok = self._event.wait(timeout)
        self._event.clear()
        return ok


def native_lock():
    """A lock for code that runs in native threads (the engine thread, the
    hub's threadpool via `run_off_the_hub`). In a gevent worker
    `threading.Lock` is gevent's, which belongs to one hub: native threads
    contending for it can lose a wake-up and wait forever (seen: 1 of 20
    concurrent first structured-output requests never reached the engine,
    all 20 building llguidance's tokenizer table under such a lock)."""
    try:
        from gevent.monkey import get_original

        return get_original("_thread", "allocate_lock")()
    except ImportError:  # pragma: no cover - gevent is a dependency
        return threading.Lock()
