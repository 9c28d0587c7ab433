"""Codex CLI itself, headless (`codex exec`), against the server behind nginx
with a personal key, through a `model_providers` entry with
wire_api = "responses": its own requests (POST /v1/responses, stream, input
items with developer messages, function and namespace tools and web_search,
reasoning, include, store false, prompt_cache_key, client_metadata) must be
served, and the model's answer printed. `make test` installs the pinned
release with npm (tests/agents/package-lock.json)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

from agent_endpoint import agent_endpoint

pytestmark = [pytest.mark.slow, pytest.mark.own_server("an agent's endpoint: greedy by default (Codex sends no temperature), keys and nginx")]

CODEX = Path(__file__).parent / "node_modules" / ".bin" / "codex"
CONFIG = """\
model = "{model}"
model_provider = "impetus"

[model_providers.impetus]
name = "Impetus"
base_url = "{url}/v1"
env_key = "IMPETUS_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""
# Its small prompt (~2.5k tokens: its own instructions replaced, the optional
# tools off); its default one is ~10k tokens, more than the default model's 8,192.
SMALL = ["--disable", "view_image", "--disable", "goals", "--disable", "multi_agent", "--disable", "skill_search",
         "-c", "web_search=disabled"]


@pytest.fixture(scope="module")
def endpoint(data_dir, redis_server, tmp_path_factory):
    with agent_endpoint(data_dir, redis_server, tmp_path_factory.mktemp("codex")) as served:
        yield served


def codex(endpoint, key: str, prompt: str, *options: str) -> tuple[subprocess.CompletedProcess, str]:
    """Its exit, and the last message it wrote (--output-last-message)."""
    if not CODEX.exists():
        pytest.fail("Codex is not installed: `make agents` (make test does it)")
    work = endpoint["work"]
    home, project = work / "codex-home", work / "project"
    home.mkdir(exist_ok=True)
    project.mkdir(exist_ok=True)
    (home / "config.toml").write_text(CONFIG.format(model=DEFAULT_MODEL, url=endpoint["url"]))
    instructions = work / "instructions.md"
    instructions.write_text("Answer in one short sentence.")
    last = work / "last-message.txt"
    last.unlink(missing_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "CODEX_HOME": str(home), "IMPETUS_API_KEY": key,
           "RUST_LOG": "error"}
    done = subprocess.run([str(CODEX), "exec", "--skip-git-repo-check", "--output-last-message", str(last),
                           *options, prompt], cwd=project, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=400)
    return done, last.read_text() if last.exists() else ""


def test_codex_completes_a_headless_turn(endpoint, redis_client):
    assert httpx.head(f"{endpoint['url']}/", timeout=10).status_code == 200  # its endpoint check, keyless
    key, record = KeyStore(redis_client).create("codex-user")
    instructions = endpoint["work"] / "instructions.md"
    done, answer = codex(endpoint, key, "Say hello.", "-c", f"model_instructions_file={instructions}", *SMALL)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert answer.strip() and answer.strip() in done.stdout, (answer, done.stdout, done.stderr)
    # It came through the key: the turn was billed to it.
    usage = f"impetus:usage:{record.hash}"
    assert int(redis_client.hget(usage, "prompt_tokens")) > 1000
    assert int(redis_client.hget(usage, "completion_tokens")) > 0


def test_its_default_prompt_gets_a_clean_context_error(endpoint, redis_client):
    key, _ = KeyStore(redis_client).create("codex-big")
    done, answer = codex(endpoint, key, "Say hello")
    assert done.returncode != 0 and not answer
    # The server's 400 (code context_length_exceeded, in OpenAI's shape) is
    # what Codex knows as a full context window; it says so in its own words.
    assert "out of room in the model's context window" in done.stdout + done.stderr, (done.stdout, done.stderr)
    refused = [line for line in endpoint["server"].logs().splitlines() if "codex-big" in line]
    assert refused and all('"status": 400' in line for line in refused), refused
