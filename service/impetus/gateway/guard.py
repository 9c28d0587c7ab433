"""Only the gateway may talk to a worker: the shared secret nginx adds.

When several Macs serve one endpoint, each host's workers listen on the LAN
so that the gateway's nginx can reach them; anyone else on the LAN could
then skip nginx (its connection limits, its logs, the routing). With
IMPETUS_GATEWAY_GUARD on, a worker answers a request only if it carries
`X-Impetus-Gateway: <secret>` (nginx sets it on every proxied request and
overwrites whatever a client sent), or if it comes from an address in
IMPETUS_GATEWAY_ALLOW; anything else is 403 `gateway_required`, before the
API key is even looked at. Health checks stay open (they say nothing), and
/metrics keeps its own rule (no key from loopback and IMPETUS_ADMIN_ALLOW,
an admin key otherwise), so Prometheus can scrape every host directly.

The secret lives in the shared Redis ({prefix}cluster:secret), which only
holders of the join password can read: `impetus cluster rotate-secret`
writes a new one, the gateway's `impetus up --cluster` sees it within two
seconds and reloads nginx with it, and workers accept the previous secret
for PREVIOUS_GRACE_S more (requests nginx's old workers are still passing
on). Workers re-read the secret every REFRESH_S, or at once when a request
brings one they do not know (at most every MISS_REFRESH_S: a stranger
sending guesses costs Redis ten reads a second per worker, no more); while
Redis is away they keep the last one they read.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time

from redis.exceptions import RedisError

from impetus.gateway.middleware import address_in
from impetus.web import BATCH_ENV, APIError

HEADER = "X-Impetus-Gateway"
REFRESH_S = 5.0
MISS_REFRESH_S = 0.1
PREVIOUS_GRACE_S = 120.0
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics"})


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class ClusterSecret:
    """The gateway secret in Redis: the current one, the one before it and
    when it changed (a hash, so a rotation is one atomic write)."""

    def __init__(self, redis, prefix: str = "impetus:", clock=time.time):
        self.redis = redis
        self.key = f"{prefix}cluster:secret"
        self.clock = clock

    def current(self) -> str | None:
        return self.redis.hget(self.key, "current")

    def ensure(self) -> str:
        """The current secret, made on first use (by the gateway)."""
        self.redis.hsetnx(self.key, "current", new_secret())
        return self.current()

    def rotate(self) -> str:
        secret = new_secret()
        previous = self.current() or ""
        self.redis.hset(self.key, mapping={"current": secret, "previous": previous,
                                           "rotated_at": repr(self.clock())})
        return secret

    def accepted(self) -> tuple[str, ...]:
        """The secrets a worker takes now: the current one, and the previous
        one while its grace lasts."""
        fields = self.redis.hgetall(self.key)
        found = [fields["current"]] if fields.get("current") else []
        rotated_at = float(fields.get("rotated_at") or 0)
        if fields.get("previous") and self.clock() - rotated_at < PREVIOUS_GRACE_S:
            found.append(fields["previous"])
        return tuple(found)


class GatewayGuardMiddleware:
    """First of all middleware: refuse what did not come through the gateway."""

    def __init__(self, secret: ClusterSecret, allow=(), clock=time.monotonic):
        self.secret = secret
        # Not loopback by default, unlike the admin rule: on the gateway Mac
        # itself only nginx should reach the workers too.
        self.networks = tuple(ipaddress.ip_network(a, strict=False) for a in allow)
        self.clock = clock
        self._accepted: tuple[str, ...] = ()
        self._read_at = float("-inf")

    def _refresh(self, now: float) -> None:
        try:
            self._accepted = self.secret.accepted()
        except RedisError:
            pass  # keep the last secrets read
        self._read_at = now

    def _matches(self, presented: str) -> bool:
        return any(hmac.compare_digest(presented.encode(), s.encode()) for s in self._accepted)

    def process_request(self, req, resp):
        if req.path in OPEN_PATHS or BATCH_ENV in req.env:  # a batch's line comes from this process
            return
        if self.networks and address_in(req.remote_addr, self.networks):
            return
        presented = req.get_header(HEADER) or ""
        now = self.clock()
        if now - self._read_at >= REFRESH_S:
            self._refresh(now)
        if presented and not self._matches(presented) and now - self._read_at >= MISS_REFRESH_S:
            self._refresh(now)  # rotated just now?
        if presented and self._matches(presented):
            return
        raise APIError(403, "This worker only answers requests that come through the gateway "
                            "(its nginx); send them to the gateway's address.",
                       type="permission_error", code="gateway_required")
