"""Admin model actions reach both workers of a real two-worker server, through
Redis, whichever worker answers the request."""

from __future__ import annotations

import time

import httpx
import pytest

from impetus.gateway.broadcast import CHANNEL
from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow


def every_worker(base_url: str, headers: dict, predicate, what: str, timeout: float = 60) -> dict:
    """Ask on fresh connections until both workers have answered and agree with `predicate`."""
    deadline = time.monotonic() + timeout
    seen: dict[int, dict] = {}
    while True:
        answer = httpx.get(f"{base_url}/v1/admin/models", headers=headers, timeout=10).json()
        seen[answer["worker_pid"]] = {m["id"]: m for m in answer["loaded"]}
        if len(seen) == 2 and all(predicate(models) for models in seen.values()):
            return seen
        assert time.monotonic() < deadline, f"not every worker {what}: {seen}"
        time.sleep(0.1)


def test_load_pin_and_unload_reach_every_worker(gateway_server, redis_client):
    admin, _ = KeyStore(redis_client).create("models-operator", admin=True)
    headers = {"Authorization": f"Bearer {admin}"}
    url = f"{gateway_server}/v1/admin/models/{DEFAULT_MODEL}"
    every_worker(gateway_server, headers, lambda m: DEFAULT_MODEL in m, "booted")
    deadline = time.monotonic() + 30  # both subscribed (again, if an earlier test restarted Redis)
    while dict(redis_client.pubsub_numsub(CHANNEL)).get(CHANNEL) != 2:
        assert time.monotonic() < deadline, "the workers did not subscribe to the model broadcast"
        time.sleep(0.1)

    pinned = httpx.post(f"{url}/load", json={"pin": True}, headers=headers, timeout=120).json()
    assert pinned["pinned"] is True and pinned["other_workers_told"] == 1
    every_worker(gateway_server, headers, lambda m: m.get(DEFAULT_MODEL, {}).get("pinned"), "pinned it")

    gone = httpx.post(f"{url}/unload", json={}, headers=headers, timeout=60).json()
    assert gone["unloaded"] is True and gone["other_workers_told"] == 1
    every_worker(gateway_server, headers, lambda m: DEFAULT_MODEL not in m, "unloaded it")

    # Unloaded everywhere, it is still served: the next request loads it again.
    reply = httpx.post(f"{gateway_server}/v1/chat/completions", headers=headers, timeout=120, json={
        "model": DEFAULT_MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]})
    assert reply.status_code == 200
    restored = httpx.post(f"{url}/load", json={"pin": False}, headers=headers, timeout=120).json()
    assert restored["pinned"] is False
    every_worker(gateway_server, headers, lambda m: DEFAULT_MODEL in m and not m[DEFAULT_MODEL]["pinned"],
                 "loaded it again")
