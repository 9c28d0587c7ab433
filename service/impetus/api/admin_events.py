"""GET /v1/admin/events: a server-sent-events stream for the dashboard.

First a `status` event (versions, hardware, Redis, engines), then every second a
`live` event: requests/s, tokens/s, time to first token, running and waiting
requests, cache hit ratio and rate-limited count summed over every worker,
plus the answering worker's models. The stream ends when the worker shuts
down; the dashboard then reconnects to another (or the restarted) worker.
"""

from __future__ import annotations

import json
import time

import gevent

from impetus.api.admin import worker_models
from impetus.api.generation_resource import start_stream
from impetus.api.health import hosts_of, redis_state, status_snapshot
from impetus.metrics.live import LiveRates

INTERVAL_S = 1.0


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class AdminEventsResource:
    def __init__(self, host, gateway=None, started: float | None = None):
        self.host = host
        self.gateway = gateway
        self.started = started or time.time()

    def on_get(self, req, resp):
        start_stream(resp, self._events())

    def _events(self):
        rates = LiveRates()
        yield b"retry: 1000\n\n"  # how soon EventSource-style clients reconnect
        yield sse("status", status_snapshot(self.host, self.gateway, self.started))
        while not self.host.stopping:
            yield sse("live", {"time": time.time(), **rates.read(), "redis": redis_state(self.gateway),
                               "models": worker_models(self.host), "hosts": hosts_of(self.gateway)})
            gevent.sleep(INTERVAL_S)
