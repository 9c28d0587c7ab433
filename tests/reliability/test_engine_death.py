"""A worker whose engine thread dies exits, and Gunicorn replaces it (issue 17,
point 2): before, it stayed up answering 503 for that model until restarted
by hand. The fault is real: the engine thread raises, through a debug-only
admin route (IMPETUS_DEBUG_FAULTS), as a bug in a step would."""

from __future__ import annotations

import time

import httpx
import pytest

from impetus.models.store import DEFAULT_MODEL

from conftest import Server

pytestmark = pytest.mark.slow


def worker_pid(url: str) -> int | None:
    try:
        answer = httpx.get(f"{url}/v1/admin/models", timeout=5)
    except httpx.HTTPError:
        return None
    return answer.json()["worker_pid"] if answer.status_code == 200 else None


@pytest.mark.own_server("kills its engine thread (IMPETUS_DEBUG_FAULTS)")
def test_a_dead_engine_thread_takes_its_worker_down_and_a_fresh_one_serves(data_dir, tmp_path):
    server = Server(data_dir, tmp_path / "server.log", debug_faults="true")
    try:
        url = server.base_url
        first = worker_pid(url)
        fault = httpx.post(f"{url}/v1/admin/debug/fault", json={"model": DEFAULT_MODEL}, timeout=10)
        assert fault.status_code == 202 and fault.json()["worker_pid"] == first
        deadline = time.monotonic() + 120
        while worker_pid(url) in (first, None):
            assert time.monotonic() < deadline, server.logs()[-3000:]
            time.sleep(0.5)
        answer = httpx.post(f"{url}/v1/completions", timeout=60,
                            json={"model": DEFAULT_MODEL, "prompt": "Hello", "max_tokens": 3})
        assert answer.status_code == 200
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        logs = server.logs()
        assert "the engine thread for smollm2-135m-instruct died" in logs
        assert f"this worker (pid {first}) exits so that Gunicorn replaces it" in logs
        assert "RuntimeError: a fault injected" in logs
        unknown = httpx.post(f"{url}/v1/admin/debug/fault", json={"model": "nope"}, timeout=10)
        assert unknown.status_code == 404
    finally:
        server.stop()
    assert server.process.returncode == 0


def test_the_fault_route_exists_only_when_asked_for(server):
    answer = httpx.post(f"{server.base_url}/v1/admin/debug/fault", json={"model": DEFAULT_MODEL}, timeout=10)
    assert answer.status_code == 404
