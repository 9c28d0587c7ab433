"""GET /healthz (the process answers) and GET /readyz (it can serve)."""

from __future__ import annotations

import os

import falcon


class LivenessResource:
    def on_get(self, req, resp):
        resp.media = {"status": "ok"}


class ReadinessResource:
    def __init__(self, host):
        self.host = host

    def on_get(self, req, resp):
        ready = self.host.ready()
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {
            "status": "ready" if ready else "not ready",
            "pid": os.getpid(),
            "engines": [engine.snapshot() for engine in self.host.engines.values()],
        }
