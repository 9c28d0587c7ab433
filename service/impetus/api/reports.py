"""What happened, read back from Redis:

GET /v1/usage         the calling key's own usage (any key)
GET /v1/admin/usage   every key's (admin scope), optionally one key's
GET /v1/admin/audit   the audit trail, newest first (admin scope)

Usage rows are per day, key and model (`impetus.gateway.usage`); the query
takes `since` and `until` (YYYY-MM-DD, server dates; default the last 30
days) and, for admins, `key` (a key's name).
"""

from __future__ import annotations

from datetime import date, timedelta

from redis.exceptions import RedisError

from impetus.api.admin_keys import keys_enabled, redis_unavailable
from impetus.gateway.usage import totals
from impetus.web import APIError, bad_request

DEFAULT_DAYS = 30
MAX_DAYS = 800


def _date(req, name: str) -> date | None:
    text = req.get_param(name)
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise bad_request(f"'{name}' must be a date as YYYY-MM-DD, not {text!r}.", param=name,
                          code="invalid_value") from None


def usage_report(gateway, req, key: str | None) -> dict:
    until = _date(req, "until") or gateway.usage.clock().date()
    since = _date(req, "since") or until - timedelta(days=DEFAULT_DAYS - 1)
    if since > until:
        raise bad_request("'since' is after 'until'.", param="since", code="invalid_value")
    if (until - since).days >= MAX_DAYS:
        raise bad_request(f"A report covers at most {MAX_DAYS} days.", param="since", code="invalid_value")
    try:
        rows = gateway.usage.report(since=since, until=until, key=key)
    except RedisError as error:
        raise redis_unavailable(error, "usage store") from error
    return {"object": "list", "since": since.isoformat(), "until": until.isoformat(), "key": key,
            "totals": totals(rows), "data": [row.as_dict() for row in rows]}


class UsageResource:
    """GET /v1/usage: a key sees its own usage, never another's."""

    def __init__(self, gateway):
        self.gateway = gateway

    def on_get(self, req, resp):
        gateway = keys_enabled(self.gateway)
        account = req.context.account
        if req.get_param("key") not in (None, account.name):
            raise APIError(403, "A key can read only its own usage; GET /v1/admin/usage (admin scope) reads any.",
                           type="permission_error", param="key", code="not_your_usage")
        report = usage_report(gateway, req, account.name)
        key = account.key
        if key is not None and key.budget_tokens:
            try:
                budget = gateway.usage.budget(key.hash, key.budget_tokens, key.budget_period)
            except RedisError as error:
                raise redis_unavailable(error, "usage store") from error
            report["budget"] = {"tokens": budget.limit, "period": budget.period, "used": budget.used,
                                "remaining": budget.remaining, "resets_in_s": budget.reset_s}
        resp.media = report


class AdminUsageResource:
    def __init__(self, gateway):
        self.gateway = gateway

    def on_get(self, req, resp):
        resp.media = usage_report(keys_enabled(self.gateway), req, req.get_param("key"))


class AdminAuditResource:
    """GET /v1/admin/audit?limit=100&action=key.&who=NAME"""

    def __init__(self, gateway):
        self.gateway = gateway

    def on_get(self, req, resp):
        gateway = keys_enabled(self.gateway)
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000, default=100)
        try:
            entries = gateway.audit.latest(limit, action=req.get_param("action"), who=req.get_param("who"))
        except RedisError as error:
            raise redis_unavailable(error, "usage store") from error
        resp.media = {"object": "list", "data": entries}
