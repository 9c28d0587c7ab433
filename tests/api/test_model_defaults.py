"""A model's own default sampling parameters (models.defaults): the README's
example, which sends no temperature, answers "Paris" at the bundled model's
defaults (greedy with repetition penalty 1.1, over its card's top_p 0.9); a
request's own values always win; every default shows its source."""

from __future__ import annotations

import httpx
import pytest

from impetus.api import catalog_schemas
from impetus.api.budget import sampling_params, with_defaults
from impetus.api.chat_schemas import ChatCompletionRequest
from impetus.api.messages import to_chat
from impetus.api.messages_schemas import MessagesRequest
from impetus.api.responses_schemas import ResponsesRequest
from impetus.models.defaults import Defaults
from impetus.models.store import DEFAULT_MODEL
from impetus.settings import Settings

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
BUNDLED = {"temperature": 0.0, "top_p": 0.9, "repetition_penalty": 1.1}  # models.defaults


@pytest.mark.slow
def test_the_readme_example_answers_paris_at_the_models_defaults(client):
    for _ in range(5):  # exactly as the README has it: no temperature, no max_tokens
        reply = client.chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION)
        assert "Paris" in reply.choices[0].message.content, reply.choices[0].message.content


@pytest.mark.slow
def test_the_defaults_and_capabilities_are_shown_with_their_sources(server):
    entry = httpx.get(f"{server.base_url}/v1/models/{DEFAULT_MODEL}", timeout=30).json()
    catalog_schemas.Model.model_validate(entry)
    assert entry["defaults"] == {"temperature": {"value": 0.0, "source": "bundled"},
                                 "top_p": {"value": 0.9, "source": "model_card"},
                                 "repetition_penalty": {"value": 1.1, "source": "bundled"}}
    capabilities = entry["capabilities"]
    assert capabilities["context_length"] == 8192 and capabilities["chat"] and not capabilities["vision"]
    assert capabilities["reasoning"] is None and not capabilities["embeddings"]
    listing = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]
    embedder = next(m for m in listing if m["type"] == "embedding")
    assert embedder["capabilities"]["embeddings"] and not embedder["capabilities"]["chat"]


@pytest.mark.slow
def test_omitted_fields_sample_exactly_as_the_defaults_sent_explicitly(client):
    """A request that omits them is the request that sends the defaults; one
    that sends its own gets those."""
    ask = dict(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Write a short poem about rain."}],
               max_tokens=32)
    omitted = client.chat.completions.create(**ask).choices[0].message.content
    explicit = client.chat.completions.create(**ask, temperature=0, top_p=0.9,
                                              extra_body={"repetition_penalty": 1.1}).choices[0].message.content
    plain = client.chat.completions.create(**ask, extra_body={"repetition_penalty": 1.0}).choices[0].message.content
    hot = client.chat.completions.create(**ask, temperature=1.5, top_p=1.0, seed=1).choices[0].message.content
    # Greedy without the penalty repeats itself ("A gentle rain, a gentle soul,")
    assert omitted == explicit and plain != omitted and plain.count("A gentle rain") > 1
    assert hot != omitted


def test_a_requests_own_values_win_and_fill_only_what_it_left_out():
    settings = Settings(default_temperature=1.0)
    defaults = Defaults({"temperature": 0.3, "top_p": 0.8, "top_k": 20, "min_p": 0.05,
                         "repetition_penalty": 1.1, "stop": ["END"]},
                        dict.fromkeys(("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "stop"),
                                      "alias"))
    chat = with_defaults(ChatCompletionRequest(model="m", messages=QUESTION, temperature=1.0, top_p=1.0, stop=[]),
                         settings, defaults)
    # Sent, even at the API's own default values: the client's. Left out: the model's.
    assert (chat.temperature, chat.top_p, chat.stop) == (1.0, 1.0, [])
    assert (chat.top_k, chat.min_p, chat.repetition_penalty) == (20, 0.05, 1.1)

    class Engine:  # what sampling_params reads of an engine: the vocabulary's size
        class loaded:
            config = {"vocab_size": 100}

    params = sampling_params(chat, 10, Engine, False, 0)
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (1.0, 1.0, 20, 0.05)

    message = with_defaults(MessagesRequest(model="m", max_tokens=5, messages=QUESTION, top_k=3), settings,
                            defaults)
    as_chat = with_defaults(to_chat(message, False), settings, defaults)
    assert (as_chat.temperature, as_chat.top_p, as_chat.top_k, as_chat.stop) == (0.3, 0.8, 3, ["END"])
    assert (as_chat.min_p, as_chat.repetition_penalty) == (0.05, 1.1)  # Messages has no such fields

    response = with_defaults(ResponsesRequest(model="m", input="hi", top_p=0.5), settings, defaults)
    as_chat = with_defaults(response.to_chat(), settings, defaults)
    assert (as_chat.temperature, as_chat.top_p, as_chat.top_k, as_chat.stop) == (0.3, 0.5, 20, ["END"])

    bare = with_defaults(ChatCompletionRequest(model="m", messages=QUESTION), settings, Defaults())
    assert (bare.temperature, bare.top_p, bare.top_k) == (1.0, 1.0, 0)  # the server's, then the API's
