"""Structured logs from a real keyed server: JSON lines with request id, key
name, model, tokens and time; never the key or the prompt; the log file can be
renamed away (as newsyslog and logrotate do) and the server carries on."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

from conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.own_server("its request log goes to a file of its own (IMPETUS_LOG_FILE)")]

SECRET_PROMPT = "Tell me about the zebra named Quillifax."


def access_lines(log_file) -> list[dict]:
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]  # every line is JSON
    return [line for line in lines if line["logger"] == "impetus.access"]


def wait_for_line(log_file, predicate, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        if log_file.exists():
            found = [line for line in access_lines(log_file) if predicate(line)]
            if found:
                return found[-1]
        assert time.monotonic() < deadline, "the request was not logged"
        time.sleep(0.1)


def test_request_lines_have_the_fields_and_no_secrets(data_dir, redis_server, tmp_path):
    log_file = tmp_path / "logs" / "impetus.log"
    server = Server(data_dir, tmp_path / "server.out", require_api_keys="true", redis_url=redis_server.url,
                    log_file=log_file)
    try:
        key, _ = KeyStore(redis_server.client()).create("log-user")
        headers = {"Authorization": f"Bearer {key}", "X-Request-ID": "req-logs-1"}
        chat = {"model": DEFAULT_MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": SECRET_PROMPT}],
                "temperature": 1.0}  # sampled: not a cache hit (the model's own defaults are greedy)
        reply = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat, headers=headers, timeout=60).json()
        line = wait_for_line(log_file, lambda l: l.get("request_id") == "req-logs-1")
        assert line["key"] == "log-user" and line["model"] == DEFAULT_MODEL and line["status"] == 200
        assert line["prompt_tokens"] == reply["usage"]["prompt_tokens"]
        assert line["completion_tokens"] == reply["usage"]["completion_tokens"]
        assert line["seconds"] > 0 and line["path"] == "/v1/chat/completions" and line["level"] == "info"

        # A stream is logged when it ends, with its tokens.
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", timeout=60,
                          json={**chat, "stream": True}, headers={**headers, "X-Request-ID": "req-logs-2"}) as s:
            list(s.iter_lines())
        streamed = wait_for_line(log_file, lambda l: l.get("request_id") == "req-logs-2")
        assert streamed["completion_tokens"] == 5
        bad = httpx.get(f"{server.base_url}/v1/models", headers={"Authorization": "Bearer imp_wrong-key-xyz"})
        assert bad.status_code == 401
        refused = wait_for_line(log_file, lambda l: l.get("status") == 401)
        assert "key" not in refused

        text = log_file.read_text()
        assert key not in text and "imp_wrong-key-xyz" not in text
        assert "Quillifax" not in text  # prompts stay out unless IMPETUS_LOG_PROMPTS

        # newsyslog/logrotate rename the file; the server writes a new one.
        log_file.rename(log_file.with_suffix(".log.0"))
        httpx.get(f"{server.base_url}/v1/models", headers={**headers, "X-Request-ID": "req-logs-3"}, timeout=10)
        wait_for_line(log_file, lambda l: l.get("request_id") == "req-logs-3")
        assert "req-logs-3" not in log_file.with_suffix(".log.0").read_text()
    finally:
        server.stop()
