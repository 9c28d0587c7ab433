"""The admin API the dashboard uses: keys, and the live event stream."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port, start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture
def admin_headers(redis_client):
    admin, _ = KeyStore(redis_client).create("dashboard-operator", admin=True)
    return {"Authorization": f"Bearer {admin}"}


def test_keys_are_created_listed_and_revoked(gateway_server, admin_headers, redis_client):
    http = httpx.Client(base_url=gateway_server, headers=admin_headers, timeout=10)
    created = http.post("/v1/admin/keys", json={"name": "carol", "rpm": 30})
    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith(created.json()["prefix"]) and created.json()["scopes"] == ["inference"]
    listed = http.get("/v1/admin/keys").json()
    carol = next(k for k in listed["data"] if k["name"] == "carol")
    assert carol["rpm"] == 30 and "key" not in carol and key not in json.dumps(listed)
    assert httpx.get(f"{gateway_server}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert http.post("/v1/admin/keys", json={"name": "carol"}).json()["error"]["code"] == "key_exists"
    bad = http.post("/v1/admin/keys", json={"name": "no spaces please"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
    # Only admins manage keys.
    assert httpx.get(f"{gateway_server}/v1/admin/keys", headers={"Authorization": f"Bearer {key}"}).status_code == 403
    assert http.delete("/v1/admin/keys/carol").json() == {"name": "carol", "revoked": True}
    assert httpx.get(f"{gateway_server}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert http.delete("/v1/admin/keys/carol").status_code == 404


def test_a_keys_share_and_priority_are_set_and_changed(gateway_server, admin_headers):
    http = httpx.Client(base_url=gateway_server, headers=admin_headers, timeout=10)
    created = http.post("/v1/admin/keys", json={"name": "nightly-jobs", "share": 0.5, "priority": "batch"}).json()
    assert (created["share"], created["priority"]) == (0.5, "batch")
    changed = http.patch("/v1/admin/keys/nightly-jobs", json={"priority": "interactive", "tpm": 5000})
    assert changed.status_code == 200
    assert (changed.json()["priority"], changed.json()["share"], changed.json()["tpm"]) == ("interactive", 0.5, 5000)
    listed = next(k for k in http.get("/v1/admin/keys").json()["data"] if k["name"] == "nightly-jobs")
    assert (listed["priority"], listed["tpm"]) == ("interactive", 5000)
    bad = http.patch("/v1/admin/keys/nightly-jobs", json={"priority": "urgent"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "priority"
    assert http.patch("/v1/admin/keys/nobody", json={"share": 2}).status_code == 404
    # A request of the key may ask for a later priority (an integer, as vLLM's), not beyond the schema's range.
    key = created["key"]
    user = httpx.Client(base_url=gateway_server, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    body = {"model": DEFAULT_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    assert user.post("/v1/chat/completions", json={**body, "priority": 5}).status_code == 200
    too_far = user.post("/v1/chat/completions", json={**body, "priority": 10**6})
    assert too_far.status_code == 400 and too_far.json()["error"]["param"] == "priority"
    http.delete("/v1/admin/keys/nightly-jobs")


def test_a_batch_keys_autocomplete_can_be_interactive(gateway_server, admin_headers, redis_client):
    """A key whose agents run as batch, its editor's fill-in-the-middle requests first: one
    tenant (one share of the machine), two priorities (the scheduler's Tenant)."""
    from impetus.gateway.account import KeyAccount
    from impetus.gateway.keys import KeyStore

    http = httpx.Client(base_url=gateway_server, headers=admin_headers, timeout=10)
    created = http.post("/v1/admin/keys", json={"name": "dev-laptop", "priority": "batch",
                                                "autocomplete_priority": "interactive"}).json()
    assert (created["priority"], created["autocomplete_priority"]) == ("batch", "interactive")
    record = KeyStore(redis_client).verify(created["key"])
    account = KeyAccount(record, None, None, 0, 0, None, None, None)  # what the gateway makes of the key
    agents, keystrokes = account.tenant_for(False), account.tenant_for(True)
    assert (agents.priority, keystrokes.priority) == (1, 0) and agents.id == keystrokes.id
    cleared = http.patch("/v1/admin/keys/dev-laptop", json={"autocomplete_priority": ""}).json()
    assert cleared["autocomplete_priority"] is None
    assert KeyAccount(KeyStore(redis_client).verify(created["key"]), None, None, 0, 0, None, None, None
                      ).tenant_for(True).priority == 1
    http.delete("/v1/admin/keys/dev-laptop")


def read_events(lines, count: int) -> list[tuple[str, dict]]:
    """The next `count` events from an iterator over the stream's lines (one
    iterator per stream, kept by the caller: httpx streams only once)."""
    events, event = [], None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            events.append((event, json.loads(line[6:])))
            if len(events) == count:
                return events
    return events


def test_live_events_follow_the_traffic(gateway_server, admin_headers):
    with httpx.stream("GET", f"{gateway_server}/v1/admin/events", headers=admin_headers, timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        (kind, status), (_, first) = read_events(lines, 2)
        assert kind == "status" and status["hardware"]["cores"] >= 1
        assert any(m["id"] == DEFAULT_MODEL for m in first["models"]["loaded"])
        reply = httpx.post(f"{gateway_server}/v1/chat/completions", headers=admin_headers, timeout=60, json={
            "model": DEFAULT_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Count to five."}]})
        assert reply.status_code == 200
        later = [data for _, data in read_events(lines, 4)]
    assert later[-1]["requests_total"] > first["requests_total"]
    assert later[-1]["generated_tokens_total"] >= first["generated_tokens_total"] + \
        reply.json()["usage"]["completion_tokens"]
    assert any(e["tokens_per_s"] and e["tokens_per_s"] > 0 for e in later)
    assert any(e["ttft_s"] and e["ttft_s"] > 0 for e in later)
    assert all(e["redis"] == "ok" for e in later)


def test_an_open_event_stream_does_not_hold_up_shutdown(data_dir, tmp_path):
    port = free_port()
    process = start_server(port, tmp_path / "server.log", {"IMPETUS_DATA_DIR": str(data_dir)})
    try:
        with httpx.stream("GET", f"http://127.0.0.1:{port}/v1/admin/events", timeout=30) as stream:
            lines = stream.iter_lines()
            read_events(lines, 2)
            started = time.monotonic()
            stop_server(process, timeout=30)
            list(lines)  # the stream ends rather than hanging
        assert time.monotonic() - started < 15  # the graceful timeout is 60 s
        assert process.returncode == 0
    finally:
        stop_server(process)
