"""The response cache through a real server and redis-server."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow

QUESTION = {"model": DEFAULT_MODEL, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}


@pytest.fixture
def http(gateway_server, redis_client):
    key, _ = KeyStore(redis_client).create("cache-user")
    with httpx.Client(base_url=gateway_server, timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
        client.key = key
        yield client


def chat(http, body=QUESTION, **headers):
    return http.post("/v1/chat/completions", json=body, headers=headers)


def test_deterministic_request_is_answered_from_cache(http):
    first, second = chat(http), chat(http)
    assert (first.headers["x-impetus-cache"], second.headers["x-impetus-cache"]) == ("miss", "hit")
    assert first.json()["choices"] == second.json()["choices"]
    assert first.json()["usage"] == second.json()["usage"]
    assert first.json()["id"] != second.json()["id"]
    # Defaults filled in and key order do not matter: this is the same request.
    same = dict(reversed(list({**QUESTION, "top_p": 0.9, "n": 1}.items())))  # top_p: the model's own default
    assert chat(http, same).headers["x-impetus-cache"] == "hit"


def test_streaming_hit_is_replayed_as_a_stream(http):
    whole = chat(http).json()
    text, finish = whole["choices"][0]["message"]["content"], whole["choices"][0]["finish_reason"]
    client = openai.OpenAI(base_url=str(http.base_url.join("/v1")), api_key=http.key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(**QUESTION, stream=True,
                                                           stream_options={"include_usage": True})
    assert raw.headers["x-impetus-cache"] == "hit"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [finish]
    assert chunks[-1].usage.completion_tokens == whole["usage"]["completion_tokens"]


def test_a_streamed_miss_fills_the_cache(http):
    body = {**QUESTION, "messages": [{"role": "user", "content": "Name a color."}], "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["x-impetus-cache"] == "miss"
        streamed = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                           for line in response.iter_lines()
                           if line.startswith("data: {") and json.loads(line[6:])["choices"])
    again = chat(http, {**body, "stream": False})
    assert again.headers["x-impetus-cache"] == "hit"
    assert again.json()["choices"][0]["message"]["content"] == streamed


def test_sampled_requests_bypass_and_seeded_ones_are_cached(http):
    sampled = {**QUESTION, "temperature": 0.8}
    assert chat(http, sampled).headers["x-impetus-cache"] == "bypass"
    seeded = {**sampled, "seed": 123}
    assert [chat(http, seeded).headers["x-impetus-cache"] for _ in range(2)] == ["miss", "hit"]


def test_no_cache_header_opts_out(http):
    chat(http)
    assert chat(http, **{"Cache-Control": "no-cache"}).headers["x-impetus-cache"] == "bypass"


def test_text_completions_are_cached_too(http):
    body = {"model": DEFAULT_MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    first, second = (http.post("/v1/completions", json=body) for _ in range(2))
    assert (first.headers["x-impetus-cache"], second.headers["x-impetus-cache"]) == ("miss", "hit")
    assert first.json()["choices"] == second.json()["choices"]


def test_hits_count_as_requests_but_cost_no_tokens(gateway_server, redis_client):
    keys = KeyStore(redis_client)
    key, _ = keys.create("thrifty", rpm=4, tpm=20)
    with httpx.Client(base_url=gateway_server, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        assert chat(http).headers["x-impetus-cache"] == "miss"  # spends the whole token budget
        hit = chat(http)
        assert hit.status_code == 200 and hit.headers["x-impetus-cache"] == "hit"
        other = chat(http, {**QUESTION, "messages": [{"role": "user", "content": "And Spain?"}]})
        assert other.status_code == 429 and other.json()["error"]["code"] == "rate_limit_tokens"
        assert chat(http).headers["x-impetus-cache"] == "hit"  # 4th request: still within 4 per minute
        fifth = chat(http)
        assert fifth.status_code == 429 and fifth.json()["error"]["code"] == "rate_limit_requests"
    (_, usage), = [(r, u) for r, u in keys.list() if r.name == "thrifty"]
    assert usage["requests"] == "3"  # the miss and two hits; refused requests are not usage
    assert int(usage["prompt_tokens"]) > 0
