"""The one output parser every protocol face shares (api.output), in-process
over a real tokenizer: a tiny random llama whose template opens a think block
(as Qwen3's), so reasoning, answer and tool calls are told apart exactly as a
stream of token texts arrives, whatever the pieces' boundaries."""

from __future__ import annotations

import json

import pytest

from impetus.api.chat_schemas import Tool
from impetus.api.output import REASONING, TEXT, OutputParser, starts_thinking

WEATHER = Tool.model_validate({"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'


@pytest.fixture(scope="module")
def thinker(tmp_path_factory):
    from mlx_lm import load

    from impetus.models.gguf import import_gguf

    from tiny_gguf import write_tiny_llama

    home = tmp_path_factory.mktemp("thinker")
    import_gguf(write_tiny_llama(home / "tiny.gguf", "F32", thinking=True), home / "models", name="thinker")
    return load(str(home / "models" / "thinker"))[1]


def pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def run(parser: OutputParser, chunks: list[str]) -> tuple[list[tuple[str, str]], list[dict]]:
    parts = [part for chunk in chunks[:-1] for part in parser.feed(chunk)]
    more, calls = parser.finish(chunks[-1])
    merged: list[tuple[str, str]] = []
    for kind, text in parts + more:
        merged[-1:] = [(kind, merged[-1][1] + text)] if merged and merged[-1][0] == kind else merged[-1:] + [
            (kind, text)]
    return merged, calls


def test_the_template_decides_whether_the_answer_starts_in_thought(thinker):
    question = [{"role": "user", "content": "the bell"}]
    assert starts_thinking(thinker, thinker.apply_chat_template(question, add_generation_prompt=True))
    assert not starts_thinking(thinker, thinker.apply_chat_template(question, add_generation_prompt=True,
                                                                     enable_thinking=False))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_reasoning_then_answer_however_the_text_is_cut(thinker, size):
    output = "Let me see: <b> is not a marker.</think>\n\nThe answer is 4 < 5."
    parts, calls = run(OutputParser(thinker, thinking=True), pieces(output, size))
    assert parts == [(REASONING, "Let me see: <b> is not a marker."), (TEXT, "The answer is 4 < 5.")]
    assert calls == []


@pytest.mark.parametrize("size", [1, 4, 100])
def test_a_model_that_opens_its_own_think_block(thinker, size):
    parts, _ = run(OutputParser(thinker), pieces("<think>hmm</think>Hello", size))
    assert parts == [(REASONING, "hmm"), (TEXT, "Hello")]


@pytest.mark.parametrize("size", [1, 5, 300])
def test_reasoning_text_and_a_tool_call(thinker, size):
    parser = OutputParser(thinker, "auto", [WEATHER], thinking=True)
    parts, calls = run(parser, pieces("Weather needs a call.</think>Checking. " + CALL, size))
    assert parts == [(REASONING, "Weather needs a call."), (TEXT, "Checking. ")]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Oslo"})]


def test_without_think_markers_nothing_is_reasoning():
    parser = OutputParser(None, "auto", [WEATHER], thinking=True)  # a tokenizer that knows no thinking
    parts, calls = run(parser, pieces("<think>a</think>b " + CALL, 3))
    assert parts == [(TEXT, "<think>a</think>b ")] and len(calls) == 1


def test_a_partial_marker_is_held_until_it_is_clear(thinker):
    parser = OutputParser(thinker, "auto", [WEATHER])
    assert parser.feed("a <") == [(TEXT, "a ")]
    assert parser.feed("tool") == []
    assert parser.feed(" b") == [(TEXT, "<tool b")]


def test_a_forced_call_is_all_call_and_a_cut_one_stays_text(thinker):
    forced = OutputParser(thinker, "forced", [WEATHER], thinking=True)
    parts, calls = run(forced, pieces('{"name": "get_weather", "arguments": {"city": "Oslo"}}', 4))
    assert parts == [] and len(calls) == 1
    parts, calls = run(OutputParser(thinker, "forced", [WEATHER]), ['{"name": "get_w'])
    assert parts == [(TEXT, '{"name": "get_w')] and calls == []


def test_whole_matches_the_stream(thinker):
    output = "plan</think>\n Text. " + CALL
    streamed, calls = run(OutputParser(thinker, "auto", [WEATHER], thinking=True), pieces(output, 2))
    whole = OutputParser(thinker, "auto", [WEATHER], thinking=True).whole(output)
    assert [(REASONING, whole.reasoning), (TEXT, whole.text)] == streamed
    assert [c["function"] for c in whole.calls] == [c["function"] for c in calls]
