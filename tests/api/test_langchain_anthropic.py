"""LangChain's ChatAnthropic pointed at the server's Messages API: invoke,
stream, and bind_tools with a forced tool call."""

from __future__ import annotations

import pytest

from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat(server):
    from langchain_anthropic import ChatAnthropic

    return ChatAnthropic(model=DEFAULT_MODEL, base_url=server.base_url, api_key="unused", max_tokens=24,
                         temperature=0, max_retries=0, timeout=120)


def test_invoke_and_stream_give_the_same_greedy_answer(chat):
    whole = chat.invoke("What is the capital of France?")
    assert "Paris" in whole.content
    assert whole.response_metadata["stop_reason"] in ("end_turn", "max_tokens")
    assert whole.usage_metadata["input_tokens"] > 0 and whole.usage_metadata["output_tokens"] > 0
    pieces = list(chat.stream("What is the capital of France?"))
    streamed = "".join(p.content if isinstance(p.content, str) else
                       "".join(b.get("text", "") for b in p.content) for p in pieces)
    assert len(pieces) > 2 and streamed == whole.content


def test_bind_tools_calls_the_forced_tool(chat):
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    bound = chat.bind_tools([get_weather], tool_choice="get_weather")
    reply = bound.invoke("What is the weather in Paris?")
    [call] = reply.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"]
