"""Reasoning kept apart from the answer on every route (issue 14, point 3),
against a real server and a tiny random llama whose template opens a think
block, as Qwen3's does (tests/tiny_gguf.py). The raw output is what
/v1/completions generates greedily from the same rendered prompt; a question
whose answer closes the think block midway is searched for (the weights are
seeded, so it is the same one every run). Then chat completions
(`reasoning_content`, whole and streamed), the Messages API (`thinking`
blocks) and the Responses API (a `reasoning` item) must split it exactly
there, and `chat_template_kwargs` {"enable_thinking": false} (Messages:
thinking disabled; Responses: reasoning effort none) must reach the template."""

from __future__ import annotations

import anthropic
import openai
import pytest

from impetus.models.gguf import import_gguf

from conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.own_server("a tiny model with a reasoning chat template")]

TINY, TOKENS = "thinker", 24
OPEN = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n"
CLOSED = OPEN + "\n</think>\n\n"  # the template with enable_thinking false


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tiny_gguf import write_tiny_llama

    home = tmp_path_factory.mktemp("thinker-home")
    import_gguf(write_tiny_llama(home / "tiny.gguf", "F32", thinking=True), home / "models", name=TINY)
    server = Server(home, home / "server.log", model=TINY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def case(client):
    """A question, and the raw greedy output it gets: a thought closed midway, then an answer."""
    for number in range(300):
        question = f"the bell {number}"
        raw = client.completions.create(model=TINY, prompt=OPEN.format(question), temperature=0,
                                        max_tokens=TOKENS).choices[0].text
        thought, marker, answer = raw.partition("</think>")
        if marker and thought.strip() and answer.strip() and "<think>" not in raw and "</think>" not in answer:
            return question, thought, answer.lstrip()
    pytest.fail("no question among 300 has a greedy answer that closes its thought midway")


def test_chat_completions_returns_reasoning_content_apart(client, case):
    question, thought, answer = case
    messages = [{"role": "user", "content": question}]
    reply = client.chat.completions.create(model=TINY, messages=messages, temperature=0, max_tokens=TOKENS)
    message = reply.choices[0].message
    assert (message.reasoning_content, message.content) == (thought, answer)

    chunks = list(client.chat.completions.create(model=TINY, messages=messages, temperature=0, max_tokens=TOKENS,
                                                 stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == thought
    assert "".join(d.content or "" for d in deltas) == answer
    # Every reasoning delta comes before the answer's first text.
    kinds = ["r" if getattr(d, "reasoning_content", None) else "c" for d in deltas if
             getattr(d, "reasoning_content", None) or d.content]
    assert kinds == sorted(kinds, reverse=True)


def test_messages_returns_thinking_blocks(served, case):
    question, thought, answer = case
    claude = anthropic.Anthropic(base_url=served.base_url, api_key="unused", max_retries=0, timeout=60)
    kwargs = dict(model=TINY, max_tokens=TOKENS, messages=[{"role": "user", "content": question}],
                  extra_body={"temperature": 0})
    message = claude.messages.create(**kwargs)
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content] == [
        ("thinking", thought), ("text", answer)]
    with claude.messages.stream(**kwargs) as stream:
        events = [e for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "".join(e.delta.thinking for e in events if e.delta.type == "thinking_delta") == thought
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[1].text == answer


def test_responses_returns_a_reasoning_item(client, case):
    question, thought, answer = case
    response = client.responses.create(model=TINY, input=question, temperature=0, max_output_tokens=TOKENS)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == thought
    assert message.type == "message" and response.output_text == answer
    assert 0 < response.usage.output_tokens_details.reasoning_tokens < response.usage.output_tokens
    events = list(client.responses.create(model=TINY, input=question, temperature=0, max_output_tokens=TOKENS,
                                          stream=True))
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == thought
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == answer


def test_thinking_turned_off_reaches_the_template(client, served, case):
    question = case[0]
    raw = client.completions.create(model=TINY, prompt=CLOSED.format(question), temperature=0, max_tokens=TOKENS)
    messages = [{"role": "user", "content": question}]
    reply = client.chat.completions.create(model=TINY, messages=messages, temperature=0, max_tokens=TOKENS,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert reply.usage.prompt_tokens == raw.usage.prompt_tokens
    message = reply.choices[0].message
    assert getattr(message, "reasoning_content", None) is None
    assert message.content == raw.choices[0].text.partition("<think>")[0]

    claude = anthropic.Anthropic(base_url=served.base_url, api_key="unused", max_retries=0, timeout=60)
    plain = claude.messages.create(model=TINY, max_tokens=TOKENS, messages=messages, extra_body={"temperature": 0},
                                   thinking={"type": "disabled"})
    assert plain.usage.input_tokens + plain.usage.cache_read_input_tokens == raw.usage.prompt_tokens
    assert plain.content[0].type == "text"
    response = client.responses.create(model=TINY, input=question, temperature=0, max_output_tokens=TOKENS,
                                       reasoning={"effort": "none"})
    assert response.usage.input_tokens == raw.usage.prompt_tokens and response.output[0].type == "message"


def test_reserved_template_arguments_are_refused(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                       extra_body={"chat_template_kwargs": {"add_generation_prompt": False}})
    assert refused.value.body["param"] == "chat_template_kwargs"

