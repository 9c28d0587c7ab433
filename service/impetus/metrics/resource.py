"""GET /metrics (Prometheus text format; nginx lets only loopback and
IMPETUS_ADMIN_ALLOW reach it, and with keys required it needs the admin scope)."""

from __future__ import annotations

from impetus.metrics import exposition


class MetricsResource:
    def __init__(self, run_dir=None):
        self.run_dir = run_dir  # where `impetus up` counts component restarts

    def on_get(self, req, resp):
        body, content_type = exposition(self.run_dir)
        resp.content_type = content_type
        resp.data = body
