"""Ollama's API (api.ollama, api.ollama_catalog) through nginx, with a key, as
the official `ollama` Python library and the apps that speak it call it:
list, show, ps, version, chat whole and streamed, format with a schema,
generate (and its load and unload requests), embed; Continue's requests as
its Ollama provider sends them (core/llm/llms/Ollama.ts), and Open WebUI's
(backend/open_webui/routers/ollama.py, utils/payload.py); Ollama's error shape
for bad input on every route."""

from __future__ import annotations

import json
from datetime import datetime

import httpx
import jsonschema
import ollama
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow

TAGGED = f"{DEFAULT_MODEL}:latest"  # as /api/tags lists it, and clients send it back
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def proxy(gateway_proxy):
    return gateway_proxy


@pytest.fixture(scope="module")
def key(redis_server):
    return KeyStore(redis_server.client()).create("ollama-app")[0]


@pytest.fixture(scope="module")
def client(proxy, key):
    return ollama.Client(host=proxy, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def test_list_show_version_and_ps(client, proxy):
    names = {m.model for m in client.list().models}
    assert {TAGGED, "all-minilm-l6-v2:latest"} <= names
    shown = client.show(TAGGED)
    assert "completion" in shown.capabilities and "insert" not in shown.capabilities
    assert "temperature 0" in shown.parameters and "repeat_penalty 1.1" in shown.parameters
    assert "num_ctx 8192" in shown.parameters and ".Suffix" not in shown.template  # what Continue reads
    assert "<|im_start|>" in shown.template and shown.modelinfo["llama.context_length"] == 8192
    assert shown.details.family == "llama" and shown.details.format == "gguf"
    assert httpx.get(f"{proxy}/api/version", timeout=10).json()["version"]  # no key needed, as Ollama's
    client.chat(model=TAGGED, messages=QUESTION, options={"num_predict": 2})
    loaded = {m.model: m for m in client.ps().models}
    assert loaded[TAGGED].size > 100e6


def test_chat_whole_and_streamed_at_the_models_defaults(client):
    whole = client.chat(model=TAGGED, messages=QUESTION)
    assert "Paris" in whole.message.content and whole.done and whole.done_reason == "stop"
    assert whole.model == TAGGED  # named as the request named it, as Ollama's answers are
    assert whole.prompt_eval_count > 10 and whole.eval_count > 3 and whole.total_duration > 0
    pieces = list(client.chat(model=TAGGED, messages=QUESTION, stream=True))
    assert "".join(p.message.content for p in pieces) == whole.message.content  # greedy: the same answer
    assert [p.done for p in pieces].count(True) == 1 and pieces[-1].done and pieces[-1].eval_count == whole.eval_count


def test_format_with_a_schema_constrains_the_answer(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    answer = client.chat(model=TAGGED, messages=QUESTION, format=schema, options={"num_predict": 60})
    jsonschema.validate(json.loads(answer.message.content), schema)
    plain = client.generate(model=TAGGED, prompt="Name a fruit.", format="json", options={"num_predict": 40})
    assert isinstance(json.loads(plain.response), (dict, list))


def test_generate_load_unload_raw_and_embed(client, proxy, key):
    assert client.generate(model=TAGGED, prompt="").done_reason == "load"
    assert client.chat(model=TAGGED, messages=[]).done_reason == "load"  # Ollama: no messages loads the model
    raw = client.generate(model=TAGGED, prompt="1, 2, 3, 4,", raw=True, options={"num_predict": 6, "temperature": 0})
    assert raw.response.strip().startswith("5")
    answer = client.generate(model=TAGGED, prompt="What is the capital of France?")
    assert "Paris" in answer.response  # through the chat template, as the chat is
    told = client.generate(model=TAGGED, prompt="What is the capital of France?", system="Answer briefly.",
                           options={"num_predict": 1})
    as_chat = client.chat(model=TAGGED, options={"num_predict": 1}, messages=[
        {"role": "system", "content": "Answer briefly."}, *QUESTION])
    # The system prompt went in where the template puts it (SmolLM2's replaces its own default one).
    assert told.prompt_eval_count == as_chat.prompt_eval_count != answer.prompt_eval_count
    embedded = client.embed(model="all-minilm-l6-v2", input=["a cat", "a dog"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 384
    openai_form = httpx.post(f"{proxy}/v1/embeddings", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                             json={"model": "all-minilm-l6-v2", "input": ["a cat"]}).json()
    assert embedded.embeddings[0] == pytest.approx(openai_form["data"][0]["embedding"], abs=1e-6)


def test_continues_requests_as_it_sends_them(proxy, key):
    """Continue's Ollama provider: chat with its options (num_ctx, mirostat... which the runner decides
    here), keep_alive in seconds, and its autocomplete: raw generate with suffix (a 400 for a model with
    no FIM tokens, in Ollama's shape)."""
    headers = {"Authorization": f"Bearer {key}"}
    options = {"temperature": 0.01, "top_p": 0.9, "top_k": 40, "num_predict": 24, "num_ctx": 8192, "mirostat": 0,
               "num_thread": 4, "use_mmap": True, "min_p": 0.0, "stop": ["<|im_end|>"]}
    with httpx.stream("POST", f"{proxy}/api/chat", headers=headers, timeout=120, json={
            "model": TAGGED, "messages": QUESTION, "options": options, "keep_alive": 1800, "stream": True}) as reply:
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert "Paris" in "".join(line["message"]["content"] for line in lines) and lines[-1]["done"]
    fim = httpx.post(f"{proxy}/api/generate", headers=headers, timeout=60, json={
        "model": TAGGED, "prompt": "def add(a, b):\n    ", "suffix": "\n", "raw": True, "options": options,
        "keep_alive": 1800, "stream": True})
    assert fim.status_code == 400 and fim.json()["error"].startswith("The model 'smollm2-135m-instruct' has no fill")


def test_open_webuis_requests_as_it_sends_them(proxy, key):
    """Open WebUI's Ollama connection: it verifies with /api/version, lists /api/tags by `model`, reads
    /api/ps's `expires_at` with datetime.fromisoformat, and chats with the OpenAI request turned into
    Ollama's (convert_payload_openai_to_ollama): the tag added, OpenAI's penalties renamed into options
    (frequency_penalty as repeat_penalty, where 0 means none; presence_penalty as new_topic_penalty)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
               "X-OpenWebUI-User-Name": "Ada Lovelace", "X-OpenWebUI-User-Role": "user"}
    assert httpx.get(f"{proxy}/api/version", headers=headers, timeout=10).json()["version"]
    models = {m["model"]: m for m in httpx.get(f"{proxy}/api/tags", headers=headers, timeout=10).json()["models"]}
    assert TAGGED in models and models[TAGGED]["name"] == TAGGED
    for loaded in httpx.get(f"{proxy}/api/ps", headers=headers, timeout=10).json()["models"]:
        assert int(datetime.fromisoformat(loaded["expires_at"]).timestamp()) is not None
    payload = {"model": TAGGED, "messages": QUESTION, "stream": True, "options": {
        "temperature": 0, "top_p": 1.0, "seed": 42, "num_predict": 24, "repeat_penalty": 0, "new_topic_penalty": 0}}
    with httpx.stream("POST", f"{proxy}/api/chat", headers=headers, timeout=120, json=payload) as reply:
        assert reply.status_code == 200, reply.read()
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert "Paris" in "".join(line["message"]["content"] for line in lines) and lines[-1]["done"]
    assert lines[-1]["model"] == TAGGED and lines[-1]["eval_count"] <= 24


def test_bad_input_gets_ollamas_error_shape(proxy, key):
    headers = {"Authorization": f"Bearer {key}"}
    cases = [
        ("/api/chat", {"model": TAGGED, "messages": "hi"}, 400, "messages"),
        ("/api/chat", {"model": TAGGED, "messages": QUESTION, "think": "maybe"}, 400, "think"),
        ("/api/chat", {"model": "no-such-model", "messages": QUESTION}, 404, "no-such-model"),
        ("/api/generate", {"prompt": "hi"}, 400, "model"),
        ("/api/generate", {"model": TAGGED, "prompt": "hi", "keep_alive": "soon"}, 400, "keep_alive"),
        ("/api/generate", {"model": TAGGED, "prompt": "hi", "template": "{{ .Prompt }}"}, 400, "template"),
        ("/api/embed", {"model": "all-minilm-l6-v2"}, 400, "input"),
        ("/api/embed", {"model": "all-minilm-l6-v2", "input": [""]}, 400, "input"),
        ("/api/show", {"model": "no-such-model"}, 404, "no-such-model"),
        ("/api/show", {}, 400, "model"),
    ]
    for path, body, status, named in cases:
        answer = httpx.post(f"{proxy}{path}", headers=headers, json=body, timeout=60)
        assert answer.status_code == status, (path, body, answer.text)
        assert set(answer.json()) == {"error"} and named in answer.json()["error"], (path, answer.text)
    unauthorized = httpx.get(f"{proxy}/api/tags", timeout=10)
    assert unauthorized.status_code == 401 and set(unauthorized.json()) == {"error"}
    broken = httpx.post(f"{proxy}/api/chat", headers={**headers, "content-type": "application/json"},
                        content=b"{not json", timeout=10)
    assert broken.status_code == 400 and set(broken.json()) == {"error"}
