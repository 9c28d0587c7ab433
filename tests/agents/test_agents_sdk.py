"""The OpenAI Agents SDK against the server's Responses API: an agent whose
function tool the model must call (tool_choice names it), the SDK running the
Python function and sending its output back, and the model answering; the
whole loop on the real server and the default model."""

from __future__ import annotations

import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow


def test_an_agent_calls_its_tool_and_answers(server):
    set_tracing_disabled(True)  # nothing goes to OpenAI's tracing endpoint
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"It is sunny and 21 degrees in {city}."

    client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    agent = Agent(name="weather", instructions="Answer in one short sentence.", tools=[get_weather],
                  model=OpenAIResponsesModel(DEFAULT_MODEL, client),
                  model_settings=ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=60))
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=3)
    assert len(calls) == 1 and calls[0].strip()
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item"
    assert isinstance(result.final_output, str) and result.final_output.strip()
