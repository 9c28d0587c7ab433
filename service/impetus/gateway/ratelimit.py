"""Per-key limits on requests and tokens per minute: GCRA in one Lua script.

Why GCRA (the generic cell rate algorithm) rather than a sliding window: it
keeps one number per limit (the "theoretical arrival time"), where a sliding
log keeps an entry per request; it has no burst at window edges, unlike fixed
windows; and it yields exact `remaining` and `retry-after` values. The script
runs atomically inside Redis on Redis' own clock, so every worker on every host
sharing the Redis enforces the same limit.

A limit of L per minute allows a burst of L, refilling at L/60 per second.

Tokens are only known after the response, so a request is admitted while the
key's token budget is not exhausted, and its actual prompt + completion tokens
are charged afterwards (`charge`). A key can therefore overshoot by at most one
request's tokens before it is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

PERIOD_MS = 60_000

# KEYS[1]: the limit's state key. ARGV: limit per minute, cost, mode.
# mode "take": admit if cost fits, and charge it.
# mode "check": admit if the budget is not exhausted (cost 0), charge nothing.
# mode "charge": charge cost unconditionally (may go over: that is the overshoot).
# Returns {allowed 0/1, remaining, ms until full, ms until allowed again}.
GCRA = """
local limit = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local mode = ARGV[3]
local period = 60000
local interval = period / limit
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allowed = 1
if mode == 'take' then
  if new_tat - now > period then allowed = 0 end
elseif mode == 'check' then
  if tat - now >= period then allowed = 0 end
  new_tat = tat
end
local effective = tat
if allowed == 1 then
  effective = new_tat
  if mode ~= 'check' then
    redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
  end
end
local remaining = math.floor((period - (effective - now)) / interval)
if remaining < 0 then remaining = 0 end
local retry_after = 0
if allowed == 0 then
  retry_after = math.ceil(tat + (mode == 'take' and cost or 0) * interval - period - now)
  if retry_after < 1 then retry_after = 1 end
end
return {allowed, remaining, math.ceil(effective - now), retry_after}
"""


@dataclass(frozen=True)
class LimitState:
    limit: int
    allowed: bool
    remaining: int
    reset_ms: int  # until the budget is whole again
    retry_after_ms: int  # until a request could pass (0 when allowed)


def format_reset(ms: int) -> str:
    """OpenAI's reset format: '1s', '6m0s', '120ms'."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds.is_integer() else f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


class RateLimiter:
    def __init__(self, redis, prefix: str = "impetus:", writer=None):
        """`writer`: the client for `charge_tokens`, which runs once a response
        is over and may wait longer than a check on the request path."""
        self.redis = redis
        self.prefix = prefix
        self._script = redis.register_script(GCRA)
        self._charge_script = (writer if writer is not None else redis).register_script(GCRA)

    def _run(self, kind: str, key_hash: str, limit: int, cost: int, mode: str, script=None) -> LimitState:
        allowed, remaining, reset_ms, retry_ms = (script or self._script)(
            keys=[f"{self.prefix}rl:{kind}:{key_hash}"], args=[limit, cost, mode]
        )
        return LimitState(limit, bool(allowed), int(remaining), int(reset_ms), int(retry_ms))

    def take_request(self, key_hash: str, limit: int) -> LimitState:
        return self._run("requests", key_hash, limit, 1, "take")

    def check_tokens(self, key_hash: str, limit: int) -> LimitState:
        return self._run("tokens", key_hash, limit, 0, "check")

    def charge_tokens(self, key_hash: str, limit: int, tokens: int) -> LimitState:
        return self._run("tokens", key_hash, limit, tokens, "charge", self._charge_script)
