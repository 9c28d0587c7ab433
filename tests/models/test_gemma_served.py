"""Gemma 3 270M (a Q4_K_M GGUF from its PyPI package) imported and served for
real: a base model without a chat template, a SentencePiece vocabulary, a
32,768-token context with sliding-window layers, through `impetus serve`.

A prompt beyond the default model's 8,192 tokens is answered by Claude Code's
full default prompt (~20k Gemma tokens) in tests/agents/test_claude_code.py,
on this same endpoint: an 8,700-token prompt of its own here cost 53 s of
prefill for the same point."""

from __future__ import annotations

import json
import subprocess
import sys

import openai
import pytest

from impetus.gateway.keys import KeyStore

from conftest import GEMMA_TEMPLATE as TEMPLATE

pytestmark = pytest.mark.slow

GEMMA = "gemma3-270m"


@pytest.fixture(scope="module")
def gemma(gemma_endpoint):
    """The session's Gemma endpoint (tests/conftest.py), asked straight (not
    through its nginx) with a key of this module's."""
    key, _ = KeyStore(gemma_endpoint["redis"].client()).create("gemma-served")
    return openai.OpenAI(base_url=f"{gemma_endpoint['server'].base_url}/v1", api_key=key, max_retries=0,
                         timeout=600)


def test_completions_continue_with_paris(gemma):
    reply = gemma.completions.create(model=GEMMA, prompt="The capital of France is the city of", max_tokens=4,
                                     temperature=0)
    assert reply.choices[0].text.startswith(" Paris")
    streamed = "".join(c.choices[0].text for c in gemma.completions.create(
        model=GEMMA, prompt="The capital of France is the city of", max_tokens=4, temperature=0, stream=True))
    assert streamed == reply.choices[0].text


def test_models_lists_no_chat_template_and_chat_says_what_to_do(gemma):
    listed = {m.id: m for m in gemma.models.list().data}
    assert listed[GEMMA].model_extra["chat_template"] is False
    assert listed[GEMMA].model_extra["context_length"] == 32768
    with pytest.raises(openai.BadRequestError) as error:
        gemma.chat.completions.create(model=GEMMA, messages=[{"role": "user", "content": "hi"}])
    body = error.value.body
    assert body["code"] == "model_has_no_chat_template" and body["param"] == "model"
    assert "/v1/completions" in body["message"] and "--chat-template" in body["message"]


def test_an_alias_with_a_chat_template_makes_chat_work(gemma, gemma_models, tmp_path):
    template = tmp_path / "gemma.jinja"
    template.write_text(TEMPLATE)
    env_cli = [sys.executable, "-m", "impetus.cli.main", "models", "alias", "gemma-chat", GEMMA,
               "--chat-template", str(template), "--data-dir", str(gemma_models)]
    subprocess.run(env_cli, check=True, capture_output=True, text=True)
    aliases = json.loads((gemma_models / "models" / "aliases.json").read_text())
    assert aliases["gemma-chat"]["chat_template"] == TEMPLATE
    reply = gemma.chat.completions.create(model="gemma-chat", max_tokens=8, temperature=0,
                                          messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert reply.choices[0].message.content and reply.usage.prompt_tokens > 10
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    failed = subprocess.run([*env_cli[:5], "gemma-bad", GEMMA, "--chat-template", str(bad), "--data-dir",
                             str(gemma_models)], capture_output=True, text=True)
    assert failed.returncode == 2 and "does not render" in failed.stderr
