"""Keys and limits through a real two-worker server and a real redis-server."""

from __future__ import annotations

import sys

import httpx
import openai
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow

# Sampled: the default model's own defaults are greedy, and a repeated greedy request comes from the cache.
CHAT = {"model": DEFAULT_MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}], "temperature": 1.0}


@pytest.fixture
def keys(redis_client):
    return KeyStore(redis_client)


def error_of(response: httpx.Response) -> dict:
    return response.json()["error"]


def test_requests_without_a_valid_key_are_401(gateway_server, keys):
    missing = httpx.post(f"{gateway_server}/v1/chat/completions", json=CHAT, timeout=30)
    assert missing.status_code == 401 and error_of(missing)["code"] == "invalid_api_key"
    wrong = httpx.post(f"{gateway_server}/v1/chat/completions", json=CHAT, timeout=30,
                       headers={"Authorization": "Bearer imp_notarealkey"})
    assert wrong.status_code == 401
    # Health and the API description stay public.
    assert httpx.get(f"{gateway_server}/healthz", timeout=10).status_code == 200
    assert httpx.head(f"{gateway_server}/", timeout=10).status_code == 200  # Codex's first check, keyless
    assert httpx.get(f"{gateway_server}/v1/models", timeout=10).status_code == 401


def test_a_key_works_as_bearer_with_the_openai_client_and_as_x_api_key(gateway_server, keys):
    key, _ = keys.create("alice")
    client = openai.OpenAI(base_url=f"{gateway_server}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(**CHAT)
    assert reply.choices[0].message.content
    by_header = httpx.post(f"{gateway_server}/v1/chat/completions", json=CHAT, timeout=30,
                           headers={"x-api-key": key})
    assert by_header.status_code == 200
    assert by_header.headers["x-ratelimit-limit-requests"] == "120"
    assert int(by_header.headers["x-ratelimit-remaining-requests"]) < 120


def test_revoked_key_stops_working_at_once_in_every_worker(gateway_server, keys):
    key, _ = keys.create("bob")
    headers = {"Authorization": f"Bearer {key}"}
    workers = set()
    for attempt in range(300):  # fresh connections, until both workers have answered (bounded)
        assert httpx.get(f"{gateway_server}/v1/models", headers=headers, timeout=10).status_code == 200
        workers.add(httpx.get(f"{gateway_server}/readyz", timeout=10).json()["pid"])
        if len(workers) == 2 and attempt >= 20:
            break
    assert len(workers) == 2
    keys.revoke("bob")
    statuses = {httpx.get(f"{gateway_server}/v1/models", headers=headers, timeout=10).status_code
                for _ in range(20)}
    assert statuses == {401}


def test_requests_per_minute_limit(gateway_server, keys):
    key, _ = keys.create("carol", rpm=2)
    client = openai.OpenAI(base_url=f"{gateway_server}/v1", api_key=key, max_retries=0)
    client.chat.completions.create(**CHAT)
    client.chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**CHAT)
    response = refused.value.response
    assert response.headers["x-ratelimit-limit-requests"] == "2"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(response.headers["retry-after"]) <= 30
    assert refused.value.body["code"] == "rate_limit_requests"


def test_tokens_per_minute_limit_is_reconciled_after_the_response(gateway_server, keys, redis_client):
    key, record = keys.create("dave", tpm=20)
    headers = {"Authorization": f"Bearer {key}"}
    first = httpx.post(f"{gateway_server}/v1/chat/completions", json=CHAT, headers=headers, timeout=60)
    assert first.status_code == 200
    used = first.json()["usage"]["total_tokens"]
    assert used > 20  # the chat template alone is ~30 tokens
    second = httpx.post(f"{gateway_server}/v1/chat/completions", json=CHAT, headers=headers, timeout=60)
    assert second.status_code == 429 and error_of(second)["code"] == "rate_limit_tokens"
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"
    (_, usage), = [(r, u) for r, u in keys.list() if r.name == "dave"]
    assert int(usage["prompt_tokens"]) + int(usage["completion_tokens"]) == used


