"""The operator's key controls (admin scope), the API beside `impetus keys`:

GET    /v1/admin/keys          every key: name, prefix, scopes, limits, usage
POST   /v1/admin/keys          make one; the key is in this answer only
PATCH  /v1/admin/keys/{name}   change its limits, share, priority, models or budget
DELETE /v1/admin/keys/{name}   revoke it, at once in every worker
"""

from __future__ import annotations

from contextlib import contextmanager

from redis.exceptions import RedisError

from impetus.api.admin_schemas import AdminKeyCreate, AdminKeyUpdate
from impetus.api.validation import parse
from impetus.gateway.audit import AuditEntry, key_settings
from impetus.gateway.keys import KeyExists, KeyNotFound
from impetus.web import APIError


def describe(record, usage: dict | None = None) -> dict:
    usage = usage or {}
    return {"name": record.name, "prefix": record.prefix, "scopes": record.scopes, "rpm": record.rpm,
            "tpm": record.tpm, "share": record.share, "priority": record.priority_name,
            "autocomplete_priority": record.autocomplete_priority_name,
            "created": record.created, "expires": record.expires, "models": list(record.models) or None,
            "budget": ({"tokens": record.budget_tokens, "period": record.budget_period}
                       if record.budget_tokens else None),
            "usage": {"requests": int(usage.get("requests", 0)),
                      "prompt_tokens": int(usage.get("prompt_tokens", 0)),
                      "completion_tokens": int(usage.get("completion_tokens", 0)),
                      "last_used": float(usage["last_used"]) if usage.get("last_used") else None}}


def keys_enabled(gateway):
    """The gateway; 404 when the server runs without keys (and so without Redis)."""
    if gateway is None:
        raise APIError(404, "API keys are not enabled on this server (IMPETUS_REQUIRE_API_KEYS=true enables them).",
                       code="keys_disabled")
    return gateway


def redis_unavailable(error, store: str = "key store") -> APIError:
    return APIError(503, f"The {store} (Redis) is unavailable: {error}. Please retry shortly.",
                    type="server_error", code="redis_unavailable", headers={"Retry-After": "5"})


@contextmanager
def key_store_errors():
    """The key store's refusals in the API's shape: 404 and 409 naming the
    key, 503 while Redis is away."""
    try:
        yield
    except KeyNotFound as error:
        raise APIError(404, str(error).capitalize() + ".", param="name", code="key_not_found") from error
    except KeyExists as error:
        raise APIError(409, str(error).capitalize() + ".", param="name", code="key_exists") from error
    except RedisError as error:
        raise redis_unavailable(error) from error


class AdminKeysResource:
    def __init__(self, gateway, settings):
        self.gateway = gateway
        self.settings = settings

    def on_get(self, req, resp):
        keys = keys_enabled(self.gateway).keys
        with key_store_errors():
            listed = keys.list()
        resp.media = {"object": "list", "default_rpm": self.settings.default_rpm,
                      "default_tpm": self.settings.default_tpm,
                      "data": [describe(record, usage) for record, usage in listed]}

    def on_post(self, req, resp):
        keys = keys_enabled(self.gateway).keys
        body = parse(AdminKeyCreate, req.context.json)
        with key_store_errors():
            key, record = keys.create(body.name, admin=body.admin, rpm=body.rpm, tpm=body.tpm,
                                      expires_days=body.expires_days, share=body.share, priority=body.priority,
                                      models=body.models, budget_tokens=body.budget_tokens,
                                      budget_period=body.budget_period,
                                      autocomplete_priority=body.autocomplete_priority)
        req.context.audit = AuditEntry("key.created", record.name, key_settings(record))
        resp.status = 201
        resp.media = {**describe(record), "key": key}


class AdminKeyResource:
    def __init__(self, gateway):
        self.gateway = gateway

    def on_patch(self, req, resp, name):
        keys = keys_enabled(self.gateway).keys
        body = parse(AdminKeyUpdate, req.context.json)
        with key_store_errors():
            record = keys.update(name, rpm=body.rpm, tpm=body.tpm, share=body.share, priority=body.priority,
                                 models=body.models, budget_tokens=body.budget_tokens,
                                 budget_period=body.budget_period,
                                 autocomplete_priority=body.autocomplete_priority)
        req.context.audit = AuditEntry("key.updated", record.name,
                                       {k: v for k, v in body.model_dump(exclude_none=True).items()})
        resp.media = describe(record)

    def on_delete(self, req, resp, name):
        keys = keys_enabled(self.gateway).keys
        with key_store_errors():
            record = keys.revoke(name)
        req.context.audit = AuditEntry("key.revoked", record.name)
        resp.media = {"name": record.name, "revoked": True}
