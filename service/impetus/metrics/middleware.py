"""Count every request and its duration; a stream is timed to its last byte."""

from __future__ import annotations

import time

from impetus.web import when_sent


class MetricsMiddleware:
    def __init__(self, metrics):
        self.metrics = metrics

    def process_request(self, req, resp):
        req.context.started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded):
        route = req.uri_template or "unmatched"
        started = req.context.started or time.perf_counter()

        def record():
            self.metrics.requests.labels(route, str(resp.status_code), req.context.model).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)

        when_sent(resp, record)
