"""OpenAI's Predicted Outputs field through the real `openai` SDK: accepted
in both of its forms, reported in usage, refused in OpenAI's shape when malformed."""

from __future__ import annotations

import openai
import pytest

from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow


def test_a_prediction_is_accepted_and_usage_reports_the_guesses(client):
    messages = [{"role": "user", "content": "Say hello."}]
    plain = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, temperature=0, max_tokens=8)
    expected = plain.choices[0].message.content  # the client knows the answer: every guess is right
    for content in (expected, [{"type": "text", "text": expected[:len(expected) // 2]},
                               {"type": "text", "text": expected[len(expected) // 2:]}]):
        reply = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, temperature=0, max_tokens=8,
                                               prediction={"type": "content", "content": content})
        assert reply.choices[0].message.content == plain.choices[0].message.content
        details = reply.usage.completion_tokens_details
        # Speculation is on by default: the prediction's words were guessed, and taken.
        assert details.accepted_prediction_tokens > 0, details
        assert details.accepted_prediction_tokens <= 7  # the first token comes before any guess


def test_a_malformed_prediction_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=4, prediction={"type": "file", "content": "x"})
    assert "prediction" in (refused.value.body.get("param") or "")
