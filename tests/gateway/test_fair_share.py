"""Two keys share the real stack (redis-server, nginx, one worker with a
two-slot batch): a flood from one key does not hold the other's request
behind it. Asserted on the order of events (who got tokens first) and the
engine's counters, never on wall time."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port, start_server, stop_server

from processes import start_nginx
from processes import stop as stop_nginx

pytestmark = pytest.mark.slow

# SmolLM2's end-of-text and end-of-turn tokens are banned, so every answer runs to max_tokens.
NO_END = {"0": -100, "2": -100}


@pytest.fixture(scope="module")
def stack(data_dir, redis_server, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("fair") / "server.log"
    process = start_server(port, log, {
        "IMPETUS_DATA_DIR": str(data_dir), "IMPETUS_REQUIRE_API_KEYS": "true", "IMPETUS_REDIS_URL": redis_server.url,
        "IMPETUS_MAX_BATCH_SIZE": "2", "IMPETUS_MAX_QUEUE": "16",
    })
    proxy, url = start_nginx(tmp_path_factory.mktemp("fair-nginx"), f"127.0.0.1:{port}")
    keys = KeyStore(redis_server.client())
    yield url, {name: keys.create(f"fair-{name}", admin=name == "ops")[0] for name in ("a", "b", "ops")}
    stop_nginx(proxy)
    stop_server(process)
    assert "Traceback" not in log.read_text()


def test_a_flood_from_one_key_does_not_hold_another_keys_request(stack):
    url, keys = stack
    order: list[str] = []
    comments: dict[int, list[str]] = {}
    lock = threading.Lock()

    def flood(i: int) -> None:
        body = {"model": DEFAULT_MODEL, "stream": True, "max_tokens": 100, "temperature": 0, "logit_bias": NO_END,
                "messages": [{"role": "user", "content": f"Write a long story about ship {i}."}]}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300,
                          headers={"Authorization": f"Bearer {keys['a']}"}) as response:
            assert response.status_code == 200
            started = False
            for line in response.iter_lines():
                if line.startswith(":"):
                    comments.setdefault(i, []).append(line)
                elif line.startswith("data: {") and not started:
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        started = True
                        with lock:
                            order.append(f"a{i}")

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    # Wait for A's first two streams (the whole batch) to be generating; four more wait.
    for _ in range(600):
        with lock:
            if len(order) >= 2:
                break
        threading.Event().wait(0.1)
    assert len(order) >= 2

    # Key B through the openai client, streaming: any queue comments must not disturb it.
    b = openai.OpenAI(base_url=f"{url}/v1", api_key=keys["b"], max_retries=0, timeout=300)
    stream = b.chat.completions.create(model=DEFAULT_MODEL, stream=True, max_tokens=4, temperature=0,
                                       messages=[{"role": "user", "content": "Say hi."}])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    with lock:
        order.append("b")
    assert text
    for thread in threads:
        thread.join(300)

    # B was served before A's waiting requests got a token (in the batch's spare slot).
    assert order.index("b") <= 3, order
    assert len(order) == 7
    status = httpx.get(f"{url}/v1/status", headers={"Authorization": f"Bearer {keys['ops']}"}, timeout=10).json()
    assert status["engines"][0]["scheduler"] == "fair"
    # The streams that waited heard where they stood, as SSE comments.
    heard = [line for lines in comments.values() for line in lines]
    assert any(line.startswith(": queued position=") for line in heard), comments


def test_every_response_says_how_long_it_queued(stack):
    url, keys = stack
    response = httpx.post(f"{url}/v1/chat/completions", timeout=120, headers={"Authorization": f"Bearer {keys['b']}"},
                          json={"model": DEFAULT_MODEL, "max_tokens": 2,
                                "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200
    assert float(response.headers["x-impetus-queue-seconds"]) >= 0
