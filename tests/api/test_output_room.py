"""Room for the answer (issue 14, point 4): a max_tokens beyond what the
context leaves after the prompt is clamped to that room on every route, and
the response says so in x-impetus-max-tokens; IMPETUS_MAX_TOKENS_OVERFLOW=reject
brings back OpenAI's 400 naming the parameter. A tiny random llama with a
256-token context makes running out of room cheap; its end-of-turn token is
banned where the route allows, so the answer really runs to the end of it."""

from __future__ import annotations

import httpx
import openai
import pytest

from impetus.models.gguf import import_gguf

from conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.own_server("a tiny model whose short context the tests fill, clamping and rejecting")]

TINY, CONTEXT = "tiny", 256
QUESTION = [{"role": "user", "content": "the bell"}]


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    from tiny_gguf import write_tiny_llama

    home = tmp_path_factory.mktemp("tiny-home")
    gguf = write_tiny_llama(home / "tiny.gguf", "F32")
    import_gguf(gguf, home / "models", name=TINY)
    return home


def start(home, **settings) -> tuple[Server, openai.OpenAI]:
    server = Server(home, home / f"server-{len(settings)}.log", model=TINY, **settings)
    return server, openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def clamping(tiny_home):
    server, client = start(tiny_home)
    yield client
    server.stop()


@pytest.fixture(scope="module")
def rejecting(tiny_home):
    server, client = start(tiny_home, max_tokens_overflow="reject")
    yield client
    server.stop()


def end_of_turn_id(home) -> int:
    import json

    config = json.loads((home / "models" / TINY / "config.json").read_text())
    return config["eos_token_id"]


def test_chat_max_tokens_past_the_context_is_clamped_and_runs_to_length(clamping, tiny_home):
    ban = {str(end_of_turn_id(tiny_home)): -100}
    for field in ("max_tokens", "max_completion_tokens"):
        raw = clamping.chat.completions.with_raw_response.create(
            model=TINY, messages=QUESTION, temperature=0, logit_bias=ban, **{field: 32000})
        reply = raw.parse()
        room = CONTEXT - reply.usage.prompt_tokens
        assert int(raw.headers["x-impetus-max-tokens"]) == room
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == room
    within = clamping.chat.completions.with_raw_response.create(model=TINY, messages=QUESTION, max_tokens=5)
    assert "x-impetus-max-tokens" not in within.headers and within.parse().usage.completion_tokens <= 5


def test_a_streamed_chat_is_clamped_too(clamping, tiny_home):
    ban = {str(end_of_turn_id(tiny_home)): -100}
    with clamping.chat.completions.with_streaming_response.create(
            model=TINY, messages=QUESTION, temperature=0, logit_bias=ban, max_tokens=32000, stream=True,
            stream_options={"include_usage": True}) as raw:
        granted = int(raw.headers["x-impetus-max-tokens"])
        chunks = list(raw.parse())
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == granted == CONTEXT - chunks[-1].usage.prompt_tokens


def test_completions_with_several_prompts_name_the_tightest_room(clamping, tiny_home):
    ban = {str(end_of_turn_id(tiny_home)): -100}
    prompts = [[5, 6, 7], list(range(10, 110))]  # 3 and 100 prompt tokens
    raw = clamping.completions.with_raw_response.create(model=TINY, prompt=prompts, max_tokens=1000,
                                                        temperature=0, logit_bias=ban)
    reply = raw.parse()
    assert int(raw.headers["x-impetus-max-tokens"]) == CONTEXT - 100
    assert [c.finish_reason for c in reply.choices] == ["length", "length"]
    assert reply.usage.completion_tokens == (CONTEXT - 3) + (CONTEXT - 100)


def test_responses_max_output_tokens_is_clamped(clamping):
    raw = clamping.responses.with_raw_response.create(model=TINY, input="the bell", max_output_tokens=32000,
                                                      temperature=0)
    reply = raw.parse()
    room = CONTEXT - reply.usage.input_tokens
    assert int(raw.headers["x-impetus-max-tokens"]) == room
    assert reply.usage.output_tokens <= room
    if reply.status == "incomplete":
        assert reply.incomplete_details.reason == "max_output_tokens" and reply.usage.output_tokens == room


def test_reject_brings_back_the_400_naming_the_parameter(rejecting):
    cases = [
        lambda: rejecting.chat.completions.create(model=TINY, messages=QUESTION, max_tokens=32000),
        lambda: rejecting.chat.completions.create(model=TINY, messages=QUESTION, max_completion_tokens=32000),
        lambda: rejecting.completions.create(model=TINY, prompt="the bell", max_tokens=32000),
        lambda: rejecting.responses.create(model=TINY, input="the bell", max_output_tokens=32000),
    ]
    params = []
    for case in cases:
        with pytest.raises(openai.BadRequestError) as error:
            case()
        assert error.value.body["code"] == "context_length_exceeded"
        assert "256 tokens" in error.value.body["message"]
        params.append(error.value.body["param"])
    assert params == ["max_tokens", "max_completion_tokens", "max_tokens", "max_output_tokens"]
    # Within the room it serves as usual.
    assert rejecting.chat.completions.create(model=TINY, messages=QUESTION, max_tokens=3).usage.completion_tokens


@pytest.mark.parametrize("route, body, param", [
    ("/chat/completions", {"messages": [{"role": "user", "content": "the " * 300}], "max_tokens": 4}, "messages"),
    ("/completions", {"prompt": [10] * 300, "max_tokens": 4}, "prompt"),
    ("/responses", {"input": "the " * 300}, "input"),
])
def test_a_prompt_that_alone_fills_the_context_is_400_either_way(clamping, route, body, param):
    response = httpx.post(str(clamping.base_url).rstrip("/") + route, json={"model": TINY, **body}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, "context_length_exceeded")
    assert "256 tokens" in error["message"]
