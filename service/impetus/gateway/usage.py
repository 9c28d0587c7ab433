"""Usage over time, and the token budgets that read it.

Every finished request adds to two places in Redis, in one pipeline:
  {prefix}daily:{YYYY-MM-DD}          hash "{key name}|{model}|{metric}" -> count,
                                      metric: requests, prompt_tokens,
                                      completion_tokens, cached_tokens;
                                      expires after the retention (400 days)
  {prefix}spent:{key hash}:{date}     the key's prompt + completion tokens that
                                      day; expires after 40 days (a month's
                                      budget reads at most 31 of them)
Dates are the server's local dates (its time zone), as are budget periods.

Why per day and not per request: a team's year is ~10^6 requests but only
keys × models × 365 counters (a few thousand fields), and `impetus usage`
reads one hash per day. Why by key name: a key revoked and made again under
the same name (a rotated key) is the same person in the report.

A budget of N tokens per day, week (from Monday) or month is checked like the
token limit: before generation, against what the days of the period so far
have spent (one MGET of at most 31 counters), and charged with the real
count afterwards, so a key can overshoot by at most one request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Callable

METRICS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens")
PERIODS = ("day", "week", "month")
SPENT_TTL_S = 40 * 86400


def local_now() -> datetime:
    return datetime.now().astimezone()


def _local_midnight(day: date) -> datetime:
    """Midnight of a local date as an aware time (DST-correct: the zone's
    offset that night, not today's)."""
    return datetime(day.year, day.month, day.day).astimezone()


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The local period containing `now`: [start, end)."""
    today = now.date()
    if period == "day":
        first, after = today, today + timedelta(days=1)
    elif period == "week":
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    elif period == "month":
        first = today.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"budget period must be one of {', '.join(PERIODS)}, not {period!r}")
    return _local_midnight(first), _local_midnight(after)


@dataclass(frozen=True)
class BudgetState:
    limit: int
    used: int
    period: str
    reset_s: int  # until the next period starts

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def allowed(self) -> bool:
        return self.used < self.limit


@dataclass(frozen=True)
class UsageRow:
    day: str
    key: str
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def as_dict(self) -> dict:
        return {"date": self.day, "key": self.key, "model": self.model, "requests": self.requests,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens}


class UsageLedger:
    def __init__(self, redis, prefix: str = "impetus:", retention_days: int = 400,
                 clock: Callable[[], datetime] = local_now, writer=None):
        self.redis = redis  # reads: budgets on the request path, reports
        self.writer = writer if writer is not None else redis  # what `record` writes with
        self.prefix = prefix
        self.retention_s = retention_days * 86400
        self.clock = clock

    def _daily(self, day: date) -> str:
        return f"{self.prefix}daily:{day.isoformat()}"

    def _spent(self, key_hash: str, day: date) -> str:
        return f"{self.prefix}spent:{key_hash}:{day.isoformat()}"

    def record(self, key_hash: str, key_name: str, model: str, prompt_tokens: int, completion_tokens: int,
               cached_tokens: int = 0, pipe=None) -> None:
        """One finished request; into `pipe` when given (its owner executes it)."""
        today = self.clock().date()
        daily = self._daily(today)
        base = f"{key_name}|{model or '-'}|"
        own = pipe is None
        pipe = self.writer.pipeline(transaction=False) if own else pipe
        pipe.hincrby(daily, base + "requests", 1)
        for metric, value in (("prompt_tokens", prompt_tokens), ("completion_tokens", completion_tokens),
                              ("cached_tokens", cached_tokens)):
            if value:
                pipe.hincrby(daily, base + metric, value)
        pipe.expire(daily, self.retention_s)
        if prompt_tokens + completion_tokens:
            spent = self._spent(key_hash, today)
            pipe.incrby(spent, prompt_tokens + completion_tokens)
            pipe.expire(spent, SPENT_TTL_S)
        if own:
            pipe.execute()

    def budget(self, key_hash: str, limit: int, period: str) -> BudgetState:
        now = self.clock()
        start, end = period_bounds(period, now)
        days = [start.date() + timedelta(days=i) for i in range((now.date() - start.date()).days + 1)]
        used = sum(int(v or 0) for v in self.redis.mget([self._spent(key_hash, d) for d in days]))
        return BudgetState(limit, used, period, max(1, math.ceil((end - now).total_seconds())))

    def report(self, since: date | None = None, until: date | None = None, key: str | None = None,
               days: int = 30) -> list[UsageRow]:
        """Rows per day, key and model, oldest first; `since` defaults to `days` ago."""
        until = until or self.clock().date()
        since = since or until - timedelta(days=days - 1)
        span = [since + timedelta(days=i) for i in range((until - since).days + 1)]
        pipe = self.redis.pipeline(transaction=False)
        for day in span:
            pipe.hgetall(self._daily(day))
        rows = []
        for day, fields in zip(span, pipe.execute()):
            grouped: dict[tuple[str, str], dict[str, int]] = {}
            for field_name, value in fields.items():
                name, model, metric = field_name.rsplit("|", 2)
                if key is not None and name != key:
                    continue
                grouped.setdefault((name, model), {})[metric] = int(value)
            for (name, model), counts in sorted(grouped.items()):
                rows.append(UsageRow(day.isoformat(), name, model,
                                     **{m: counts.get(m, 0) for m in METRICS}))
        return rows


def totals(rows: list[UsageRow]) -> dict[str, int]:
    return {metric: sum(getattr(row, metric) for row in rows) for metric in METRICS}
