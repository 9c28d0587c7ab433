"""Response cache for deterministic requests, in Redis.

A request is deterministic when it samples greedily (temperature 0) or names a
seed. Its cache key is a sha256 over the route, the model's name and revision
(a digest of its files, so a re-imported model never serves stale answers) and
the validated request with every default filled in and keys sorted, so
equivalent requests share an entry. Whether the answer is streamed does not
matter: a hit for a streaming request is replayed as a stream.

`Cache-Control: no-cache` opts a request out. Redis errors bypass the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from redis.exceptions import RedisError

log = logging.getLogger("impetus.gateway")

# Fields that do not change what the model generates.
NOT_IN_KEY = {"stream", "stream_options", "user", "metadata", "store", "service_tier"}


@dataclass
class CacheLookup:
    status: str  # "hit" | "miss" | "bypass"
    key: str | None = None
    response: dict | None = None


def is_deterministic(body) -> bool:
    return body.temperature == 0 or body.seed is not None


class ResponseCache:
    def __init__(self, redis, ttl_s: int, prefix: str = "impetus:"):
        self.redis = redis
        self.ttl_s = ttl_s
        self.prefix = prefix

    def key_for(self, route: str, body, model: str, revision: str) -> str:
        canonical = json.dumps(
            {"route": route, "model": model, "revision": revision,
             "request": body.model_dump(mode="json", exclude=NOT_IN_KEY)},
            sort_keys=True, separators=(",", ":"),
        )
        return f"{self.prefix}cache:{hashlib.sha256(canonical.encode()).hexdigest()}"

    def lookup(self, req, route: str, body, model: str, revision: str) -> CacheLookup:
        if not is_deterministic(body) or "no-cache" in (req.get_header("Cache-Control") or "").lower():
            return CacheLookup("bypass")
        key = self.key_for(route, body, model, revision)
        try:
            stored = self.redis.get(key)
        except RedisError as error:
            log.warning("redis unavailable (%s): response cache bypassed", error)
            return CacheLookup("bypass")
        if stored is None:
            return CacheLookup("miss", key)
        return CacheLookup("hit", key, json.loads(stored))

    def store(self, lookup: CacheLookup, response: dict) -> None:
        if lookup.status != "miss":
            return
        try:
            self.redis.set(lookup.key, json.dumps(response, separators=(",", ":")), ex=self.ttl_s)
        except RedisError as error:
            log.warning("redis unavailable (%s): response not cached", error)
