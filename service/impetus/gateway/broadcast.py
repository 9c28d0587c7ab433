"""Admin model actions reach every worker: each Gunicorn worker keeps its own
models, so the worker that answers POST /v1/admin/models/{id}/load|unload acts
at once and publishes the action on Redis; the other workers, subscribed, do
the same. Without Redis (keys not required) only the answering worker acts."""

from __future__ import annotations

import json
import logging
import os

import gevent
from redis.exceptions import RedisError

log = logging.getLogger("impetus.gateway")

CHANNEL = "impetus:admin:models"


class ModelBroadcast:
    def __init__(self, redis, subscriber, host, channel: str = CHANNEL):
        self.redis = redis
        self.subscriber = subscriber  # a client without a read timeout: it waits for messages
        self.host = host
        self.channel = channel

    def publish(self, action: str, model: str, **options) -> int | None:
        """The number of other workers told, or None when Redis did not answer."""
        message = json.dumps({"action": action, "model": model, "options": options, "from": os.getpid()})
        try:
            return max(0, self.redis.publish(self.channel, message) - 1)  # minus this worker
        except RedisError as error:
            log.warning("redis unavailable (%s): %s of %s reached this worker only", error, action, model)
            return None

    def listen_forever(self) -> None:
        """In a greenlet of each worker; reconnects when Redis comes back."""
        while True:
            try:
                pubsub = self.subscriber.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                for message in pubsub.listen():
                    if message and message.get("type") == "message":
                        gevent.spawn(self.apply, message["data"])
            except Exception as error:  # RedisError, or a socket error underneath it
                log.warning("model broadcast: redis unavailable (%s: %s); retrying", type(error).__name__, error)
            gevent.sleep(1.0)

    def apply(self, raw: str) -> None:
        try:
            message = json.loads(raw)
            if message["from"] == os.getpid():
                return
            model, options = message["model"], message.get("options") or {}
            if message["action"] == "load":
                self.host.load(model, pin=options.get("pin"), keep_alive_s=options.get("keep_alive"))
            elif message["action"] == "unload" and model in self.host.slots:
                self.host.unload(model)
            log.info("model broadcast: %s %s done in this worker", message["action"], model)
        except Exception as error:  # the answering worker already told the operator
            log.warning("model broadcast: %s failed in this worker: %s", raw[:200], error)
