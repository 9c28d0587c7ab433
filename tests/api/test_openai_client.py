"""The official openai client against a real Gunicorn + gevent server."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest

from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_completion(client):
    response = client.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, temperature=0)
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    assert response.object == "chat.completion"
    assert response.usage.prompt_tokens > 10
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_usage_counts_are_exact(client, loaded_model):
    tokenizer = loaded_model.tokenizer
    response = client.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, temperature=0,
                                              max_tokens=6)
    expected_prompt = len(tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION[0]["content"]}], add_generation_prompt=True))
    assert response.usage.prompt_tokens == expected_prompt
    assert response.usage.completion_tokens == 6
    assert response.choices[0].finish_reason == "length"
    assert len(tokenizer.encode(response.choices[0].message.content)) == 6


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert "Paris" in text
    assert finishes == ["stop"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    # The same text as the non-streaming answer.
    whole = client.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, temperature=0)
    assert whole.choices[0].message.content == text


def test_stream_ends_with_done(server):
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", timeout=60, json={
        "model": DEFAULT_MODEL, "messages": QUESTION, "max_tokens": 3, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_n_choices_and_logprobs(client):
    response = client.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, temperature=0.8, seed=1,
                                              n=2, max_tokens=5, logprobs=True, top_logprobs=2)
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        assert len(choice.logprobs.content) == 5
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in choice.logprobs.content)
    assert response.usage.completion_tokens == 10


def test_text_completion_keeps_the_leading_space(client):
    response = client.completions.create(model=DEFAULT_MODEL, prompt="The capital of France is", max_tokens=3,
                                         temperature=0)
    assert response.choices[0].text.startswith(" Paris")
    assert response.usage.prompt_tokens == 5


def test_text_completion_streaming_with_stop_and_echo(client):
    stream = client.completions.create(model=DEFAULT_MODEL, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0,
                                       stop=["8"], echo=True, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks)
    assert text.startswith("1, 2, 3, 4,")
    assert "7" in text and "8" not in text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [DEFAULT_MODEL, "all-minilm-l6-v2"]  # the chat model, then the embedding model
    assert client.models.retrieve(DEFAULT_MODEL).owned_by == "impetus"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_errors_surface_as_openai_exceptions(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=[], max_tokens=5)
    assert error.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert error.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "word " * 9000}])
    assert error.value.body["code"] == "context_length_exceeded"


def _stream_text(client, question: str) -> str:
    stream = client.chat.completions.create(model=DEFAULT_MODEL, temperature=0, max_tokens=24, stream=True,
                                            messages=[{"role": "user", "content": question}])
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_sixteen_concurrent_streams_match_their_solo_answers(client, server):
    questions = [f"Name a fruit that starts with the letter {chr(65 + i)}." for i in range(16)]
    solo = {q: _stream_text(client, q) for q in questions[:3]}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda q: _stream_text(client, q), questions))
    assert all(together)
    assert [together[i] for i in range(3)] == [solo[q] for q in questions[:3]]
    assert len(set(together)) > 8  # each request got its own answer


def _engine(server) -> dict:
    return httpx.get(f"{server.base_url}/readyz", timeout=10).json()["engines"][0]


def _wait_for(server, condition, timeout: float = 30) -> dict:
    """Engine counters once `condition(counters)` holds (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        state = _engine(server)
        if condition(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def _wait_for_cancellation(server, before: dict) -> dict:
    return _wait_for(server, lambda s: s["cancelled"] > before["cancelled"] and s["running"] == 0)


def test_client_disconnect_mid_stream_frees_its_slot(server):
    before = _engine(server)
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", timeout=60, json={
        "model": DEFAULT_MODEL, "stream": True, "max_tokens": 1000, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}]}) as response:
        received = 0
        for line in response.iter_lines():
            received += bool(line)
            if received >= 5:
                break  # leaving the block closes the connection mid-stream
    state = _wait_for_cancellation(server, before)
    assert state["cancelled"] == before["cancelled"] + 1
    assert state["running"] == 0
    assert state["generated_tokens"] - before["generated_tokens"] < 1000


def test_client_disconnect_while_waiting_non_streaming_frees_its_slot(server):
    before = _engine(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/chat/completions", timeout=1.5, json={
            "model": DEFAULT_MODEL, "max_tokens": 1000, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}]})
    state = _wait_for_cancellation(server, before)
    assert state["cancelled"] == before["cancelled"] + 1
    assert state["running"] == 0


def test_full_queue_answers_503_with_retry_after(server):
    # The fixture's server admits 16 running + 8 waiting.
    body = {"model": DEFAULT_MODEL, "max_tokens": 200, "stream": True,
            "messages": [{"role": "user", "content": "Tell me a long story."}]}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        streams = []
        try:
            for _ in range(24):
                stream = http.stream("POST", "/v1/chat/completions", json=body)
                response = stream.__enter__()
                streams.append(stream)
                assert response.status_code == 200
            refused = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "queue_full"
    # The closed streams are cancelled and their slots freed.
    state = _wait_for(server, lambda s: s["in_flight"] == 0, timeout=60)
    assert (state["in_flight"], state["running"], state["waiting"]) == (0, 0, 0)


def test_streaming_several_choices(client):
    stream = client.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, temperature=0.9, seed=3, n=2,
                                            max_tokens=6, stream=True, stream_options={"include_usage": True})
    texts, finishes = {0: "", 1: ""}, {}
    usage = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert set(finishes) == {0, 1}
    assert all(texts.values())
    if all(reason == "length" for reason in finishes.values()):
        assert usage.completion_tokens == 12
    else:
        assert 2 <= usage.completion_tokens < 12


def test_follow_up_turn_reports_cached_prompt_tokens(client):
    first = [{"role": "user", "content": "Describe a sunrise over the sea in two sentences."}]
    reply = client.chat.completions.create(model=DEFAULT_MODEL, messages=first, temperature=0, max_tokens=40)
    follow_up = first + [{"role": "assistant", "content": reply.choices[0].message.content},
                         {"role": "user", "content": "Now a sunset."}]
    second = client.chat.completions.create(model=DEFAULT_MODEL, messages=follow_up, temperature=0, max_tokens=5)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # The whole first exchange was prefilled already; only the new turn is new work.
    assert cached >= reply.usage.prompt_tokens
    assert cached < second.usage.prompt_tokens
