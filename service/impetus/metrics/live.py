"""Live figures for the dashboard, from the same metrics Prometheus scrapes
(summed over every worker): totals, and rates between two readings."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from impetus.metrics import exposition


def read_totals(text: str | None = None) -> dict[str, float]:
    """Sums over labels of the counters and gauges the dashboard shows, and
    the requests waiting for a batch slot by key name (over every worker)."""
    if text is None:
        text = exposition()[0].decode()
    totals = dict.fromkeys(("requests", "errors", "prompt_tokens", "generated_tokens", "ttft_sum", "ttft_count",
                            "cache_hits", "cache_misses", "rate_limited", "running", "waiting"), 0.0)
    wanted = {
        "impetus_prompt_tokens_total": "prompt_tokens",
        "impetus_generation_tokens_total": "generated_tokens",
        "impetus_time_to_first_token_seconds_sum": "ttft_sum",
        "impetus_time_to_first_token_seconds_count": "ttft_count",
        "impetus_rate_limited_total": "rate_limited",
        "impetus_requests_running": "running",
        "impetus_requests_waiting": "waiting",
    }
    by_key: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "impetus_requests_waiting_by_key":
                key = sample.labels.get("key", "-")
                by_key[key] = by_key.get(key, 0.0) + sample.value
            elif sample.name == "impetus_requests_total":
                totals["requests"] += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    totals["errors"] += sample.value
            elif sample.name == "impetus_cache_requests_total":
                result = sample.labels.get("result")
                if result in ("hit", "miss"):
                    totals["cache_hits" if result == "hit" else "cache_misses"] += sample.value
            elif sample.name in wanted:
                totals[wanted[sample.name]] += sample.value
    totals["waiting_by_key"] = {key: int(n) for key, n in sorted(by_key.items()) if n > 0}
    return totals


class LiveRates:
    """Per-second rates since the previous reading (one instance per event stream)."""

    def __init__(self):
        self._previous: tuple[float, dict] | None = None

    def read(self, totals: dict | None = None) -> dict:
        totals = totals if totals is not None else read_totals()
        now = time.monotonic()
        previous, self._previous = self._previous, (now, totals)
        lookups = totals["cache_hits"] + totals["cache_misses"]
        live = {
            "requests_total": totals["requests"],
            "errors_total": totals["errors"],
            "generated_tokens_total": totals["generated_tokens"],
            "rate_limited_total": totals["rate_limited"],
            "running": totals["running"],
            "waiting": totals["waiting"],
            "waiting_by_key": totals.get("waiting_by_key", {}),
            "cache_hit_ratio": totals["cache_hits"] / lookups if lookups else None,
            "requests_per_s": None, "tokens_per_s": None, "ttft_s": None,
        }
        if previous is not None:
            then, before = previous
            elapsed = max(now - then, 1e-6)
            live["requests_per_s"] = (totals["requests"] - before["requests"]) / elapsed
            live["tokens_per_s"] = (totals["generated_tokens"] - before["generated_tokens"]) / elapsed
            first_tokens = totals["ttft_count"] - before["ttft_count"]
            if first_tokens > 0:  # the mean time to first token of the requests that started meanwhile
                live["ttft_s"] = (totals["ttft_sum"] - before["ttft_sum"]) / first_tokens
        return live
