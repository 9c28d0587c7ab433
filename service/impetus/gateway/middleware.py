"""Authentication and rate limits as Falcon middleware.

While Redis answers, every request is checked against it, so a revoked key
stops working at once in every worker. When Redis does not answer, a key this
worker has verified recently still works (degraded mode, logged), unknown keys
get 503, and rate limits are not enforced; all of it recovers by itself.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import replace

from redis.exceptions import RedisError

from impetus.engine.request import PRIORITY_NAMES
from impetus.gateway.account import count_redis_error
from impetus.gateway.keys import ApiKey, KeyStore, hash_key
from impetus.web import BATCH_ENV, APIError

log = logging.getLogger("impetus.gateway")

PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/openapi.json", "/api/version"})
ADMIN_PREFIXES = ("/v1/admin/", "/v1/status", "/metrics")
# How long a verified key may be trusted without Redis.
DEGRADED_TRUST_S = 24 * 3600


def _presented_key(req) -> str | None:
    auth = req.get_header("Authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (req.get_header("X-API-Key") or "").strip() or None


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": 'Bearer realm="impetus"'})


def address_networks(addresses) -> tuple:
    """Loopback plus the configured addresses or CIDR blocks."""
    networks = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    networks += [ipaddress.ip_network(a, strict=False) for a in addresses]
    return tuple(networks)


def address_in(address: str | None, networks) -> bool:
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:  # a unix socket peer has no address
        return False
    return any(ip.version == net.version and ip in net for net in networks)


class AuthMiddleware:
    """Before routing, so every path but the public ones needs a key (and an
    unknown path reveals nothing to a caller without one).

    Prometheus scrapes /metrics with no key from loopback or an address in
    `metrics_allow` (the Prometheus host); from elsewhere it takes an admin key.
    A request that does present a key is always judged by that key, and
    carries its account (`account_for(record)`) from here on."""

    def __init__(self, keys: KeyStore, account_for, metrics, metrics_allow=(), one_of_several: bool = False):
        """`one_of_several`: this worker is one host of a cluster, where another
        host can serve while this one cannot reach the shared Redis."""
        self.keys = keys
        self.account_for = account_for
        self.metrics = metrics
        self.one_of_several = one_of_several
        self.metrics_networks = address_networks(metrics_allow)
        self._verified: dict[str, tuple[ApiKey, float]] = {}  # hash -> (record, when)

    def process_request(self, req, resp):
        if req.path in PUBLIC_PATHS or req.method == "OPTIONS":
            return
        if BATCH_ENV in req.env:
            self._batch_line(req)
            return
        presented = _presented_key(req)
        # A peer on the workers' unix socket (no address) is the stack's own nginx, which lets
        # /metrics through from this machine and the allowed addresses only.
        if presented is None and req.path == "/metrics" and (
                not req.remote_addr or address_in(req.remote_addr, self.metrics_networks)):
            return
        if presented is None:
            self._count("missing")
            raise _unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
        try:
            record = self.keys.verify(presented)
        except RedisError as error:
            count_redis_error(self.metrics, "auth")
            record = self._degraded(presented, error)
        else:
            if record is None:
                self._count("invalid")
                raise _unauthorized("Incorrect, revoked or expired API key.")
            # Only a verification by Redis renews the trust used while it is down.
            self._verified[record.hash] = (record, time.time())
        if req.path.startswith(ADMIN_PREFIXES) and not record.admin:
            self._count("not_admin")
            raise APIError(403, f"The key '{record.name}' does not have the admin scope this endpoint needs.",
                           type="permission_error", code="admin_scope_required")
        req.context.account = self.account_for(record)

    def _batch_line(self, req) -> None:
        """A line of a batch its key made (api.batch_runner): that key's account, at batch priority,
        as long as the key still exists (revoked: 401, and the line fails)."""
        try:
            record = self.keys.by_hash(req.env[BATCH_ENV]["owner"])
        except RedisError as error:  # the runner waits and sends the line again
            count_redis_error(self.metrics, "auth")
            raise APIError(503, f"Redis is unavailable ({error}).", type="server_error", code="auth_unavailable",
                           headers={"Retry-After": "2"}) from None
        if record is None:
            raise _unauthorized("The key that made this batch was revoked or has expired.")
        req.context.account = self.account_for(replace(record, priority=PRIORITY_NAMES["batch"],
                                                       autocomplete_priority=None))

    def _count(self, reason: str) -> None:
        self.metrics.auth_failures.labels(reason).inc()

    def _degraded(self, presented: str, error: Exception) -> ApiKey:
        if self.one_of_several:
            # Another host checks this key's limits and budget against Redis: this one
            # answers 503, which the gateway's nginx passes on to the next host.
            log.warning("redis unavailable (%s): refusing new requests while another host can take them", error)
            self._count("unverifiable")
            raise APIError(503, "This host cannot reach the cluster's Redis right now. Please retry shortly.",
                           type="server_error", code="cluster_redis_unavailable", headers={"Retry-After": "1"})
        known = self._verified.get(hash_key(presented))
        if known is not None and time.time() - known[1] < DEGRADED_TRUST_S and not known[0].expired():
            log.warning("redis unavailable (%s): accepting key %r verified earlier", error, known[0].name)
            return known[0]
        log.warning("redis unavailable (%s): cannot verify an unknown key", error)
        self._count("unverifiable")
        raise APIError(503, "The key service is unavailable; this key cannot be verified right now. "
                            "Please retry shortly.", type="server_error", code="auth_unavailable",
                       headers={"Retry-After": "5"})


class RateLimitMiddleware:
    """Requests per minute are taken on arrival, by the request's account.
    Tokens are only known at the end, and a cached answer costs none, so the
    resource decides: it calls `account.admit(resp, enforce)` before the
    model runs and `account.charge(...)` when the response is over."""

    def process_resource(self, req, resp, resource, params):
        req.context.account.take_request(resp)
