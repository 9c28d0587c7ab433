"""The request log line, and the prompt in it only when asked for."""

from __future__ import annotations

import json
import logging

import falcon
import falcon.testing
import pytest

from impetus.api.access_log import AccessLogMiddleware
from impetus.api.middleware import JSONBodyMiddleware, RequestIdMiddleware
from impetus.gateway.account import AccountMiddleware
from impetus.server.logs import JsonFormatter
from impetus.web import Request


class Echo:
    def on_post(self, req, resp):
        req.context.model = req.context.json.get("model", "")
        resp.media = {"ok": True}


def client(log_prompts: bool) -> falcon.testing.TestClient:
    app = falcon.App(middleware=[AccountMiddleware(), RequestIdMiddleware(), AccessLogMiddleware(log_prompts),
                                 JSONBodyMiddleware(1024)], request_type=Request)
    app.add_route("/v1/chat/completions", Echo())
    return falcon.testing.TestClient(app)


@pytest.mark.parametrize("log_prompts", [False, True])
def test_prompts_are_logged_only_when_asked(caplog, log_prompts):
    body = {"model": "m", "messages": [{"role": "user", "content": "the secret plan"}]}
    with caplog.at_level(logging.INFO, logger="impetus.access"):
        client(log_prompts).simulate_post("/v1/chat/completions", json=body, headers={"X-Request-ID": "r1"})
    [record] = [r for r in caplog.records if r.name == "impetus.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "r1" and line["status"] == 200 and line["model"] == "m"
    assert ("the secret plan" in json.dumps(line)) == log_prompts
