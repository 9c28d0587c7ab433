"""The Responses API as agents use it (issue 14, point 2), through the official
openai client against a real two-worker server with keys on a real Redis:
function tools forced and called, the result sent back with
previous_response_id, stored responses fetched and deleted by their own key
only, the streamed function-call events in order, namespaces flattened and
built-in tools dropped."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city",
           "strict": False,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                          "required": ["city"], "additionalProperties": False}}
ADD = {"type": "function", "name": "add", "description": "Add two integers",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                      "required": ["a", "b"], "additionalProperties": False}}
FORCED = {"type": "function", "name": "get_weather"}
QUESTION = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def keys(redis_server):
    store = KeyStore(redis_server.client())
    made = [store.create(f"responses-{name}") for name in ("alice", "bob")]
    yield [key for key, _ in made]
    for _, record in made:
        store.revoke(record.name)


def client_for(gateway_server, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_server}/v1", api_key=key, max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def alice(gateway_server, keys):
    return client_for(gateway_server, keys[0])


@pytest.fixture(scope="module")
def bob(gateway_server, keys):
    return client_for(gateway_server, keys[1])


def test_a_forced_call_its_output_sent_back_and_the_stored_conversation(alice, bob):
    first = alice.responses.create(model=DEFAULT_MODEL, input=QUESTION, tools=[WEATHER], tool_choice=FORCED,
                                   temperature=0, max_output_tokens=60)
    assert first.status == "completed" and first.store is True
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert first.usage.output_tokens > 0

    second = alice.responses.create(
        model=DEFAULT_MODEL, previous_response_id=first.id, tools=[WEATHER], temperature=0, max_output_tokens=30,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny", "c": 21}'}])
    assert second.previous_response_id == first.id
    assert [item.type for item in second.output] == ["message"] and second.output_text.strip()
    # The whole conversation was rendered: the question, the call and its result come before the new input.
    assert second.usage.input_tokens > first.usage.input_tokens + 10

    fetched = alice.responses.retrieve(first.id)  # from either worker: the store is Redis
    assert fetched.id == first.id and fetched.output[0].call_id == call.call_id
    items = alice.responses.input_items.list(second.id)
    assert [item.type for item in items.data] == ["function_call_output"]

    # Another key: as if it did not exist, to fetch, continue or delete.
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model=DEFAULT_MODEL, previous_response_id=first.id, input="And tomorrow?",
                             max_output_tokens=5)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(first.id)

    alice.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        alice.responses.create(model=DEFAULT_MODEL, previous_response_id=first.id, input="And tomorrow?",
                               max_output_tokens=5)


def test_store_false_keeps_nothing(alice):
    response = alice.responses.create(model=DEFAULT_MODEL, input="Hi", store=False, max_output_tokens=3)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(response.id)


def test_streamed_function_call_events_in_order(alice):
    events = list(alice.responses.create(model=DEFAULT_MODEL, input=QUESTION, tools=[WEATHER],
                                         tool_choice=FORCED, temperature=0, max_output_tokens=60, stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    added, delta, done, item_done, completed = events[2:]
    assert added.item.type == "function_call" and added.item.arguments == "" and added.item.status == "in_progress"
    assert delta.delta == done.arguments == item_done.item.arguments == completed.response.output[0].arguments
    assert item_done.item.call_id == added.item.call_id == completed.response.output[0].call_id
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert completed.response.usage.input_tokens_details.cached_tokens >= 0
    jsonschema.validate(json.loads(done.arguments), WEATHER["parameters"])


def test_namespaces_are_flattened_and_built_in_tools_dropped(gateway_server, keys):
    body = {"model": DEFAULT_MODEL, "input": "Add 2 and 3.", "temperature": 0, "max_output_tokens": 40,
            "tool_choice": "required", "store": False,
            "tools": [{"type": "web_search", "external_web_access": False}, {"type": "code_interpreter"},
                      {"type": "namespace", "name": "math", "description": "Arithmetic", "tools": [ADD]}]}
    reply = httpx.post(f"{gateway_server}/v1/responses", json=body, timeout=180,
                       headers={"Authorization": f"Bearer {keys[0]}"})
    assert reply.status_code == 200, reply.text
    [call] = reply.json()["output"]
    assert (call["type"], call["name"], call["namespace"]) == ("function_call", "add", "math")
    jsonschema.validate(json.loads(call["arguments"]), ADD["parameters"])
    assert [t["name"] for t in reply.json()["tools"]] == ["add"]
