"""The audit trail: every admin action, appended to a Redis stream.

One entry per action that changed something: who (the key's name, or
`cli:USER` for the command line on the server), what (`key.created`,
`model.loaded`, ...), the target, when, from which address, and details such
as the new limits. Never key material: a key is named, not shown or hashed.

Why a stream (XADD) and not a list or a log file: entries get a time-ordered
id for free, XREVRANGE reads the latest without scanning, every worker and
host appends to the same trail, and MAXLEN ~ keeps it bounded (100,000
entries: years of a team's admin actions at a few hundred bytes each).

Resources say what they did by setting `req.context.audit` to an
`AuditEntry`; `AuditMiddleware` writes it once the answer is a success, so a
refused or failed action leaves no entry.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from impetus.gateway.spool import Ops

log = logging.getLogger("impetus.gateway")

MAX_ENTRIES = 100_000
ACTIONS = ("key.created", "key.updated", "key.revoked", "keys.imported", "model.loaded", "model.pinned",
           "model.unloaded", "model.import_started", "model.imported", "model.pulled", "model.aliased",
           "model.alias_removed")



@dataclass(frozen=True)
class AuditEntry:
    action: str
    target: str
    detail: dict = field(default_factory=dict)


def key_settings(record) -> dict:
    """What an audit entry keeps of a key: its settings, never key material."""
    return {"admin": record.admin, "rpm": record.rpm, "tpm": record.tpm, "share": record.share,
            "priority": record.priority_name, "models": list(record.models), "budget_tokens": record.budget_tokens,
            "budget_period": record.budget_period, "expires": record.expires,
            "autocomplete_priority": record.autocomplete_priority_name}


class AuditLog:
    def __init__(self, redis, prefix: str = "impetus:"):
        self.redis = redis
        self.stream = f"{prefix}audit"

    def record(self, who: str, entry: AuditEntry, address: str = "-", writer=None) -> None:
        """Appended now, or into `writer` (a spool's Ops) to be written later."""
        (writer if writer is not None else self.redis).xadd(self.stream, {
            "at": repr(time.time()), "who": who, "action": entry.action, "target": entry.target,
            "address": address or "-", "detail": json.dumps(entry.detail, sort_keys=True),
        }, maxlen=MAX_ENTRIES, approximate=True)

    def latest(self, count: int = 100, action: str | None = None, who: str | None = None) -> list[dict]:
        """The newest first; filtered by action prefix ("key.") or who."""
        found, cursor = [], "+"
        while len(found) < count:
            batch = self.redis.xrevrange(self.stream, max=cursor, count=max(count, 100))
            for entry_id, fields in batch:
                if entry_id == cursor:
                    continue
                if action and not fields.get("action", "").startswith(action):
                    continue
                if who and fields.get("who") != who:
                    continue
                found.append({"id": entry_id, "at": float(fields.get("at", 0)), "who": fields.get("who"),
                              "action": fields.get("action"), "target": fields.get("target"),
                              "address": fields.get("address"), "detail": json.loads(fields.get("detail") or "{}")})
                if len(found) == count:
                    break
            if len(batch) < max(count, 100) or not batch:
                break
            cursor = batch[-1][0]
        return found


def cli_who() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def record_from_cli(redis_url: str, entry: AuditEntry) -> bool:
    """For commands that work without the stack (models import, pull, alias):
    recorded when the stack's Redis answers, skipped (False) when it is not running."""
    from impetus.gateway import connect

    try:
        AuditLog(connect(redis_url)).record(cli_who(), entry, "local")
    except RedisError:
        return False
    return True


class AuditMiddleware:
    """Writes the action a resource reported, once its answer is a success.
    While Redis is down the action still happens; its entry waits in the
    usage spool (impetus.gateway.spool) and is logged and counted."""

    def __init__(self, audit: AuditLog, metrics, spool=None):
        self.audit = audit
        self.metrics = metrics
        self.spool = spool

    def process_response(self, req, resp, resource, req_succeeded):
        entry = req.context.audit  # None (RequestContext's default) unless an admin resource acted
        if entry is None or not req_succeeded or not 200 <= resp.status_code < 300:
            return
        account = req.context.account
        address = req.access_route[0] if req.access_route else req.remote_addr
        try:
            self.audit.record(account.name, entry, address)
        except RedisError as error:
            self.metrics.redis_errors.labels("audit").inc()
            log.warning("redis unavailable (%s): audit entry kept until it is back: %s %s %s by %s from %s", error,
                        entry.action, entry.target, json.dumps(entry.detail), account.name, address)
            if self.spool is not None:
                ops = Ops()
                self.audit.record(account.name, entry, address, writer=ops)
                self.spool.add(ops)
