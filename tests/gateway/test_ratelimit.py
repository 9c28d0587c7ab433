from __future__ import annotations

import pytest

from impetus.gateway.ratelimit import RateLimiter, format_reset


def test_requests_per_minute_burst_then_refuse(redis_client):
    limiter = RateLimiter(redis_client)
    states = [limiter.take_request("k", 3) for _ in range(4)]
    assert [s.allowed for s in states] == [True, True, True, False]
    assert [s.remaining for s in states[:3]] == [2, 1, 0]
    refused = states[3]
    # One request's worth refills in 60 s / 3 = 20 s.
    assert 19_000 <= refused.retry_after_ms <= 20_000
    assert states[2].reset_ms > 59_000


def test_limit_is_shared_by_every_client_of_the_same_redis(redis_server, redis_client):
    first, second = RateLimiter(redis_client), RateLimiter(redis_server.client())
    assert first.take_request("shared", 2).allowed
    assert second.take_request("shared", 2).allowed
    assert not first.take_request("shared", 2).allowed
    assert not second.take_request("shared", 2).allowed
    assert first.take_request("other-key", 2).allowed


def test_tokens_are_checked_then_charged_after_the_response(redis_client):
    limiter = RateLimiter(redis_client)
    assert limiter.check_tokens("t", 100).remaining == 100
    limiter.charge_tokens("t", 100, 60)
    state = limiter.check_tokens("t", 100)
    assert state.allowed and 39 <= state.remaining <= 40
    # A response may overshoot the budget; the next request is then refused.
    limiter.charge_tokens("t", 100, 80)
    refused = limiter.check_tokens("t", 100)
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after_ms > 20_000


@pytest.mark.parametrize("ms, text", [(120, "120ms"), (1000, "1s"), (1500, "1.5s"), (360_000, "6m0s")])
def test_reset_format_matches_openai(ms, text):
    assert format_reset(ms) == text
