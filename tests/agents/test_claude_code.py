"""Claude Code itself, headless, against the server behind nginx with a
personal key: the agent's own requests (POST /v1/messages?beta=true, 32000
max_tokens or CLAUDE_CODE_MAX_OUTPUT_TOKENS, system blocks with
cache_control, thinking, context_management, output_config, tools) must be
served, and its answer printed. `make test` installs the pinned release with
npm (tests/agents/package-lock.json).

Claude Code sends no temperature; this server answers it greedily
(IMPETUS_DEFAULT_TEMPERATURE=0), so the 135M default model's short answer is
the same every run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

from agent_endpoint import agent_endpoint

pytestmark = [pytest.mark.slow, pytest.mark.own_server("an agent's endpoint: greedy by default (Claude Code sends no temperature), keys and nginx")]

CLAUDE = Path(__file__).parent / "node_modules" / ".bin" / "claude"
# Its small prompt (~600 tokens); with this system prompt the default model's
# greedy answer to "Say hello." ends by itself (54 tokens); with others it loops.
SMALL = ["--bare", "--tools", "Read", "--system-prompt", "Answer in one short sentence."]


@pytest.fixture(scope="module")
def endpoint(data_dir, redis_server, tmp_path_factory):
    with agent_endpoint(data_dir, redis_server, tmp_path_factory.mktemp("claude-code")) as served:
        yield served


def claude(endpoint, key: str, prompt: str, *options: str, max_output: int | None = None,
           model: str = DEFAULT_MODEL, user: str = "claude-home"):
    """`user`: a home of its own (Claude Code's memory folder and working
    directory are named after it, as two people's are)."""
    if not CLAUDE.exists():
        pytest.fail("Claude Code is not installed: `make agents` (make test does it)")
    home = endpoint["work"] / user
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": endpoint["url"],
        "ANTHROPIC_AUTH_TOKEN": key, "ANTHROPIC_MODEL": model, "ANTHROPIC_SMALL_FAST_MODEL": model,
        "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    if max_output is not None:
        env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(max_output)
    return subprocess.run([str(CLAUDE), "-p", prompt, *options], cwd=home, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


def test_claude_code_completes_a_headless_turn(endpoint, redis_client):
    key, record = KeyStore(redis_client).create("claude-code-user")
    done = claude(endpoint, key, "Say hello.", *SMALL, max_output=400)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "hello" in done.stdout.lower(), done.stdout
    # It came through the key: the turn was billed to it.
    usage = f"impetus:usage:{record.hash}"
    assert int(redis_client.hget(usage, "prompt_tokens")) > 300
    assert int(redis_client.hget(usage, "completion_tokens")) > 0


def test_its_default_prompt_gets_a_clean_context_error(endpoint, redis_client):
    """Claude Code's defaults send 12-21k tokens (by release): more than the default model's 8,192."""
    key, _ = KeyStore(redis_client).create("claude-code-big")
    done = claude(endpoint, key, "Say hello")
    assert done.returncode != 0
    shown = done.stdout + done.stderr
    assert "maximum context length is 8192 tokens" in shown, shown


def test_its_full_default_prompt_fits_the_long_context_model(gemma_endpoint):
    """The same defaults against Gemma 3 270M imported from its GGUF: the whole
    prompt is prefilled and answered. A base model does not end its turn, so the
    answer runs to the 8 tokens allowed, which Claude Code reports as such (not
    as a context error)."""
    redis = gemma_endpoint["redis"].client()
    key, record = KeyStore(redis).create("claude-code-gemma")
    done = claude(gemma_endpoint, key, "Say hello", max_output=8, model="gemma-agent")
    shown = done.stdout + done.stderr
    assert "context length" not in shown and "exceeded the 8 output token maximum" in shown, shown
    turns = [json.loads(line) for line in gemma_endpoint["server"].logs().splitlines()
             if '"key": "claude-code-gemma"' in line and '"/v1/messages"' in line]
    assert turns and all(8192 < t["prompt_tokens"] < 32768 and t["completion_tokens"] == 8 for t in turns), turns
    # Claude Code asks again to continue: the prefix cache answers those in a fraction of the first.
    billed = int(redis.hget(f"impetus:usage:{record.hash}", "prompt_tokens"))
    assert billed == sum(t["prompt_tokens"] for t in turns)


def test_a_second_person_starts_from_the_first_persons_prompt(gemma_endpoint):
    """Two people's sessions, each with its own key, home and question: their
    prompts differ in Claude Code's billing header (it follows the question)
    and in the instructions (the memory folder, the working directory), but
    not in the 21 tools. With the header dropped and the described tools put
    first, the second person's first request reads most of its prompt from
    the prefix cache (0 of 20,549 tokens before). The first person is the
    test above's ("Say hello" from its own home), when it ran."""
    redis = gemma_endpoint["redis"].client()

    def first_turn(person: str) -> dict | None:
        turns = [json.loads(line) for line in gemma_endpoint["server"].logs().splitlines()
                 if f'"key": "{person}"' in line and '"/v1/messages"' in line]
        return turns[0] if turns else None

    people = [("claude-code-gemma", "Say hello", "claude-home"), ("claude-code-bob", "List the files please", "bob")]
    for name, question, home in people:
        if first_turn(name) is None:
            key, _ = KeyStore(redis).create(name)
            done = claude(gemma_endpoint, key, question, max_output=8, model="gemma-agent", user=home)
            assert "exceeded the 8 output token maximum" in done.stdout + done.stderr, done.stdout + done.stderr
    second = first_turn("claude-code-bob")
    assert second["prompt_tokens"] > 8192 and second["cached_tokens"] >= 0.5 * second["prompt_tokens"], second


def test_a_wrong_key_is_refused_in_its_words(endpoint):
    done = claude(endpoint, "imp_not-a-key", "Say hello.", *SMALL, max_output=50)
    assert done.returncode != 0
    assert "401" in done.stdout + done.stderr or "API key" in done.stdout + done.stderr, done.stdout + done.stderr
