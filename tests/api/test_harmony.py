"""gpt-oss's harmony channels (api.harmony) on every protocol face: `analysis`
to each protocol's reasoning field, `final` to the answer, a `commentary`
message to `functions.NAME` to a tool call, whole and streamed; reasoning
effort to the template's "Reasoning:" line. Against a real server and a tiny
gpt-oss imported from GGUF that writes its channels by construction
(tests/tiny_harmony.py), and in-process over text cut at every place."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from impetus.api.chat_schemas import Tool
from impetus.api.harmony import HarmonyParser
from impetus.api.output import REASONING, TEXT
from impetus.models.gguf import import_gguf

from conftest import Server

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
THOUGHT, ANSWER = "Thinking hard.", "Paris."


def parse(text: str, size: int, tool_list=()) -> tuple[list[tuple[str, str]], list[dict]]:
    parser = HarmonyParser(None, "auto" if tool_list else None, [Tool.model_validate(t) for t in tool_list])
    chunks = [text[i:i + size] for i in range(0, len(text), size)] or [""]
    parts = [part for chunk in chunks[:-1] for part in parser.feed(chunk)]
    more, calls = parser.finish(chunks[-1])
    merged: list[tuple[str, str]] = []
    for kind, piece in parts + more:
        merged[-1:] = [(kind, merged[-1][1] + piece)] if merged and merged[-1][0] == kind else merged[-1:] + [
            (kind, piece)]
    return merged, calls


ANALYSIS = "<|channel|>analysis<|message|>Is 4 < 5? <b>Yes</b>.<|end|>"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 1000])
def test_channels_however_the_text_is_cut(size):
    final = ANALYSIS + "<|start|>assistant<|channel|>final<|message|>It is: 4 < 5."
    assert parse(final, size) == ([(REASONING, "Is 4 < 5? <b>Yes</b>."), (TEXT, "It is: 4 < 5.")], [])
    # A call, its recipient after the channel or before it; json's <|constrain|> or a bare content type.
    for header in ("<|channel|>commentary to=functions.get_weather <|constrain|>json",
                   " to=functions.get_weather<|channel|>commentary json"):
        parts, calls = parse(ANALYSIS + f"<|start|>assistant{header}<|message|>{{\"city\": \"Oslo\"}}", size,
                             [WEATHER])
        assert parts == [(REASONING, "Is 4 < 5? <b>Yes</b>.")]
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
            ("get_weather", {"city": "Oslo"})]
    # Commentary to nobody is a preamble for the user; a call of an unknown function stays text.
    preamble = "<|channel|>commentary<|message|>Let me check.<|end|><|start|>assistant<|channel|>commentary " \
               "to=functions.launch <|constrain|>json<|message|>{}"
    assert parse(preamble, size, [WEATHER]) == ([(TEXT, "Let me check.{}")], [])
    # Not harmony at all: text as it came; a header cut off by the token limit says nothing.
    assert parse("Just text, no <|channel|", size) == ([(TEXT, "Just text, no <|channel|")], [])
    assert parse(ANALYSIS + "<|start|>assistant<|chan", size) == ([(REASONING, "Is 4 < 5? <b>Yes</b>.")], [])


# -- a real server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tiny_harmony import SCRIPTS, write_harmony

    home = tmp_path_factory.mktemp("harmony-home")
    for name, (script, end) in SCRIPTS.items():
        import_gguf(write_harmony(home / f"{name}.gguf", script, end), home / "models", name=name)
    server = Server(home, home / "server.log", model="oss-think")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def claude(served):
    return anthropic.Anthropic(base_url=served.base_url, api_key="unused", max_retries=0, timeout=120)




@pytest.mark.slow
@pytest.mark.own_server("a tiny gpt-oss that writes harmony's channels")
def test_analysis_and_final_reach_every_protocols_fields(client, claude):
    reply = client.chat.completions.create(model="oss-think", messages=QUESTION, temperature=0, max_tokens=40)
    message = reply.choices[0].message
    assert (message.reasoning_content, message.content, reply.choices[0].finish_reason) == (THOUGHT, ANSWER, "stop")
    deltas = [c.choices[0].delta for c in client.chat.completions.create(
        model="oss-think", messages=QUESTION, temperature=0, max_tokens=40, stream=True) if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == THOUGHT
    assert "".join(d.content or "" for d in deltas) == ANSWER

    kwargs = dict(model="oss-think", max_tokens=40, messages=QUESTION, extra_body={"temperature": 0})
    said = claude.messages.create(**kwargs)
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in said.content] == [
        ("thinking", THOUGHT), ("text", ANSWER)]
    with claude.messages.stream(**kwargs) as stream:
        deltas = [e.delta for e in stream if e.type == "content_block_delta"]
    assert "".join(d.thinking for d in deltas if d.type == "thinking_delta") == THOUGHT
    assert "".join(d.text for d in deltas if d.type == "text_delta") == ANSWER

    response = client.responses.create(model="oss-think", input=QUESTION[0]["content"], temperature=0,
                                       max_output_tokens=40)
    reasoning, answer = response.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == THOUGHT
    assert response.output_text == ANSWER and response.usage.output_tokens_details.reasoning_tokens > 0
    events = list(client.responses.create(model="oss-think", input=QUESTION[0]["content"], temperature=0,
                                          max_output_tokens=40, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == THOUGHT
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    raw = client.completions.create(model="oss-think", prompt="<|start|>assistant", temperature=0, max_tokens=40)
    assert "<|channel|>analysis<|message|>" in raw.choices[0].text  # what the parsers were given
    capabilities = client.models.retrieve("oss-think").model_extra["capabilities"]
    assert capabilities["reasoning"] == "harmony" and capabilities["tools"]


@pytest.mark.slow
@pytest.mark.own_server("a tiny gpt-oss that writes harmony's channels")
def test_a_commentary_call_reaches_every_protocols_tool_calls(client, claude):
    reply = client.chat.completions.create(model="oss-tools", messages=QUESTION, tools=[WEATHER], temperature=0,
                                           max_tokens=60)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.reasoning_content == "Need weather."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("get_weather", {"city": "Oslo"})]
    chunks = list(client.chat.completions.create(model="oss-tools", messages=QUESTION, tools=[WEATHER],
                                                 temperature=0, max_tokens=60, stream=True))
    streamed = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert streamed[0].function.name == "get_weather"
    assert json.loads("".join(t.function.arguments or "" for t in streamed)) == {"city": "Oslo"}

    tool = {"name": "get_weather", "description": "The weather in a city",
            "input_schema": WEATHER["function"]["parameters"]}
    said = claude.messages.create(model="oss-tools", max_tokens=60, messages=QUESTION, tools=[tool],
                                  extra_body={"temperature": 0})
    assert said.stop_reason == "tool_use" and [b.type for b in said.content] == ["thinking", "tool_use"]
    assert (said.content[1].name, said.content[1].input) == ("get_weather", {"city": "Oslo"})

    response = client.responses.create(model="oss-tools", input=QUESTION[0]["content"], temperature=0,
                                       max_output_tokens=60, tools=[{"type": "function", **WEATHER["function"]}])
    call = next(item for item in response.output if item.type == "function_call")
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    # The call and its result go back through the template as harmony writes them.
    follow = client.chat.completions.create(model="oss-think", temperature=0, max_tokens=40, tools=[WEATHER],
                                            messages=QUESTION + [choice.message.model_dump(exclude_none=True), {
                                                "role": "tool", "tool_call_id": choice.message.tool_calls[0].id,
                                                "content": "Sunny"}])
    assert follow.choices[0].message.content == ANSWER


@pytest.mark.slow
@pytest.mark.own_server("a tiny gpt-oss that writes harmony's channels")
def test_reasoning_effort_reaches_the_template_on_every_face(client, claude):
    def prompt_tokens(**extra) -> int:
        return client.chat.completions.create(model="oss-think", messages=QUESTION, temperature=0, max_tokens=1,
                                              **extra).usage.prompt_tokens

    medium, low, high = prompt_tokens(), prompt_tokens(reasoning_effort="low"), prompt_tokens(reasoning_effort="high")
    assert len({medium, low, high}) == 3  # "Reasoning: medium|low|high", each its own length
    assert prompt_tokens(reasoning_effort="minimal") == low and prompt_tokens(reasoning_effort="xhigh") == high
    response = client.responses.create(model="oss-think", input=QUESTION[0]["content"], temperature=0,
                                       max_output_tokens=1, reasoning={"effort": "high"})
    assert response.usage.input_tokens == high
    for budget, tokens in ((1024, low), (20000, high)):
        said = claude.messages.create(model="oss-think", max_tokens=budget + 1, messages=QUESTION,
                                      thinking={"type": "enabled", "budget_tokens": budget},
                                      extra_body={"temperature": 0})
        assert said.usage.input_tokens + said.usage.cache_read_input_tokens == tokens


@pytest.mark.slow
@pytest.mark.own_server("a tiny gpt-oss that writes harmony's channels")
def test_ollamas_chat_carries_thinking_tool_calls_and_think_levels(served, client):
    import ollama

    local = ollama.Client(host=served.base_url, timeout=120)
    options = {"temperature": 0, "num_predict": 40}
    said = local.chat(model="oss-think", messages=QUESTION, options=options)
    assert (said.message.thinking, said.message.content) == (THOUGHT, ANSWER)
    pieces = list(local.chat(model="oss-think", messages=QUESTION, options=options, stream=True))
    assert "".join(p.message.thinking or "" for p in pieces) == THOUGHT
    assert "".join(p.message.content for p in pieces) == ANSWER
    called = local.chat(model="oss-tools", messages=QUESTION, tools=[WEATHER], options={**options, "num_predict": 60})
    assert [(t.function.name, dict(t.function.arguments)) for t in called.message.tool_calls] == [
        ("get_weather", {"city": "Oslo"})]
    high = client.chat.completions.create(model="oss-think", messages=QUESTION, max_tokens=1, temperature=0,
                                          reasoning_effort="high").usage.prompt_tokens
    assert local.chat(model="oss-think", messages=QUESTION, think="high",
                      options={"num_predict": 1}).prompt_eval_count == high
