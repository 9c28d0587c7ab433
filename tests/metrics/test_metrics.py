"""Metrics move by the right amounts, summed over every worker."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"


def scrape(base_url: str, headers=None) -> dict:
    text = httpx.get(f"{base_url}/metrics", headers=headers, timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_tokens_and_latencies_are_counted(server):
    model = DEFAULT_MODEL
    before = scrape(server.base_url)
    usages = []
    for question in ("Hi", "What is two plus two?", "Name a color."):
        response = httpx.post(f"{server.base_url}{CHAT}", timeout=60, json={
            "model": model, "max_tokens": 6, "messages": [{"role": "user", "content": question}]})
        usages.append(response.json()["usage"])
    with httpx.stream("POST", f"{server.base_url}{CHAT}", timeout=60, json={
            "model": model, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Say yes."}]}) as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    usages.append(events[-1]["usage"])
    bad = httpx.post(f"{server.base_url}{CHAT}", json={"model": model, "messages": []}, timeout=10)
    assert bad.status_code == 400
    after = scrape(server.base_url)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"route": CHAT}
    assert delta("impetus_requests_total", **route, status="200", model=model) == 4
    assert delta("impetus_requests_total", **route, status="400", model="") == 1
    assert delta("impetus_request_duration_seconds_count", **route) == 5
    assert delta("impetus_prompt_tokens_total", model=model, key="-") == sum(u["prompt_tokens"] for u in usages)
    assert delta("impetus_generation_tokens_total", model=model, key="-") == \
        sum(u["completion_tokens"] for u in usages)
    assert delta("impetus_time_to_first_token_seconds_count", model=model) == 4
    assert delta("impetus_time_per_output_token_seconds_count", model=model) == 4
    # Per-worker gauges (multiprocess "liveall") carry a pid label.
    memory = [v for (name, labels), v in after.items()
              if name == "impetus_model_memory_bytes" and dict(labels)["model"] == model]
    assert memory and all(v > 100e6 for v in memory)
    for gauge in ("impetus_mlx_active_memory_bytes", "impetus_process_resident_memory_bytes"):
        assert value(after, gauge) > 0
    assert ("impetus_mlx_cache_memory_bytes", ()) in after
    assert ("impetus_requests_running", (("model", model),)) in after
    # Series a dashboard plots exist before their first event, at 0.
    for name, labels in (("impetus_rate_limited_total", {"kind": "tokens"}),
                         ("impetus_queue_rejections_total", {"model": model}),
                         ("impetus_auth_failures_total", {"reason": "unverifiable"})):
        assert (name, tuple(sorted(labels.items()))) in after, name
    thermal = value(after, "impetus_thermal_state")
    assert thermal == -1 if sys.platform == "linux" else thermal in (0, 1, 2, 3)


def test_two_workers_give_one_consistent_total(gateway_server, redis_client):
    keys = KeyStore(redis_client)
    admin, _ = keys.create("metrics-admin", admin=True)
    user, _ = keys.create("metrics-user", rpm=3)
    admin_headers = {"Authorization": f"Bearer {admin}"}
    before = scrape(gateway_server, admin_headers)
    statuses = []
    for _ in range(5):  # fresh connections: spread over both workers
        statuses.append(httpx.get(f"{gateway_server}/v1/models", timeout=10,
                                  headers={"Authorization": f"Bearer {user}"}).status_code)
    for _ in range(4):
        httpx.get(f"{gateway_server}/v1/models", headers={"Authorization": "Bearer imp_nope"}, timeout=10)
    pids = {httpx.get(f"{gateway_server}/readyz", timeout=10).json()["pid"] for _ in range(30)}
    assert len(pids) == 2
    # Whichever worker answers the scrape, the totals are the same.
    scrapes = [scrape(gateway_server, admin_headers) for _ in range(6)]
    assert statuses == [200, 200, 200, 429, 429]
    for after in scrapes:
        def delta(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("impetus_requests_total", route="/v1/models", status="200", model="") == 3
        assert delta("impetus_requests_total", route="/v1/models", status="429", model="") == 2
        assert delta("impetus_rate_limited_total", kind="requests") == 2
        assert delta("impetus_auth_failures_total", reason="invalid") == 4


def test_a_dead_worker_leaves_its_counts_but_not_its_gauges(gateway_server, redis_client):
    """kill -9 one worker: the master replaces it, `child_exit` drops the dead
    worker's per-process gauges, and the counters it had written still count."""
    admin, _ = KeyStore(redis_client).create("metrics-ops", admin=True)
    headers = {"Authorization": f"Bearer {admin}"}

    def worker_pids():
        return {httpx.get(f"{gateway_server}/readyz", timeout=10).json()["pid"] for _ in range(30)}

    def gauge_pids(samples):
        return {dict(labels)["pid"] for (name, labels), _ in samples.items() if name == "impetus_model_memory_bytes"}

    for _ in range(10):  # fresh connections: both workers count some
        httpx.get(f"{gateway_server}/v1/models", headers={"Authorization": "Bearer imp_nope"}, timeout=10)
    pids = worker_pids()
    assert len(pids) == 2
    before = scrape(gateway_server, headers)
    assert gauge_pids(before) == {str(p) for p in pids}
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:  # the replacement has loaded the model and answers
        try:
            now = worker_pids()
            if len(now) == 2 and victim not in now:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the master did not replace the killed worker"
        time.sleep(0.5)
    after = scrape(gateway_server, headers)
    assert gauge_pids(after) == {str(p) for p in now}
    # Nothing but /readyz and /metrics came since: the failures counted before are all still there.
    assert value(after, "impetus_auth_failures_total", reason="invalid") == \
        value(before, "impetus_auth_failures_total", reason="invalid") >= 10
