from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.slow


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_openapi_document_describes_the_api(server):
    document = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
    assert document["openapi"] == "3.1.0"
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model_id}",
                 "/healthz", "/readyz", "/v1/admin/models", "/v1/admin/models/{model_id}/load",
                 "/v1/admin/models/{model_id}/unload", "/v1/messages", "/v1/messages/count_tokens",
                 "/v1/admin/keys", "/v1/admin/keys/{name}", "/v1/admin/events", "/v1/status", "/v1/usage",
                 "/v1/admin/usage", "/v1/admin/audit", "/v1/admin/models/discover", "/v1/admin/models/import",
                 "/v1/admin/models/imports", "/metrics"):
        assert path in document["paths"]
    assert set(document["paths"]["/v1/admin/keys/{name}"]) == {"patch", "delete"}
    assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    events = document["paths"]["/v1/admin/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    usage = document["paths"]["/v1/admin/usage"]["get"]
    assert [p["name"] for p in usage["parameters"]] == ["since", "until", "key"]
    assert "budget_tokens" in document["components"]["schemas"]["AdminKeyUpdate"]["properties"]
    schemas = document["components"]["schemas"]
    # Every reference resolves.
    for ref in set(_refs(document)):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    chat = schemas["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])
    assert chat["additionalProperties"] is False
    temperature = chat["properties"]["temperature"]["anyOf"]  # a number, or null: the server's default
    assert {"type": "null"} in temperature and {"type": "number", "minimum": 0.0, "maximum": 2.0} in temperature
    messages = schemas["MessagesRequest"]
    assert {"model", "messages", "max_tokens"} <= set(messages["required"])
    assert messages["additionalProperties"] is False
    error = document["paths"]["/v1/messages"]["post"]["responses"]["400"]["content"]["application/json"]
    assert error["schema"]["$ref"].endswith("/AnthropicError")


def test_every_routed_path_is_described(settings):
    """The app's own routes (Falcon's inspect_routes) against the document:
    nothing a client can call goes undescribed."""
    import re

    from falcon.inspect import inspect_routes

    from impetus.api.app import create_app
    from impetus.api.openapi import build_openapi
    from impetus.engine.host import EngineHost
    from impetus.metrics import Metrics

    app = create_app(settings, EngineHost(settings), waker=None, metrics=Metrics.null())
    routed = {re.sub(r"\{(\w+):path\}", r"{\1}", route.path) for route in inspect_routes(app)}
    assert "/v1/admin/keys/{name}" in routed and "/metrics" in routed
    assert routed - set(build_openapi()["paths"]) == {"/", "/openapi.json"}


def test_health_endpoints(server):
    assert httpx.get(f"{server.base_url}/healthz", timeout=10).json() == {"status": "ok"}
    assert httpx.head(f"{server.base_url}/", timeout=10).status_code == 200  # what Codex checks first
    ready = httpx.get(f"{server.base_url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["engines"][0]["alive"] is True
    assert ready.headers["x-request-id"]
    echoed = httpx.get(f"{server.base_url}/healthz", headers={"X-Request-ID": "abc-123"}, timeout=10)
    assert echoed.headers["x-request-id"] == "abc-123"
