"""Personal API keys, stored in Redis as hashes only.

A key is `imp_` + 32 random bytes (base64url). Redis holds sha256(key) and the
key's metadata; the key itself is shown once, at creation, and never stored or
logged. Lookups are by hash, and the stored hash is compared to the computed
one with `hmac.compare_digest`.

Layout (all under one prefix, so one Redis can serve several stacks):
  {prefix}key:{sha256}      hash: name, prefix, admin, rpm, tpm, share, priority, created, expires,
                            models (comma-separated; empty: all), budget_tokens, budget_period
  {prefix}keyname:{name}    string: sha256 (names are unique)
  {prefix}keys              set of sha256
  {prefix}usage:{sha256}    hash: requests, prompt_tokens, completion_tokens, last_used
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from impetus.engine.request import PRIORITY_NAMES
from impetus.gateway.usage import PERIODS

KEY_PREFIX = "imp_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@dataclass(frozen=True)
class ApiKey:
    hash: str
    name: str
    prefix: str  # the first characters, to recognise a key in listings
    admin: bool
    rpm: int | None  # None: the server's default
    tpm: int | None
    created: float
    expires: float | None
    share: float = 1.0  # its weight when keys share the batch
    priority: int = 0  # 0 interactive, 1 batch (impetus.engine.request)
    models: tuple[str, ...] = ()  # the models it may use; empty: all
    budget_tokens: int | None = None  # tokens per budget_period; None: no budget
    budget_period: str = "month"
    # Its fill-in-the-middle requests' priority (an editor's autocomplete), when not its own:
    # a key whose agents run as batch can still get its keystrokes answered first.
    autocomplete_priority: int | None = None

    @property
    def priority_name(self) -> str:
        return next(name for name, value in PRIORITY_NAMES.items() if value == self.priority)

    @property
    def autocomplete_priority_name(self) -> str | None:
        return next((n for n, v in PRIORITY_NAMES.items() if v == self.autocomplete_priority), None)

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (now or time.time()) >= self.expires

    @property
    def scopes(self) -> list[str]:
        return ["inference", "admin"] if self.admin else ["inference"]

    @classmethod
    def from_redis(cls, key_hash: str, fields: dict) -> "ApiKey":
        def number(name):
            value = fields.get(name, "")
            return int(value) if value not in ("", "0") else None

        return cls(
            hash=key_hash,
            name=fields["name"],
            prefix=fields["prefix"],
            admin=fields.get("admin") == "1",
            rpm=number("rpm"),
            tpm=number("tpm"),
            created=float(fields["created"]),
            expires=float(fields["expires"]) if fields.get("expires") else None,
            share=float(fields.get("share") or 1.0),
            priority=PRIORITY_NAMES.get(fields.get("priority", ""), 0),
            models=tuple(m for m in fields.get("models", "").split(",") if m),
            budget_tokens=number("budget_tokens"),
            budget_period=fields.get("budget_period") or "month",
            autocomplete_priority=PRIORITY_NAMES.get(fields.get("autocomplete_priority") or ""),
        )


def _priority(name: str) -> str:
    if name not in PRIORITY_NAMES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITY_NAMES)}, not {name!r}")
    return name


def _period(name: str) -> str:
    if name not in PERIODS:
        raise ValueError(f"budget period must be one of {', '.join(PERIODS)}, not {name!r}")
    return name


def _models(names) -> str:
    names = [n.strip() for n in names if n.strip()]
    for name in names:
        if "," in name or "|" in name:
            raise ValueError(f"not a model name: {name!r}")
    return ",".join(dict.fromkeys(names))


class KeyExists(ValueError):
    pass


class KeyNotFound(LookupError):
    pass


class KeyStore:
    def __init__(self, redis, prefix: str = "impetus:"):
        self.redis = redis
        self.prefix = prefix

    def _key(self, key_hash: str) -> str:
        return f"{self.prefix}key:{key_hash}"

    def _name(self, name: str) -> str:
        return f"{self.prefix}keyname:{name}"

    def create(self, name: str, admin: bool = False, rpm: int | None = None, tpm: int | None = None,
               expires_days: float | None = None, share: float = 1.0, priority: str = "interactive",
               models=(), budget_tokens: int | None = None, budget_period: str = "month",
               autocomplete_priority: str | None = None) -> tuple[str, ApiKey]:
        """Make a key; returns (the key itself, its record). The key is not kept."""
        key = new_key()
        key_hash = hash_key(key)
        now = time.time()
        fields = {
            "name": name,
            "prefix": key[: len(KEY_PREFIX) + 6],
            "admin": "1" if admin else "0",
            "rpm": str(rpm or 0),
            "tpm": str(tpm or 0),
            "created": repr(now),
            "expires": repr(now + expires_days * 86400) if expires_days else "",
            "share": repr(float(share)),
            "priority": _priority(priority),
            "models": _models(models),
            "budget_tokens": str(budget_tokens or 0),
            "budget_period": _period(budget_period),
            "autocomplete_priority": _priority(autocomplete_priority) if autocomplete_priority else "",
            "hash": key_hash,
        }
        # Claim the name first: SET NX makes two concurrent creates of one name safe.
        if not self.redis.set(self._name(name), key_hash, nx=True):
            raise KeyExists(f"a key named {name!r} already exists")
        pipe = self.redis.pipeline()
        pipe.hset(self._key(key_hash), mapping=fields)
        pipe.sadd(f"{self.prefix}keys", key_hash)
        pipe.execute()
        return key, ApiKey.from_redis(key_hash, fields)

    def verify(self, key: str) -> ApiKey | None:
        """The key's record if it exists and has not expired; None otherwise.
        Raises redis errors: the caller decides what Redis being down means."""
        if not key.startswith(KEY_PREFIX):
            return None
        key_hash = hash_key(key)
        fields = self.redis.hgetall(self._key(key_hash))
        if not fields or not hmac.compare_digest(fields.get("hash", ""), key_hash):
            return None
        record = ApiKey.from_redis(key_hash, fields)
        return None if record.expired() else record

    def by_hash(self, key_hash: str) -> ApiKey | None:
        """The record of the key with this hash (a batch's owner), None if revoked or expired."""
        fields = self.redis.hgetall(self._key(key_hash))
        if not fields:
            return None
        record = ApiKey.from_redis(key_hash, fields)
        return None if record.expired() else record

    def list(self) -> list[tuple[ApiKey, dict]]:
        hashes = sorted(self.redis.smembers(f"{self.prefix}keys"))
        pipe = self.redis.pipeline()
        for key_hash in hashes:
            pipe.hgetall(self._key(key_hash))
            pipe.hgetall(f"{self.prefix}usage:{key_hash}")
        results = pipe.execute()
        keys = []
        for key_hash, fields, usage in zip(hashes, results[::2], results[1::2]):
            if fields:
                keys.append((ApiKey.from_redis(key_hash, fields), usage))
        return sorted(keys, key=lambda item: item[0].created)

    def update(self, name: str, *, rpm: int | None = None, tpm: int | None = None, share: float | None = None,
               priority: str | None = None, models=None, budget_tokens: int | None = None,
               budget_period: str | None = None, autocomplete_priority: str | None = None) -> ApiKey:
        """Change an existing key (by name, or the key itself): limits, share,
        priority, allowed models, budget (None: keep); every worker sees it at
        the key's next request. rpm/tpm/budget_tokens 0: the default (no
        budget); models empty: all."""
        key_hash = hash_key(name) if name.startswith(KEY_PREFIX) else self.redis.get(self._name(name))
        fields = self.redis.hgetall(self._key(key_hash)) if key_hash else {}
        if not fields:
            raise KeyNotFound("no such key" if name.startswith(KEY_PREFIX) else f"no key named {name!r}")
        changes = {}
        if rpm is not None:
            changes["rpm"] = str(rpm)
        if tpm is not None:
            changes["tpm"] = str(tpm)
        if share is not None:
            changes["share"] = repr(float(share))
        if priority is not None:
            changes["priority"] = _priority(priority)
        if models is not None:
            changes["models"] = _models(models)
        if budget_tokens is not None:
            changes["budget_tokens"] = str(budget_tokens)
        if budget_period is not None:
            changes["budget_period"] = _period(budget_period)
        if autocomplete_priority is not None:  # "": as the key's own
            changes["autocomplete_priority"] = _priority(autocomplete_priority) if autocomplete_priority else ""
        if changes:
            self.redis.hset(self._key(key_hash), mapping=changes)
        return ApiKey.from_redis(key_hash, {**fields, **changes})

    def revoke(self, name: str) -> ApiKey:
        key_hash = self.redis.get(self._name(name))
        if key_hash is None:
            raise KeyNotFound(f"no key named {name!r}")
        fields = self.redis.hgetall(self._key(key_hash))
        pipe = self.redis.pipeline()
        pipe.delete(self._key(key_hash), self._name(name))
        pipe.srem(f"{self.prefix}keys", key_hash)
        pipe.execute()
        return ApiKey.from_redis(key_hash, fields)

    def export(self) -> list[dict]:
        """Every key as stored (its hash, never the key) with its usage: a backup."""
        return [{"hash": record.hash, "fields": self.redis.hgetall(self._key(record.hash)), "usage": usage}
                for record, usage in self.list()]

    def import_(self, records: list[dict], replace: bool = False) -> tuple[int, int]:
        """Restore exported keys; a name that exists is kept unless `replace`.
        Returns (restored, skipped)."""
        restored = skipped = 0
        for item in records:
            fields, key_hash = item["fields"], item["hash"]
            if fields.get("hash") != key_hash or not fields.get("name"):
                raise ValueError(f"not an exported key: {str(item)[:80]}")
            existing = self.redis.get(self._name(fields["name"]))
            if existing is not None and not replace:
                skipped += 1
                continue
            pipe = self.redis.pipeline()
            if existing is not None and existing != key_hash:
                pipe.delete(self._key(existing))
                pipe.srem(f"{self.prefix}keys", existing)
            pipe.set(self._name(fields["name"]), key_hash)
            pipe.delete(self._key(key_hash))
            pipe.hset(self._key(key_hash), mapping=fields)
            pipe.sadd(f"{self.prefix}keys", key_hash)
            if item.get("usage"):
                pipe.delete(f"{self.prefix}usage:{key_hash}")
                pipe.hset(f"{self.prefix}usage:{key_hash}", mapping=item["usage"])
            pipe.execute()
            restored += 1
        return restored, skipped

    def record_usage(self, key_hash: str, prompt_tokens: int, completion_tokens: int, pipe=None) -> None:
        """The key's lifetime totals; into `pipe` when given (its owner executes it)."""
        usage = f"{self.prefix}usage:{key_hash}"
        own = pipe is None
        pipe = self.redis.pipeline(transaction=False) if own else pipe
        pipe.hincrby(usage, "requests", 1)
        pipe.hincrby(usage, "prompt_tokens", prompt_tokens)
        pipe.hincrby(usage, "completion_tokens", completion_tokens)
        pipe.hset(usage, "last_used", repr(time.time()))
        if own:
            pipe.execute()
