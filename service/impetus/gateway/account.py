"""Who a request is for: one explicit object on `req.context.account`.

Every request carries an account from the first middleware on. With keys off
(or on a public path) it is the null `Account`: one tenant per client address
(nginx's X-Forwarded-For), no limits, nothing charged. A request that
presented a valid key carries a `KeyAccount`: the key, its limits, its share
of the machine and its priority, with

- `take_request(resp)`: the requests-per-minute limit, on arrival;
- `check_model(name, targets)`: the key's model allow-list (403);
- `admit(resp, enforce)`: the tokens-per-minute limit and the token budget,
  before the model runs (a cached answer costs no tokens, so `enforce=False`
  only reports them);
- `charge(model, prompt_tokens, completion_tokens, cached_tokens)`: once the
  response is over; also the usage ledger (per key, model and day).

The engine's scheduler sees `account.tenant` (id, name, share, priority) and
shares the batch between tenants with it.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from impetus.engine.request import Tenant
from impetus.gateway.keys import ApiKey, KeyStore
from impetus.gateway.ratelimit import LimitState, RateLimiter, format_reset
from impetus.gateway.spool import Ops, UsageSpool
from impetus.gateway.usage import BudgetState, UsageLedger
from impetus.web import APIError

log = logging.getLogger("impetus.gateway")


class Account:
    """The null account: keys are off, or the path needs none."""

    key: ApiKey | None = None
    autocomplete_tenant: Tenant | None = None  # a key's fill-in-the-middle requests, at their own priority

    def __init__(self, address: str | None):
        address = address or "-"
        self.tenant = Tenant(f"addr:{address}", address)

    def tenant_for(self, autocomplete: bool = False) -> Tenant:
        """Who the scheduler sees: the key, its autocomplete at the priority the operator gave it."""
        return (self.autocomplete_tenant if autocomplete else None) or self.tenant

    @property
    def name(self) -> str:
        """What logs and metrics call it: the key's name, "-" without a key."""
        return "-"

    @property
    def owner(self) -> str:
        """Who owns what it stores (Responses): the key's hash, one owner without keys."""
        return "-"

    def take_request(self, resp) -> None:
        pass

    def allows(self, model: str, targets=tuple) -> bool:
        """Whether it may use `model`; `targets()` gives what it stands for (an
        alias's target), asked only when the key has an allow-list."""
        return True

    def check_model(self, model: str, targets=tuple) -> None:
        if not self.allows(model, targets):
            raise APIError(403, f"The key '{self.name}' may not use the model '{model}'. GET /v1/models lists "
                                "the models it may use.", type="permission_error", param="model",
                           code="model_not_allowed")

    def admit(self, resp, enforce: bool = True) -> None:
        pass

    def charge(self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> None:
        pass


class AccountMiddleware:
    """First of all middleware: every request starts with the null account."""

    def process_request(self, req, resp):
        req.context.account = Account(req.access_route[0] if req.access_route else req.remote_addr)


def count_redis_error(metrics, operation: str) -> None:
    metrics.redis_errors.labels(operation).inc()


def _limit_headers(kind: str, state: LimitState) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(state.limit),
        f"x-ratelimit-remaining-{kind}": str(state.remaining),
        f"x-ratelimit-reset-{kind}": format_reset(state.reset_ms),
    }


