"""POST /v1/responses through the official openai client: a plain answer, the
typed event stream, structured text, and what is refused."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


def test_a_response_answers_and_counts_its_tokens(client):
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "You are brief."},
                               {"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=12)
    response = client.responses.create(model=MODEL, instructions="You are brief.",
                                       input="What is the capital of France?", temperature=0, max_output_tokens=12)
    assert response.object == "response" and response.id.startswith("resp_")
    # The same engine and template as chat: the same greedy answer, the same token counts.
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"


def test_streaming_sends_the_typed_events_in_order(client):
    events = list(client.responses.create(model=MODEL, input=[{"role": "user", "content": "Say hello."}],
                                          temperature=0, max_output_tokens=10, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert deltas and deltas == done.text == events[-1].response.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_structured_text_format(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "country": {"type": "string", "maxLength": 30}},
              "required": ["city", "country"], "additionalProperties": False}
    response = client.responses.create(model=MODEL, input="Name a city.", max_output_tokens=60, temperature=0.8,
                                       text={"format": {"type": "json_schema", "name": "place", "schema": schema}})
    assert set(json.loads(response.output_text)) == {"city", "country"}


@pytest.mark.parametrize("body, param", [
    ({"input": ""}, "input"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "hi", "tools": [{"type": "function"}]}, "tools"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]}, "input.0"),
    ({"input": "hi", "chat_template_kwargs": {}}, "chat_template_kwargs"),
    ({"input": "hi", "text": {"format": {"type": "json_schema"}}}, "text.format"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input"),
])
def test_what_is_not_supported_is_a_clear_400(server, body, param):
    response = httpx.post(f"{server.base_url}/v1/responses", json={"model": MODEL, **body}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")


def test_input_longer_than_the_context_is_a_400_naming_input(server):
    response = httpx.post(f"{server.base_url}/v1/responses", timeout=60,
                          json={"model": MODEL, "input": "word " * 9000})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("input", "context_length_exceeded")
