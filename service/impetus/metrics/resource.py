"""GET /metrics (Prometheus text format; nginx lets only loopback and
IMPETUS_ADMIN_ALLOW reach it, and with keys required it needs the admin scope)."""

from __future__ import annotations

from impetus.metrics import exposition


class MetricsResource:
    def on_get(self, req, resp):
        body, content_type = exposition()
        resp.content_type = content_type
        resp.data = body
