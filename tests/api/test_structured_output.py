"""response_format through the openai client: the default 135M model returns
schema-valid JSON every time, because decoding is constrained."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
# Nested: an object in an object, an array of objects, enums, bounds, a pattern.
ORDER = {
    "type": "object",
    "properties": {
        "customer": {"type": "object", "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 40},
            "email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,12}\\.com$"}},
            "required": ["name", "email"], "additionalProperties": False},
        "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object", "properties": {
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                "size": {"enum": ["S", "M", "L"]}},
            "required": ["sku", "quantity", "size"], "additionalProperties": False}},
        "express": {"type": "boolean"},
    },
    "required": ["customer", "items", "express"],
    "additionalProperties": False,
}


def test_twenty_requests_against_a_nested_schema_all_validate(client):
    """Sent together: twenty grammars masking rows of one batch."""
    from concurrent.futures import ThreadPoolExecutor

    def order(i: int):
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Order number {i}: write it as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER,
                                                                    "strict": True}},
            temperature=1.0, seed=i, max_tokens=300)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(order, range(20)))
    for response in responses:
        choice = response.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), ORDER)


def test_json_object_mode_streams_an_object(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a cat in JSON with two keys."}],
        response_format={"type": "json_object"}, temperature=0.7, seed=3, max_tokens=120, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith("{")
    # json_object allows any object; a 135M model may run to max_tokens inside one,
    # but whatever it wrote is a valid prefix of one (never free text).
    try:
        assert isinstance(json.loads(text), dict)
    except ValueError:
        assert not text.rstrip().endswith("}")


def test_langchain_structured_output(server):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=30)
        country: str = Field(max_length=30)
        population_thousands: int = Field(ge=0, le=100_000)

    llm = ChatOpenAI(model=MODEL, base_url=f"{server.base_url}/v1", api_key="unused", temperature=0, max_tokens=150)
    city = llm.with_structured_output(City, method="json_schema").invoke("Tell me about Paris.")
    assert isinstance(city, City) and city.name


@pytest.mark.parametrize("response_format, message", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}, "cannot be enforced"),
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema", "json_schema": {"name": "has spaces", "schema": {}}}, "name"),
])
def test_bad_formats_are_400s(server, response_format, message):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "response_format": response_format})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("response_format") and message in (error["message"] + error["param"])


def test_tools_in_auto_mode_with_a_response_format_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], response_format={"type": "json_object"},
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert error.value.body["param"] == "response_format"