def test_streamed_tokens_are_charged_too(gateway_server, keys):
    key, _ = keys.create("erin")
    client = openai.OpenAI(base_url=f"{gateway_server}/v1", api_key=key, max_retries=0)
    chunks = list(client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True}))
    total = chunks[-1].usage.total_tokens
    (_, usage), = [(r, u) for r, u in keys.list() if r.name == "erin"]
    assert int(usage["prompt_tokens"]) + int(usage["completion_tokens"]) == total


def test_redis_down_degrades_open_for_known_keys_and_recovers(gateway_server, keys, redis_server):
    key, _ = keys.create("frank")
    with httpx.Client(base_url=gateway_server, timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
        # One keep-alive connection: the same worker verifies the key, then loses Redis.
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert http.get("/readyz").json()["redis"] == "ok"
        redis_server.stop()
        try:
            readiness = http.get("/readyz")
            assert readiness.status_code == 503 and readiness.json()["redis"] == "unreachable"
            degraded = http.post("/v1/chat/completions", json=CHAT)
            assert degraded.status_code == 200
            stranger = http.post("/v1/chat/completions", json=CHAT,
                                 headers={"Authorization": "Bearer imp_" + "y" * 43})
            assert stranger.status_code == 503 and error_of(stranger)["code"] == "auth_unavailable"
            assert stranger.headers["retry-after"]
        finally:
            redis_server.start()
        assert http.get("/readyz").status_code == 200
        # Redis is back (empty: it keeps nothing on disk in this test): a new key works at once.
        new_key, _ = KeyStore(redis_server.client()).create("grace")
        assert http.post("/v1/chat/completions", json=CHAT,
                         headers={"Authorization": f"Bearer {new_key}"}).status_code == 200


def test_admin_paths_need_the_admin_scope(gateway_server, keys):
    user, _ = keys.create("plain-user")
    admin, _ = keys.create("operator", admin=True)
    for path in ("/v1/admin/models", "/metrics"):
        refused = httpx.get(f"{gateway_server}{path}", headers={"Authorization": f"Bearer {user}"}, timeout=10)
        assert refused.status_code == 403 and error_of(refused)["code"] == "admin_scope_required"
        # The admin key gets through.
        allowed = httpx.get(f"{gateway_server}{path}", headers={"Authorization": f"Bearer {admin}"}, timeout=10)
        assert allowed.status_code == 200
    anonymous = httpx.get(f"{gateway_server}/v1/no-such-route", timeout=10)
    assert anonymous.status_code == 401  # unknown paths reveal nothing without a key
    # Prometheus on this machine scrapes with no key; the admin API still wants one.
    assert httpx.get(f"{gateway_server}/metrics", timeout=10).status_code == 200
    assert httpx.get(f"{gateway_server}/v1/admin/models", timeout=10).status_code == 401


def test_status_needs_admin_and_describes_every_component(gateway_server, keys):
    user, _ = keys.create("status-user")
    admin, _ = keys.create("status-admin", admin=True)
    refused = httpx.get(f"{gateway_server}/v1/status", headers={"Authorization": f"Bearer {user}"}, timeout=10)
    assert refused.status_code == 403
    status = httpx.get(f"{gateway_server}/v1/status", headers={"Authorization": f"Bearer {admin}"},
                       timeout=10).json()
    assert status["status"] == "ready" and status["redis"] == "ok" and status["uptime_s"] >= 0
    assert status["versions"]["mlx"] and status["hardware"]["cores"] >= 1
    assert status["hardware"]["blas"] in ("OpenBLAS", "Accelerate (macOS)")
    expected_thermal = {"linux": "unknown"}.get(sys.platform, status["hardware"]["thermal_state"])
    assert status["hardware"]["thermal_state"] == expected_thermal
    assert expected_thermal in ("unknown", "nominal", "fair", "serious", "critical")
    (engine,) = status["engines"]
    assert engine["model"] == DEFAULT_MODEL and engine["alive"] and engine["weights_bytes"] > 100e6
    assert {"running", "waiting", "max_batch_size", "in_flight"} <= set(engine)
