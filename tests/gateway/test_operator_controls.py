"""Budgets, model allow-lists, usage and the audit trail through a real
two-worker server and a real redis-server, from the admin API and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta

import anthropic
import httpx
import openai
import pytest

from impetus.api import admin_schemas
from impetus.embeddings.model import DEFAULT_EMBEDDING_MODEL
from impetus.gateway.keys import KeyStore
from impetus.models.registry import Registry
from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow

# Sampled: the default model's own defaults are greedy, and a repeated greedy request comes from the cache.
CHAT = {"model": DEFAULT_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}], "temperature": 1.0}


@pytest.fixture
def admin(gateway_server, redis_client):
    key, _ = KeyStore(redis_client).create("ops-lead", admin=True)
    return httpx.Client(base_url=gateway_server, headers={"Authorization": f"Bearer {key}"}, timeout=60), key


def as_key(gateway_server, key):
    return httpx.Client(base_url=gateway_server, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def impetus(redis_url, *args, data_dir=None):
    env = {**os.environ, "IMPETUS_REDIS_URL": redis_url}
    if data_dir is not None:
        env["IMPETUS_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "impetus", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_a_budget_refuses_with_retry_after_to_the_next_reset_and_usage_adds_up(gateway_server, admin):
    http, _ = admin
    created = http.post("/v1/admin/keys", json={"name": "intern", "budget_tokens": 120, "budget_period": "day"})
    assert created.status_code == 201 and created.json()["budget"] == {"tokens": 120, "period": "day"}
    admin_schemas.AdminKeyCreated.model_validate(created.json())  # the answer is what /openapi.json says
    intern = as_key(gateway_server, created.json()["key"])
    spent, remaining, refused = 0, [], None
    for _ in range(40):
        answer = intern.post("/v1/chat/completions", json=CHAT)
        if answer.status_code == 429:
            refused = answer
            break
        assert answer.status_code == 200, answer.text
        remaining.append(int(answer.headers["x-impetus-budget-remaining"]))
        spent += answer.json()["usage"]["total_tokens"]
    assert refused is not None, "the budget never ran out"
    assert spent >= 120 and remaining == sorted(remaining, reverse=True) and remaining[0] == 120
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("budget_exceeded", "rate_limit_error")
    assert "120 tokens per day" in error["message"]
    now = datetime.now().astimezone()
    midnight = datetime(now.year, now.month, now.day).astimezone() + timedelta(days=1)
    assert abs(int(refused.headers["Retry-After"]) - (midnight - now).total_seconds()) < 10
    assert refused.headers["x-impetus-budget-remaining"] == "0"
    # Embeddings spend the same budget.
    assert intern.post("/v1/embeddings", json={"model": DEFAULT_EMBEDDING_MODEL, "input": "x"}).status_code == 429

    # Its own usage: the sum of what the answers reported; another key's is not readable.
    own = intern.get("/v1/usage").json()
    admin_schemas.UsageReport.model_validate(own)
    assert own["totals"]["prompt_tokens"] + own["totals"]["completion_tokens"] == spent
    assert own["totals"]["requests"] == len(remaining)
    assert own["budget"]["used"] == spent and own["budget"]["remaining"] == 0
    assert intern.get("/v1/usage", params={"key": "ops-lead"}).status_code == 403
    assert intern.get("/v1/admin/usage").status_code == 403
    # The operator sees it per key and model; raising the budget lets it go on at once.
    report = http.get("/v1/admin/usage", params={"key": "intern"}).json()
    admin_schemas.UsageReport.model_validate(report)
    admin_schemas.AdminKeyList.model_validate(http.get("/v1/admin/keys").json())
    assert [(r["key"], r["model"]) for r in report["data"]] == [("intern", DEFAULT_MODEL)]
    assert report["totals"] == own["totals"]
    assert http.patch("/v1/admin/keys/intern", json={"budget_tokens": 100_000}).status_code == 200
    assert intern.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert http.get("/v1/admin/usage", params={"since": "yesterday"}).json()["error"]["param"] == "since"


def test_the_allow_list_holds_on_every_route_and_filters_the_model_list(gateway_server, admin, data_dir):
    http, _ = admin
    registry = Registry(data_dir / "models")
    registry.add_alias("team-chat", DEFAULT_MODEL)
    try:
        chat_only = as_key(gateway_server, http.post("/v1/admin/keys", json={
            "name": "chat-only", "models": [DEFAULT_MODEL]}).json()["key"])
        embed = http.post("/v1/admin/keys", json={"name": "embed-only", "models": [DEFAULT_EMBEDDING_MODEL]})
        embed_key = embed.json()["key"]
        embed_only = as_key(gateway_server, embed_key)
        alias_only = as_key(gateway_server, http.post("/v1/admin/keys", json={
            "name": "alias-only", "models": ["team-chat"]}).json()["key"])

        # /v1/models lists only what the key may use; an alias of an allowed model is allowed.
        assert {m["id"] for m in chat_only.get("/v1/models").json()["data"]} == {DEFAULT_MODEL, "team-chat"}
        assert [m["id"] for m in embed_only.get("/v1/models").json()["data"]] == [DEFAULT_EMBEDDING_MODEL]
        assert [m["id"] for m in alias_only.get("/v1/models").json()["data"]] == ["team-chat"]
        assert chat_only.get("/v1/models/team-chat").status_code == 200
        assert alias_only.get(f"/v1/models/{DEFAULT_MODEL}").status_code == 403
        assert len(http.get("/v1/models").json()["data"]) > 2  # no list: every model

        assert chat_only.post("/v1/chat/completions", json=CHAT).status_code == 200
        refused = {
            "chat": embed_only.post("/v1/chat/completions", json=CHAT),
            "completions": embed_only.post("/v1/completions", json={"model": DEFAULT_MODEL, "prompt": "Hi"}),
            "responses": embed_only.post("/v1/responses", json={"model": DEFAULT_MODEL, "input": "Hi"}),
            "embeddings": chat_only.post("/v1/embeddings", json={"model": DEFAULT_EMBEDDING_MODEL, "input": "x"}),
            "model": embed_only.get(f"/v1/models/{DEFAULT_MODEL}"),
        }
        for route, answer in refused.items():
            assert answer.status_code == 403, route
            assert answer.json()["error"]["code"] == "model_not_allowed", route
            assert answer.json()["error"]["param"] == "model", route
        assert embed_only.post("/v1/embeddings", json={"model": DEFAULT_EMBEDDING_MODEL, "input": "x"}) \
            .status_code == 200
        # The Anthropic face answers in Anthropic's shape.
        counted = embed_only.post("/v1/messages/count_tokens", json={
            "model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}]})
        assert counted.status_code == 403 and counted.json()["error"]["type"] == "permission_error"
        assert "may not use the model" in counted.json()["error"]["message"]
        client = anthropic.Anthropic(base_url=gateway_server, api_key=embed_key, max_retries=0)
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            client.messages.create(model=DEFAULT_MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
        assert denied.value.body["type"] == "error" and denied.value.body["error"]["type"] == "permission_error"
        with pytest.raises(openai.PermissionDeniedError):
            openai.OpenAI(base_url=f"{gateway_server}/v1", api_key=embed_key, max_retries=0) \
                .chat.completions.create(**CHAT)
        # Cleared, the list allows everything again.
        assert http.patch("/v1/admin/keys/embed-only", json={"models": []}).json()["models"] is None
        assert embed_only.post("/v1/chat/completions", json=CHAT).status_code == 200
    finally:
        registry.remove_alias("team-chat")


def test_the_cli_updates_keys_reports_usage_and_reads_the_audit_trail(gateway_server, admin, redis_server,
                                                                     data_dir):
    http, admin_key = admin
    made = impetus(redis_server.url, "keys", "create", "--name", "dana", "--models", DEFAULT_MODEL)
    assert made.returncode == 0, made.stderr
    dana = made.stdout.strip().splitlines()[-1]
    updated = impetus(redis_server.url, "keys", "update", dana, "--budget-tokens", "5000", "--budget-period",
                      "week", "--rpm", "30")  # by the key itself
    assert updated.returncode == 0, updated.stderr
    assert "budget 5000/week" in updated.stderr and f"models {DEFAULT_MODEL}" in updated.stderr
    bad = impetus(redis_server.url, "keys", "update", "dana", "--budget-period", "year")
    assert bad.returncode == 2
    answers = [as_key(gateway_server, dana).post("/v1/chat/completions", json=CHAT).json() for _ in range(2)]
    time.sleep(0.2)
    report = impetus(redis_server.url, "usage", "--key", "dana", "--csv")
    assert report.returncode == 0, report.stderr
    lines = report.stdout.strip().splitlines()
    assert lines[0] == "date,key,model,requests,prompt_tokens,completion_tokens,cached_tokens"
    [row] = [line.split(",") for line in lines[1:]]
    assert row[1:4] == ["dana", DEFAULT_MODEL, "2"]
    assert int(row[4]) == sum(a["usage"]["prompt_tokens"] for a in answers)
    assert int(row[5]) == sum(a["usage"]["completion_tokens"] for a in answers)

    # Admin actions through the API, then the trail from both sides.
    assert http.post("/v1/admin/keys", json={"name": "erin", "tpm": 900}).status_code == 201
    assert http.patch("/v1/admin/keys/erin", json={"priority": "batch"}).status_code == 200
    assert http.delete("/v1/admin/keys/erin").status_code == 200
    assert http.delete("/v1/admin/keys/erin").status_code == 404  # failed: not recorded
    assert http.post(f"/v1/admin/models/{DEFAULT_MODEL}/load", json={"pin": True}).status_code == 200
    trail = http.get("/v1/admin/audit", params={"limit": 20}).json()
    admin_schemas.AuditList.model_validate(trail)
    entries = trail["data"]
    actions = [(e["who"], e["action"], e["target"]) for e in entries]
    assert actions[:4] == [("ops-lead", "model.pinned", DEFAULT_MODEL), ("ops-lead", "key.revoked", "erin"),
                           ("ops-lead", "key.updated", "erin"), ("ops-lead", "key.created", "erin")]
    assert entries[3]["detail"]["tpm"] == 900 and entries[3]["address"] == "127.0.0.1"
    cli_entries = [(e["action"], e["target"]) for e in entries if e["who"].startswith("cli:")]
    assert cli_entries[:2] == [("key.updated", "dana"), ("key.created", "dana")]
    trail = json.dumps(entries)
    for secret in (dana, admin_key, "imp_"):
        assert secret not in trail, "no key material in the audit trail"
    shown = impetus(redis_server.url, "audit", "--action", "key.", "--json")
    assert [e["action"] for e in json.loads(shown.stdout)][:3] == ["key.revoked", "key.updated", "key.created"]
    assert http.get("/v1/admin/audit", params={"limit": 0}).status_code == 400
    # Model commands that work without the stack are recorded when its Redis runs.
    assert impetus(redis_server.url, "models", "alias", "audited", DEFAULT_MODEL, data_dir=data_dir).returncode == 0
    assert impetus(redis_server.url, "models", "alias", "audited", "--remove", data_dir=data_dir).returncode == 0
    latest = http.get("/v1/admin/audit", params={"limit": 2, "action": "model."}).json()["data"]
    assert [(e["action"], e["target"], e["detail"].get("target")) for e in latest] == [
        ("model.alias_removed", "audited", None), ("model.aliased", "audited", DEFAULT_MODEL)]
    assert all(e["who"].startswith("cli:") for e in latest)
