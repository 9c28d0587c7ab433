"""Where prompts part (api.prompt.prefix_points) and what is left out of them
(Claude Code's billing header), with the default model's real template."""

from __future__ import annotations

import pytest

from impetus.api.chat_schemas import ChatMessage, Tool
from impetus.api.messages_schemas import MessagesRequest
from impetus.api.prompt import prefix_points, render_chat

TOOLS = [Tool.model_validate({"type": "function", "function": {
    "name": f"tool_{i}", "description": f"Does thing number {i} to a file, carefully.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}})
    for i in range(12)]


def person(name: str) -> list[ChatMessage]:
    return [ChatMessage(role="system", content=f"You are a coding agent. Keep notes in /home/{name}/memory."),
            ChatMessage(role="user", content=f"Hello, I am {name}. What is in this folder?")]


@pytest.mark.slow
def test_the_tools_come_first_and_a_point_marks_where_people_part(loaded_model):
    tokenizer = loaded_model.tokenizer
    alice = render_chat(tokenizer, person("alice"), TOOLS)
    bob = render_chat(tokenizer, person("bob"), TOOLS)
    common = next(i for i, (a, b) in enumerate(zip(alice, bob)) if a != b)
    points = prefix_points(tokenizer, person("alice"), TOOLS, None, alice, shortest=1)
    # The tools (the same for both) end where the system prompt starts; the
    # system prompt ends where the question starts; the last point is the prompt less its last token.
    tools_end, system_end, last = points
    assert tools_end <= common and alice[:tools_end] == bob[:tools_end]
    # Between the tools' point and where the two prompts part: only the system prompt's shared start.
    assert tokenizer.decode(alice[tools_end:common]).strip() == "You are a coding agent. Keep notes in /home/"
    assert tools_end > 0.8 * len(alice)
    assert tools_end < system_end < last == len(alice) - 1
    assert "/home/alice/memory" in tokenizer.decode(alice[tools_end:system_end])
    assert "tool_11" not in tokenizer.decode(alice[tools_end:]) and "I am alice" in tokenizer.decode(alice[system_end:])
    assert prefix_points(tokenizer, person("alice"), TOOLS, None, alice, shortest=len(alice)) == []


def test_claude_codes_billing_header_is_left_out():
    blocks = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.8d3; cc_entrypoint=sdk-cli;"},
              {"type": "text", "text": "You are a Claude agent."}]
    body = {"model": "m", "max_tokens": 8, "system": blocks, "messages": [{"role": "user", "content": "Hi"}]}
    request = MessagesRequest.model_validate(body)
    assert request.to_chat().messages[0].content == "You are a Claude agent."
    assert request.to_chat(keep_billing_header=True).messages[0].content.startswith("x-anthropic-billing-header")
