"""Stored responses of the Responses API, in Redis.

A response made with `store` not false is kept for IMPETUS_RESPONSE_STORE_TTL_S
(30 days by default, as OpenAI keeps them), so a later request can continue
the conversation with `previous_response_id`, and GET or DELETE
/v1/responses/{id} can find it. A record holds the response object, the input
items as sent, and the conversation up to and including this response as chat
messages (what the next turn renders). It belongs to the key that made it: to
any other key it does not exist (404), as a response of another OpenAI
project. One record is a few KB to a few hundred (an agent's tool outputs).

Redis being down must not fail a request that only wanted its answer stored:
`available` is asked first, and the response goes out unstored with a warning
header. Continuing or fetching a stored response needs Redis: StoreUnavailable.
"""

from __future__ import annotations

import json
import logging

from redis.exceptions import RedisError

log = logging.getLogger("impetus.gateway")


class StoreUnavailable(Exception):
    pass


class ResponseStore:
    def __init__(self, redis, ttl_s: int, prefix: str = "impetus:"):
        self.redis = redis
        self.ttl_s = ttl_s
        self.prefix = prefix

    def _key(self, response_id: str) -> str:
        return f"{self.prefix}response:{response_id}"

    def available(self) -> bool:
        try:
            return bool(self.redis.ping())
        except RedisError as error:
            log.warning("redis unavailable (%s): responses are not stored", error)
            return False

    def save(self, response_id: str, owner: str, record: dict) -> bool:
        try:
            self.redis.set(self._key(response_id), json.dumps({**record, "owner": owner}, separators=(",", ":")),
                           ex=self.ttl_s)
            return True
        except RedisError as error:
            log.warning("redis unavailable (%s): response %s not stored", error, response_id)
            return False

    def load(self, response_id: str, owner: str) -> dict | None:
        """The record, or None when there is none for this owner."""
        try:
            stored = self.redis.get(self._key(response_id))
        except RedisError as error:
            raise StoreUnavailable(str(error)) from error
        record = json.loads(stored) if stored else None
        return record if record is not None and record.get("owner") == owner else None

    def delete(self, response_id: str, owner: str) -> bool:
        if self.load(response_id, owner) is None:
            return False
        try:
            return bool(self.redis.delete(self._key(response_id)))
        except RedisError as error:
            raise StoreUnavailable(str(error)) from error
