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
                 "/v1/admin/models/{model_id}/unload", "/v1/messages", "/v1/messages/count_tokens"):
        assert path in document["paths"]
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


def test_health_endpoints(server):
    assert httpx.get(f"{server.base_url}/healthz", timeout=10).json() == {"status": "ok"}
    assert httpx.head(f"{server.base_url}/", timeout=10).status_code == 200  # what Codex checks first
    ready = httpx.get(f"{server.base_url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["engines"][0]["alive"] is True
    assert ready.headers["x-request-id"]
    echoed = httpx.get(f"{server.base_url}/healthz", headers={"X-Request-ID": "abc-123"}, timeout=10)
    assert echoed.headers["x-request-id"] == "abc-123"
