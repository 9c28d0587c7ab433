"""Anthropic's Messages API through the official `anthropic` SDK, against the
real server and the default model: plain and streamed messages (event order),
tools forced and answered, stop sequences, token counting, the fields Claude
Code sends, and errors as the SDK's own exception types."""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0}  # current SDKs leave sampling out of their signatures; older clients send it
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def test_a_message_and_its_usage(claude):
    message = claude.messages.create(model=DEFAULT_MODEL, max_tokens=24, extra_body=GREEDY, messages=QUESTION,
                                     system="Answer in one short sentence.")
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.model == DEFAULT_MODEL
    assert [b.type for b in message.content] == ["text"] and "Paris" in message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    usage = message.usage
    counted = claude.messages.count_tokens(model=DEFAULT_MODEL, messages=QUESTION,
                                           system="Answer in one short sentence.")
    assert counted.input_tokens == usage.input_tokens + usage.cache_read_input_tokens > 10
    assert 0 < usage.output_tokens <= 24


def test_a_streamed_message_sends_anthropics_events_in_order(claude):
    kwargs = dict(model=DEFAULT_MODEL, max_tokens=20, extra_body=GREEDY, messages=QUESTION)
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    raw = [k for k in kinds if k in ("message_start", "content_block_start", "content_block_delta",
                                     "content_block_stop", "message_delta", "message_stop")]
    assert raw[0] == "message_start" and raw[1] == "content_block_start"
    assert set(raw[2:-3]) == {"content_block_delta"}
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert final.content[0].text == whole.content[0].text  # greedy: the same answer both ways
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens


def test_a_forced_tool_call_and_its_result(claude):
    asked = [{"role": "user", "content": "What is the weather in Paris?"}]
    message = claude.messages.create(model=DEFAULT_MODEL, max_tokens=100, messages=asked, tools=[WEATHER],
                                     extra_body=GREEDY,
                                     tool_choice={"type": "tool", "name": "get_weather"})
    assert message.stop_reason == "tool_use"
    [call] = [b for b in message.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    jsonschema.validate(call.input, WEATHER["input_schema"])
    answer = claude.messages.create(model=DEFAULT_MODEL, max_tokens=30, tools=[WEATHER], messages=asked + [
        {"role": "assistant", "content": [block.model_dump() for block in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": [{"type": "text", "text": "Sunny, 24 degrees"}]}]},
    ])
    assert answer.content and answer.content[0].type == "text" and answer.content[0].text
    assert answer.usage.input_tokens + answer.usage.cache_read_input_tokens > message.usage.input_tokens


def test_a_streamed_tool_call_arrives_as_input_json(claude):
    with claude.messages.stream(model=DEFAULT_MODEL, max_tokens=100, tools=[WEATHER], extra_body=GREEDY,
                                tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "Weather in Rome?"}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    assert [b.type for b in starts] == ["tool_use"]
    partial = "".join(e.delta.partial_json for e in events
                      if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
    [call] = final.content
    assert json.loads(partial) == call.input and final.stop_reason == "tool_use"
    jsonschema.validate(call.input, WEATHER["input_schema"])


def test_a_stop_sequence_is_named(claude):
    message = claude.messages.create(model=DEFAULT_MODEL, max_tokens=80, extra_body=GREEDY, stop_sequences=["7"],
                                     messages=[{"role": "user", "content": "Count from 1 to 20, one per line."}])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "7"
    assert "7" not in message.content[0].text and "6" in message.content[0].text


def test_what_claude_code_sends_is_accepted(server):
    """Captured shape: ?beta=true, 32000 max_tokens, system blocks with
    cache_control, a system turn mid-conversation, thinking, output_config,
    context_management, metadata; max_tokens is granted what the context holds."""
    body = {
        "model": DEFAULT_MODEL, "max_tokens": 32000, "stream": True, "temperature": 0,
        "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello.",
                                                   "cache_control": {"type": "ephemeral"}}]},
                     {"role": "system", "content": "Be brief."}],
        "tools": [{**WEATHER, "cache_control": {"type": "ephemeral"}},
                  {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
        "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": "user_abc"},
    }
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking-2025-05-14",
               "x-api-key": "unused"}
    with httpx.stream("POST", f"{server.base_url}/v1/messages?beta=true", json=body, headers=headers,
                      timeout=120) as response:
        assert response.status_code == 200, response.read()
        granted = int(response.headers["x-impetus-max-tokens"])
        lines = response.iter_lines()
        assert next(lines) == "event: message_start"
        start = json.loads(next(lines).removeprefix("data: "))
    assert 8000 < granted < 8192 and start["message"]["usage"]["input_tokens"] + granted == 8192


@pytest.mark.parametrize("body, status, kind, names", [
    ({"messages": QUESTION}, 400, "invalid_request_error", "max_tokens"),
    ({"messages": QUESTION, "max_tokens": 5, "frequency": 1}, 400, "invalid_request_error", "frequency"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}], "max_tokens": 5},
     400, "invalid_request_error", "does not take images"),
    ({"messages": [{"role": "user", "content": "word " * 9000}], "max_tokens": 5}, 400,
     "invalid_request_error", "8192"),
    ({"model": "no-such-model", "messages": QUESTION, "max_tokens": 5}, 404, "not_found_error", "no-such-model"),
])
def test_errors_come_in_anthropics_shape(server, body, status, kind, names):
    response = httpx.post(f"{server.base_url}/v1/messages", json={"model": DEFAULT_MODEL, **body}, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == kind
    assert names in error["error"]["message"]


def test_the_sdk_raises_its_own_exceptions(claude):
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=5, messages=QUESTION)
    with pytest.raises(anthropic.BadRequestError) as error:
        claude.messages.create(model=DEFAULT_MODEL, max_tokens=5, messages=[])
    assert error.value.body["error"]["type"] == "invalid_request_error"


def test_keys_by_x_api_key_or_bearer_and_limits(gateway_server, redis_client):
    keys = KeyStore(redis_client)
    key, _ = keys.create("claude-user")
    limited, _ = keys.create("claude-limited", rpm=1)
    for client in (anthropic.Anthropic(base_url=gateway_server, api_key=key, max_retries=0),  # x-api-key
                   anthropic.Anthropic(base_url=gateway_server, auth_token=key, max_retries=0)):  # Bearer
        assert client.messages.create(model=DEFAULT_MODEL, max_tokens=3, messages=QUESTION).content
    with pytest.raises(anthropic.AuthenticationError) as error:
        anthropic.Anthropic(base_url=gateway_server, api_key="imp_wrong", max_retries=0).messages.create(
            model=DEFAULT_MODEL, max_tokens=3, messages=QUESTION)
    assert error.value.body["error"]["type"] == "authentication_error"
    client = anthropic.Anthropic(base_url=gateway_server, api_key=limited, max_retries=0)
    client.messages.create(model=DEFAULT_MODEL, max_tokens=3, messages=QUESTION)
    with pytest.raises(anthropic.RateLimitError) as error:
        client.messages.create(model=DEFAULT_MODEL, max_tokens=3, messages=QUESTION)
    assert error.value.response.headers["retry-after"]
