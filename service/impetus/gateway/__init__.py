"""The gateway: API keys, rate limits (and the response cache) on Redis."""

from __future__ import annotations

from impetus.gateway.account import KeyAccount
from impetus.gateway.audit import AuditLog, AuditMiddleware
from impetus.gateway.batches import BatchStore
from impetus.gateway.cache import ResponseCache
from impetus.gateway.hosts import HostRegistry
from impetus.gateway.keys import KeyStore
from impetus.gateway.middleware import AuthMiddleware, RateLimitMiddleware
from impetus.gateway.ratelimit import RateLimiter
from impetus.gateway.responses import ResponseStore
from impetus.gateway.spool import UsageSpool, spool_dir
from impetus.gateway.usage import UsageLedger, local_now


def connect(url: str, read_timeout: float | None = 1.0):
    """A Redis client that fails fast: a request must never hang on Redis.
    (read_timeout=None: for a subscriber, which waits for messages.)"""
    import redis

    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=0.5,
                                socket_timeout=read_timeout, health_check_interval=10)


class Gateway:
    def __init__(self, settings, metrics, redis=None, clock=local_now):
        self.metrics = metrics
        self.redis = redis if redis is not None else connect(settings.effective_redis_url)
        # What is written once a response is over (usage, the tokens charged to
        # the limit) must not be lost to a busy second: those writes wait up to
        # 5 s (on the 2-core VM a worker's restart stalled a 1 s read), where
        # the request path gives up after 1 s.
        writer = connect(settings.effective_redis_url, read_timeout=5.0) if redis is None else redis
        self.keys = KeyStore(self.redis)
        self.limiter = RateLimiter(self.redis, writer=writer)
        self.cache = ResponseCache(self.redis, ttl_s=settings.cache_ttl_s)
        self.responses = ResponseStore(self.redis, ttl_s=settings.response_store_ttl_s)
        self.batches = BatchStore(self.redis)
        self.audit = AuditLog(self.redis)
        self.hosts = HostRegistry(self.redis)
        self.usage = UsageLedger(self.redis, retention_days=settings.usage_retention_days, clock=clock,
                                 writer=writer)
        self.spool = UsageSpool(spool_dir(settings.data_dir, settings.effective_redis_url), writer)
        self.settings = settings

    def model_broadcast(self, host):
        from impetus.gateway.broadcast import ModelBroadcast

        return ModelBroadcast(self.redis, connect(self.settings.effective_redis_url, read_timeout=None), host)

    def account_for(self, key) -> KeyAccount:
        return KeyAccount(key, self.limiter, self.keys, self.settings.default_rpm, self.settings.default_tpm,
                          self.metrics, self.usage, self.spool)

    def guard(self) -> list:
        """Before everything, when this worker is one host of several."""
        if not self.settings.gateway_guard:
            return []
        from impetus.gateway.guard import ClusterSecret, GatewayGuardMiddleware

        return [GatewayGuardMiddleware(ClusterSecret(self.redis), self.settings.gateway_allow)]

    def middleware(self) -> list:
        return [AuthMiddleware(self.keys, self.account_for, self.metrics, self.settings.admin_allow,
                               one_of_several=self.settings.gateway_guard),
                RateLimitMiddleware(), AuditMiddleware(self.audit, self.metrics, self.spool)]
