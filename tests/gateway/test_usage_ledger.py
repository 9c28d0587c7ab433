"""Usage per key, model and day, and budgets over it: real Redis, a clock the
test sets (periods are the server's local days, weeks and months)."""

from __future__ import annotations

import os
import time
from datetime import date, datetime

import pytest

from impetus.gateway.usage import UsageLedger, period_bounds


@pytest.fixture
def berlin():
    """The server's time zone, with a DST change (2026-03-29 has 23 hours)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ")
    else:
        os.environ["TZ"] = old
    time.tzset()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone()  # a naive local time, made aware


class Clock:
    def __init__(self, text: str):
        self.now = at(text)

    def __call__(self) -> datetime:
        return self.now


def test_periods_are_local_days_weeks_from_monday_and_months(berlin):
    start, end = period_bounds("day", at("2026-03-29T12:00"))
    assert (start.isoformat(), end.isoformat()) == ("2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00")
    assert (end - start).total_seconds() == 23 * 3600  # the spring-forward day
    start, end = period_bounds("week", at("2026-11-25T08:00"))  # a Wednesday
    assert (start.date(), end.date()) == (date(2026, 11, 23), date(2026, 11, 30))
    start, end = period_bounds("month", at("2026-12-31T23:59:59"))
    assert (start.date(), end.date()) == (date(2026, 12, 1), date(2027, 1, 1))
    with pytest.raises(ValueError):
        period_bounds("year", at("2026-01-01T00:00"))


@pytest.mark.parametrize("period, last_moment, next_period", [
    ("day", "2026-11-25T23:59:59", "2026-11-26T00:00:00"),
    ("week", "2026-11-29T23:59:59", "2026-11-30T00:00:00"),  # Sunday night -> Monday
    ("month", "2026-11-30T23:59:59", "2026-12-01T00:00:00"),
])
def test_a_budget_resets_at_the_period_boundary(redis_client, berlin, period, last_moment, next_period):
    clock = Clock(last_moment)
    ledger = UsageLedger(redis_client, clock=clock)
    clock.now = at(last_moment[:10] + "T00:00:00")  # spent early in the period's last day
    ledger.record("h1", "alice", "m", 60, 50)
    clock.now = at(last_moment)
    state = ledger.budget("h1", 100, period)
    assert (state.used, state.remaining, state.allowed) == (110, 0, False)
    assert state.reset_s == 1  # one second to the boundary
    clock.now = at(next_period)
    fresh = ledger.budget("h1", 100, period)
    assert (fresh.used, fresh.remaining, fresh.allowed) == (0, 100, True)
    ledger.record("h1", "alice", "m", 5, 5)
    assert ledger.budget("h1", 100, period).used == 10
    assert ledger.budget("h2", 100, period).used == 0  # another key


def test_a_month_budget_adds_up_the_days_of_the_month(redis_client, berlin):
    clock = Clock("2026-11-01T10:00")
    ledger = UsageLedger(redis_client, clock=clock)
    for day in (1, 15, 30):
        clock.now = at(f"2026-11-{day:02d}T10:00")
        ledger.record("h1", "alice", "m", 10, 0)
    state = ledger.budget("h1", 1000, "month")
    assert state.used == 30
    assert state.reset_s == 14 * 3600  # to Dec 1, 00:00 local
    assert ledger.budget("h1", 1000, "week").used == 10  # Mon Nov 30 only


def test_report_rows_per_day_key_and_model_and_retention(redis_client, berlin):
    clock = Clock("2026-11-24T09:00")
    ledger = UsageLedger(redis_client, retention_days=400, clock=clock)
    ledger.record("h1", "alice", "smol", 10, 5, cached_tokens=4)
    ledger.record("h1", "alice", "smol", 7, 3)
    ledger.record("h2", "bob|ops", "gemma", 1, 1)  # a "|" in a name stays in the name
    clock.now = at("2026-11-25T09:00")
    ledger.record("h1", "alice", "minilm", 12, 0)
    rows = [row.as_dict() for row in ledger.report()]
    assert rows == [
        {"date": "2026-11-24", "key": "alice", "model": "smol", "requests": 2, "prompt_tokens": 17,
         "completion_tokens": 8, "cached_tokens": 4},
        {"date": "2026-11-24", "key": "bob|ops", "model": "gemma", "requests": 1, "prompt_tokens": 1,
         "completion_tokens": 1, "cached_tokens": 0},
        {"date": "2026-11-25", "key": "alice", "model": "minilm", "requests": 1, "prompt_tokens": 12,
         "completion_tokens": 0, "cached_tokens": 0},
    ]
    assert [r.model for r in ledger.report(key="bob|ops")] == ["gemma"]
    assert ledger.report(since=date(2026, 11, 25), key="bob|ops") == []
    ttl = redis_client.ttl("impetus:daily:2026-11-25")
    assert 399 * 86400 < ttl <= 400 * 86400
