"""The shipped Grafana provisioning and dashboard hold together (their
expressions are evaluated against a real Prometheus in test_prometheus.py)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((REPO / "deploy/grafana/dashboards/impetus.json").read_text())


def test_panels_use_the_provisioned_datasource():
    datasources = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    panels = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"].strip()
    for variable in DASHBOARD["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid


def test_the_dashboard_shows_what_an_operator_asks_for():
    shown = " | ".join(f"{p['title']}: {' '.join(t['expr'] for t in p.get('targets', []))}"
                       for p in DASHBOARD["panels"]).lower()
    for needed in ("request rate", "error", "time to first token", "latency", "tokens / s", "running",
                   "waiting", "cache hit", "rate-limited", "per key", "memory", "thermal"):
        assert needed in shown, needed
    quantiles = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])
                 if "histogram_quantile(0.99" in t["expr"]]
    assert any("time_to_first_token" in q for q in quantiles)
    assert any("request_duration" in q for q in quantiles)


def test_panels_do_not_overlap_and_ids_are_unique():
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in DASHBOARD["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
