"""Tool calling through the openai client and LangChain: a call, the result
sent back, an answer; streamed tool-call deltas as OpenAI sends them."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from impetus.api.tools import parse_auto

MODEL = "smollm2-135m-instruct"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}


def test_auto_output_is_parsed_into_calls_of_known_functions():
    from impetus.api.chat_schemas import Tool

    tools = [Tool.model_validate(WEATHER)]
    calls, text = parse_auto('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}'
                             '</tool_call><tool_call>{"name": "unknown", "arguments": {}}</tool_call>', None, tools)
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo", "unit": "celsius"}
    assert "unknown" in text  # not a known function: left as the model wrote it
    assert parse_auto("<tool_call>not json</tool_call>", None, tools) == ([], "<tool_call>not json</tool_call>")


@pytest.mark.slow
def test_a_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, ADD],
                                           tool_choice="required", temperature=0, max_tokens=80)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    schema = {WEATHER["function"]["name"]: WEATHER, ADD["function"]["name"]: ADD}[call.function.name]
    jsonschema.validate(arguments, schema["function"]["parameters"])
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18})}]
    answer = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, ADD],
                                            temperature=0, max_tokens=40)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result were in the prompt


@pytest.mark.slow
def test_a_named_function_is_streamed_as_tool_call_deltas(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Add 2 and 3."}], tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "add"}}, temperature=0, max_tokens=40, stream=True)
    chunks = [c for c in stream if c.choices]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "add" and deltas[0].index == 0
    arguments = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(arguments), ADD["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks)


@pytest.mark.slow
def test_tool_choice_none_and_auto_answer_in_text(client):
    for choice in ("none", "auto"):
        response = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}], tools=[WEATHER], tool_choice=choice,
            temperature=0, max_tokens=16)
        assert response.choices[0].message.content and "<tool_call>" not in response.choices[0].message.content


@pytest.mark.slow
@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [ADD], "tool_choice": "required",
      "messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
])
def test_bad_tool_requests_are_400s(server, extra, param):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param)


@pytest.mark.slow
def test_langchain_agent_style_tool_round_trip(server):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = ChatOpenAI(model=MODEL, base_url=f"{server.base_url}/v1", api_key="unused", temperature=0, max_tokens=60)
    bound = llm.bind_tools([add], tool_choice="add")
    messages = [HumanMessage("What is 2 plus 3?")]
    reply = bound.invoke(messages)
    [call] = reply.tool_calls
    assert call["name"] == "add" and set(call["args"]) == {"a", "b"}
    result = add.invoke(call["args"])
    messages += [reply, ToolMessage(str(result), tool_call_id=call["id"])]
    final = llm.bind_tools([add]).invoke(messages)
    assert isinstance(final.content, str) and final.content