class KeyAccount(Account):
    """A request made with a personal key. While Redis is down the limits are
    not enforced (logged and counted); usage waits in the spool
    (impetus.gateway.spool) and is written once Redis is back."""

    def __init__(self, key: ApiKey, limiter: RateLimiter, keys: KeyStore, rpm: int, tpm: int, metrics,
                 ledger: UsageLedger, spool: UsageSpool):
        self.key = key
        self.tenant = Tenant(f"key:{key.hash[:16]}", key.name, key.share, key.priority)
        if key.autocomplete_priority is not None:  # one tenant (one share), its keystrokes at their own priority
            self.autocomplete_tenant = Tenant(self.tenant.id, key.name, key.share, key.autocomplete_priority)
        self.rpm = key.rpm or rpm
        self.tpm = key.tpm or tpm
        self._limiter = limiter
        self._keys = keys
        self._ledger = ledger
        self._spool = spool
        self._metrics = metrics
        self._headers: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def owner(self) -> str:
        return self.key.hash

    def _limit(self, check, limit: int, what: str) -> LimitState | None:
        """A limit's state from Redis; None (not enforced, logged) while Redis is down."""
        try:
            return check(self.key.hash, limit)
        except RedisError as error:
            count_redis_error(self._metrics, "rate_limit")
            log.warning("redis unavailable (%s): %s not enforced", error, what)
            return None

    def take_request(self, resp) -> None:
        requests = self._limit(self._limiter.take_request, self.rpm, "rate limits")
        if requests is None:
            return
        self._headers = _limit_headers("requests", requests)
        resp.set_headers(self._headers)
        if not requests.allowed:
            self._metrics.rate_limited.labels("requests").inc()
            raise self._refuse("requests", requests, self._headers)

    def allows(self, model: str, targets=tuple) -> bool:
        allowed = self.key.models
        return not allowed or model in allowed or any(name in allowed for name in targets())

    def admit(self, resp, enforce: bool = True) -> None:
        tokens = self._limit(self._limiter.check_tokens, self.tpm, "token limit")
        if tokens is not None:
            token_headers = _limit_headers("tokens", tokens)
            resp.set_headers(token_headers)
            if enforce and not tokens.allowed:
                self._metrics.rate_limited.labels("tokens").inc()
                raise self._refuse("tokens", tokens, {**self._headers, **token_headers})
        if self.key.budget_tokens:
            budget = self._limit(lambda key_hash, limit: self._ledger.budget(key_hash, limit, self.key.budget_period),
                                 self.key.budget_tokens, "token budget")
            if budget is None:
                return
            resp.set_header("x-impetus-budget-remaining", str(budget.remaining))
            if enforce and not budget.allowed:
                self._metrics.rate_limited.labels("budget").inc()
                raise self._over_budget(budget)

    def charge(self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> None:
        # The key's totals and its daily ledger (with the budget's spend): one
        # charge, kept in the spool until Redis has it on disk.
        ops = Ops()
        self._keys.record_usage(self.key.hash, prompt_tokens, completion_tokens, ops)
        self._ledger.record(self.key.hash, self.key.name, model, prompt_tokens, completion_tokens, cached_tokens, ops)
        if not self._spool.add(ops):
            count_redis_error(self._metrics, "usage")
        # The per-minute token limit is a moving window: a charge replayed later would
        # fall in the wrong minute, so it is written now or not at all.
        if prompt_tokens or completion_tokens:
            try:
                self._limiter.charge_tokens(self.key.hash, self.tpm, prompt_tokens + completion_tokens)
            except RedisError as error:
                count_redis_error(self._metrics, "rate_limit")
                log.warning("redis unavailable (%s): tokens of %r not charged to its limit", error, self.key.name)

    def _over_budget(self, budget: BudgetState) -> APIError:
        return APIError(
            429, f"The key '{self.key.name}' has used its budget of {budget.limit} tokens per {budget.period} "
                 f"({budget.used} used). It resets in {format_reset(budget.reset_s * 1000)}.",
            type="rate_limit_error", code="budget_exceeded",
            headers={**self._headers, "x-impetus-budget-remaining": "0", "Retry-After": str(budget.reset_s)})

    def _refuse(self, kind: str, state: LimitState, headers: dict) -> APIError:
        retry = max(1, -(-state.retry_after_ms // 1000))
        return APIError(
            429, f"Rate limit reached for {kind} per minute on key '{self.key.name}' (limit {state.limit}). "
                 f"Please retry in {format_reset(state.retry_after_ms)}.",
            type="rate_limit_error", code=f"rate_limit_{kind}", headers={**headers, "Retry-After": str(retry)},
        )
