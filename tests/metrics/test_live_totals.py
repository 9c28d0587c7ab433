"""The dashboard's live figures, read from the metrics' text (what every worker wrote)."""

from __future__ import annotations

from impetus.metrics.live import LiveRates, read_totals

EXPOSITION = """\
# TYPE impetus_requests_waiting gauge
impetus_requests_waiting{model="m"} 5.0
# TYPE impetus_requests_waiting_by_key gauge
impetus_requests_waiting_by_key{key="alice",model="m"} 3.0
impetus_requests_waiting_by_key{key="alice",model="other"} 1.0
impetus_requests_waiting_by_key{key="bob",model="m"} 1.0
impetus_requests_waiting_by_key{key="carol",model="m"} 0.0
"""


def test_waiting_requests_are_summed_by_key_over_models():
    totals = read_totals(EXPOSITION)
    assert totals["waiting"] == 5
    assert totals["waiting_by_key"] == {"alice": 4, "bob": 1}  # nobody waiting: not listed
    assert LiveRates().read(totals)["waiting_by_key"] == {"alice": 4, "bob": 1}
