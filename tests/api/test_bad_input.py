"""Bad input gets a 4xx with an OpenAI-style error body; the server keeps serving."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
GOOD = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def post_raw(server, path: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(server.base_url + path, content=body, headers={"Content-Type": content_type}, timeout=30)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = "unset") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if param != "unset":
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    "body, param",
    [
        ({**GOOD, "max_tokens": -1}, "max_tokens"),
        ({**GOOD, "max_tokens": "ten"}, "max_tokens"),
        ({**GOOD, "messages": []}, "messages"),
        ({**GOOD, "messages": "hello"}, "messages"),
        ({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({**GOOD, "temperature": 5}, "temperature"),
        ({**GOOD, "top_p": 0}, "top_p"),
        ({**GOOD, "n": 0}, "n"),
        ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**GOOD, "logit_bias": {"abc": 1}}, "logit_bias"),
        ({**GOOD, "logit_bias": {"99999999": 1}}, "logit_bias"),
        ({**GOOD, "top_logprobs": 2}, None),
        ({**GOOD, "frobnicate": True}, "frobnicate"),
        ({"messages": GOOD["messages"]}, "model"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(server, body, param):
    error = assert_openai_error(post_raw(server, CHAT, json.dumps(body).encode()), 400, param)
    assert error["type"] == "invalid_request_error"


def test_unknown_field_message_names_it(server):
    error = assert_openai_error(post_raw(server, CHAT, json.dumps({**GOOD, "frobnicate": 1}).encode()), 400)
    assert "frobnicate" in error["message"] and error["code"] == "unknown_parameter"


def test_optional_hints_are_accepted(server):
    body = {**GOOD, "user": "alice", "metadata": {"team": "x"}, "store": False}
    assert post_raw(server, CHAT, json.dumps(body).encode()).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"[1, 2, 3]", b"\xff\xfe{\"model\": 1}", b"{\"model\": \"\xc3\x28\"}",
     b"[" * 100_000 + b"]" * 100_000, b"null"],
    ids=["malformed", "empty", "array", "bad-utf8-bom", "invalid-utf8", "deeply-nested", "null"],
)
def test_unparseable_bodies_are_400(server, raw):
    error = assert_openai_error(post_raw(server, CHAT, raw), 400)
    assert error["code"] == "invalid_json"


def test_huge_body_is_413(server):
    huge = json.dumps({**GOOD, "messages": [{"role": "user", "content": "x" * (33 * 1024 * 1024)}]}).encode()
    assert_openai_error(post_raw(server, CHAT, huge), 413)


def test_huge_chunked_body_without_length_is_413(server):
    def chunks():
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(520):  # 34 MB: past the 32 MiB limit
            yield b"x" * 65536
        yield b'"}]}'

    response = httpx.post(server.base_url + CHAT, content=chunks(), headers={"Content-Type": "application/json"},
                          timeout=30)
    assert_openai_error(response, 413)


def test_wrong_content_type_is_415(server):
    assert_openai_error(post_raw(server, CHAT, json.dumps(GOOD).encode(), "text/plain"), 415)
    assert_openai_error(post_raw(server, CHAT, b"model=x", "application/x-www-form-urlencoded"), 415)


def test_prompt_longer_than_the_context_is_400(server):
    long_prompt = "hello " * 9000  # > 8192 tokens
    body = {"model": DEFAULT_MODEL, "prompt": long_prompt, "max_tokens": 1}
    error = assert_openai_error(post_raw(server, "/v1/completions", json.dumps(body).encode()), 400, "prompt")
    assert error["code"] == "context_length_exceeded"


def test_token_prompt_outside_vocabulary_is_400(server):
    body = {"model": DEFAULT_MODEL, "prompt": [1, 2, 10_000_000], "max_tokens": 1}
    assert_openai_error(post_raw(server, "/v1/completions", json.dumps(body).encode()), 400, "prompt")


def test_unknown_route_and_method_are_openai_errors(server):
    assert_openai_error(httpx.get(server.base_url + "/v1/nothing-here", timeout=10), 404)
    assert_openai_error(httpx.get(server.base_url + CHAT, timeout=10), 405)


def test_null_bytes_and_odd_unicode_are_just_text(server):
    body = {**GOOD, "messages": [{"role": "user", "content": "a\u0000b \ud83d\ude00 \u202e \ufeff"}]}
    response = post_raw(server, CHAT, json.dumps(body).encode())
    assert response.status_code == 200
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_half_sent_request_does_not_hurt_the_server(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\":")
    # ...and it goes on answering everyone else.
    assert post_raw(server, CHAT, json.dumps(GOOD).encode()).status_code == 200


def test_server_still_serves_after_bad_input(client):
    response = client.chat.completions.create(model=DEFAULT_MODEL, temperature=0, max_tokens=8,
                                              messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in response.choices[0].message.content


def test_more_sequences_than_the_server_can_hold_is_400(server):
    # The fixture's server holds 16 running + 8 waiting; 5 prompts x n=5 = 25.
    body = {"model": DEFAULT_MODEL, "prompt": ["a", "b", "c", "d", "e"], "n": 5, "max_tokens": 1}
    error = assert_openai_error(post_raw(server, "/v1/completions", json.dumps(body).encode()), 400, "n")
    assert error["code"] == "too_many_sequences"
