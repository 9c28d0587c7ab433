"""One structured log line per request, written when the response is over
(a stream at its last byte): request id, client, route, status, model, key
*name*, tokens, cache, seconds. Never the key; the prompt only when
IMPETUS_LOG_PROMPTS is on."""

from __future__ import annotations

import logging
import time

from impetus.web import when_sent

log = logging.getLogger("impetus.access")


class AccessLogMiddleware:
    def __init__(self, log_prompts: bool = False):
        self.log_prompts = log_prompts

    def process_request(self, req, resp):
        req.context.access_started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded):
        started = req.context.access_started or time.perf_counter()

        def write():
            account = req.context.account
            generation = req.context.generation
            fields = {
                "request_id": req.context.request_id,
                "client": req.access_route[0] if req.access_route else req.remote_addr,
                "method": req.method,
                "path": req.path,
                "status": resp.status_code,
                "model": req.context.model or None,
                "key": account.key.name if account.key is not None else None,
                "prompt_tokens": generation.prompt_tokens if generation else None,
                "completion_tokens": generation.completion_tokens if generation else None,
                "cached_tokens": generation.cached_tokens if generation else None,
                "cache": resp.get_header("x-impetus-cache"),
                "queue_seconds": float(resp.get_header("x-impetus-queue-seconds") or 0) or None,
                "seconds": round(time.perf_counter() - started, 4),
            }
            if self.log_prompts and isinstance(req.context.json, dict):
                body = req.context.json
                fields["prompt"] = body.get("messages", body.get("prompt"))
            log.info("%s %s %s", req.method, req.path, resp.status_code,
                     extra={k: v for k, v in fields.items() if v is not None})

        when_sent(resp, write)
