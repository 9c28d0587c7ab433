"""Several models in one real server: loaded on demand, side by side, least
recently used out under a small memory budget, pinned ones kept, a broken one
refused while the others keep serving; the admin API and CLI that steer it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import pytest

from impetus.api import admin_schemas, catalog_schemas
from impetus.models.store import DEFAULT_MODEL

from conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.own_server("a memory budget sized for two models, over a models folder of its own")]

F32, F16, Q4 = DEFAULT_MODEL, "smol-f16", "smol-q4"  # ~538, ~269, ~98 MB of weights
BUDGET = 850 * 10**6  # F32 + Q4 fit, F32 + F16 fit, all three do not


@pytest.fixture(scope="module")
def server(models_home):
    srv = Server(models_home, models_home / "server.log", memory_budget_bytes=BUDGET)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.logs()


def chat(base_url: str, model: str, **extra) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}], **extra})


def loaded(base_url: str) -> dict:
    answer = httpx.get(f"{base_url}/v1/admin/models", timeout=10).json()
    admin_schemas.AdminModels.model_validate(answer)  # what /openapi.json promises
    return {m["id"]: m for m in answer["loaded"]}


def admin(base_url: str, model: str, action: str, **body) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/admin/models/{model}/{action}", json=body, timeout=120)


def test_every_model_is_listed_loaded_or_not(server):
    listing = httpx.get(f"{server.base_url}/v1/models", timeout=10).json()
    catalog_schemas.ModelList.model_validate(listing)
    models = {m["id"]: m for m in listing["data"]}
    assert set(models) == {F32, F16, Q4, "broken", "broken-weights", "all-minilm-l6-v2"}
    assert models["all-minilm-l6-v2"]["type"] == "embedding" and models[F32]["type"] == "chat"
    assert models[F32]["loaded"] and not models[Q4]["loaded"]
    assert models[Q4]["alias_of"] == DEFAULT_MODEL and models[Q4]["owned_by"] == "impetus"
    assert models[F32]["parameters"] > 100e6 and models[F32]["context_length"] == 8192
    assert models[F32]["memory_bytes"] > 500e6 and models[F32]["weights_dtype"] == "float32"


def test_two_models_interleaved_and_concurrent(server):
    results = []

    def ask(model):
        response = chat(server.base_url, model)
        results.append((model, response.status_code, response.json().get("model")))

    threads = [threading.Thread(target=ask, args=(m,)) for m in (F32, Q4, F32, Q4, Q4, F32)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert sorted(results) == sorted((m, 200, m) for m in (F32, Q4, F32, Q4, Q4, F32))
    assert set(loaded(server.base_url)) == {F32, Q4}
    # Both models answer the same question: the 4-bit and the float32 weights agree here.
    assert "Paris" in chat(server.base_url, Q4, max_tokens=12).json()["choices"][0]["message"]["content"]


def test_loading_does_not_hold_up_the_other_models(server):
    chat(server.base_url, Q4)
    chat(server.base_url, F32)  # now Q4 is the least recently used
    finished = {}

    def load_f16():
        finished["f16"] = (chat(server.base_url, F16).status_code, time.monotonic())

    loader = threading.Thread(target=load_f16)
    loader.start()
    time.sleep(0.2)  # the F16 request has started loading its model
    health = httpx.get(f"{server.base_url}/healthz", timeout=10)
    other = chat(server.base_url, F32, max_tokens=2)
    finished["f32"] = time.monotonic()
    loader.join()
    assert health.status_code == 200 and other.status_code == 200 and finished["f16"][0] == 200
    assert finished["f32"] < finished["f16"][1], "the F32 answer waited for the F16 load"
    # 538 + 98 + 269 MB exceed the budget: the least recently used (Q4) made room.
    assert set(loaded(server.base_url)) == {F32, F16}
    # 43 MB are left for KV caches: 1,500 tokens of float32 SmolLM2 (46 KB each) can never fit.
    too_large = chat(server.base_url, F32, max_tokens=1500)
    error = too_large.json()["error"]
    assert too_large.status_code == 400 and (error["code"], error["param"]) == ("kv_cache_exceeded", "max_tokens")
    assert "MiB of KV cache" in error["message"]


def test_pinned_models_are_never_unloaded(server):
    chat(server.base_url, F16)
    assert admin(server.base_url, F32, "load", pin=True).json()["pinned"] is True
    assert admin(server.base_url, F16, "load", pin=True).status_code == 200
    refused = chat(server.base_url, Q4)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_capacity"
    assert refused.headers["retry-after"]
    assert set(loaded(server.base_url)) == {F32, F16}
    assert admin(server.base_url, F16, "load", pin=False).json()["pinned"] is False
    assert chat(server.base_url, Q4).status_code == 200  # F16, unpinned, made room
    state = loaded(server.base_url)
    assert set(state) == {F32, Q4} and state[F32]["pinned"]


def test_a_broken_model_is_a_clear_error_and_the_others_keep_serving(server):
    for _ in range(2):
        response = chat(server.base_url, "broken")
        error = response.json()["error"]
        assert response.status_code == 500 and error["code"] == "model_load_failed"
        assert "broken" in error["message"] and "Traceback" not in error["message"]
    missing = chat(server.base_url, "no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert chat(server.base_url, F32).status_code == 200
    assert httpx.get(f"{server.base_url}/readyz", timeout=10).status_code == 200


def test_admin_unload_and_the_command_line(server):
    cli = [sys.executable, "-m", "impetus", "models"]
    url = ["--url", server.base_url]
    loaded_now = subprocess.run([*cli, "loaded", *url], capture_output=True, text=True, timeout=60)
    assert loaded_now.returncode == 0 and F32 in loaded_now.stdout
    load = subprocess.run([*cli, "load", Q4, "--keep-alive", "600", *url], capture_output=True, text=True,
                          timeout=120)
    assert load.returncode == 0, load.stderr
    assert loaded(server.base_url)[Q4]["keep_alive_s"] == 600
    unload = subprocess.run([*cli, "unload", Q4, *url], capture_output=True, text=True, timeout=60)
    assert unload.returncode == 0, unload.stderr
    assert Q4 not in loaded(server.base_url)
    again = subprocess.run([*cli, "unload", Q4, *url], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "not loaded" in again.stderr
    bad = admin(server.base_url, F32, "load", keep_alive=-1)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"
