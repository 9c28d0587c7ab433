"""A real Prometheus scrapes the real server (two workers, keys, Redis), the
Redis exporter and the nginx exporter, configured from the shipped
deploy/prometheus/prometheus.yml; then every expression of every panel of the
shipped Grafana dashboard is evaluated through Prometheus' HTTP API."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port
from impetus.stack.cluster import service_discovery

from processes import binary, start_nginx, start_program, stop

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy/prometheus/prometheus.yml"
DASHBOARD = REPO / "deploy/grafana/dashboards/impetus.json"
# What Grafana would put in place of its variables.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$model": ".*", "$host": ".*"}


def test_promtool_accepts_the_shipped_config():
    result = subprocess.run([binary("promtool"), "check", "config", str(CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_checks_the_alerts_and_every_alert_has_a_unit_test():
    alerts = CONFIG.parent / "alerts.yml"
    checked = subprocess.run([binary("promtool"), "check", "rules", str(alerts)], capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 8 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run([binary("promtool"), "test", "rules", "alerts.test.yml"], capture_output=True, text=True,
                            cwd=CONFIG.parent)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    names = {rule["alert"] for group in yaml.safe_load(alerts.read_text())["groups"] for rule in group["rules"]}
    cases = yaml.safe_load((CONFIG.parent / "alerts.test.yml").read_text())["tests"]
    fired = {test["alertname"] for case in cases for test in case["alert_rule_test"] if test["exp_alerts"]}
    assert fired == names, f"alerts without a test that makes them fire: {names - fired}"


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"{panel['title']} [{target['refId']}]", target["expr"]))
    return found


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


@pytest.fixture(scope="module")
def stack(gateway_server, redis_server, tmp_path_factory):
    """nginx in front of the server, both exporters, and Prometheus scraping them."""
    work = tmp_path_factory.mktemp("prometheus")
    processes = []
    try:
        nginx, proxy = start_nginx(work / "nginx", gateway_server.removeprefix("http://"))
        processes.append(nginx)
        redis_port, nginx_port, prometheus_port = free_port(), free_port(), free_port()
        processes.append(start_program(
            [binary("prometheus-redis-exporter", "redis_exporter"), f"--redis.addr=redis://127.0.0.1:{redis_server.port}",
             f"--web.listen-address=127.0.0.1:{redis_port}"],
            f"http://127.0.0.1:{redis_port}/metrics", work / "redis-exporter.log"))
        processes.append(start_program(
            [binary("prometheus-nginx-exporter", "nginx-prometheus-exporter"),
             f"--nginx.scrape-uri={proxy}/nginx_status", f"--web.listen-address=127.0.0.1:{nginx_port}"],
            f"http://127.0.0.1:{nginx_port}/metrics", work / "nginx-exporter.log"))

        # The shipped config, each job pointed at its local counterpart. The
        # server is found as a cluster's gateway finds its hosts: in the file
        # it writes from the host registry (file-based service discovery).
        local = {"redis": f"127.0.0.1:{redis_port}", "nginx": f"127.0.0.1:{nginx_port}",
                 "prometheus": f"127.0.0.1:{prometheus_port}"}
        config = yaml.safe_load(CONFIG.read_text())
        assert {job["job_name"] for job in config["scrape_configs"]} == {"impetus", "impetus-hosts", *local}
        config["global"]["scrape_interval"] = "1s"
        for job in config["scrape_configs"]:
            if job["job_name"] == "impetus-hosts":
                assert [c["files"] for c in job["file_sd_configs"]] == [["hosts/*.json"]]
                job["file_sd_configs"][0]["refresh_interval"] = "1s"
            else:  # a gateway with no workers of its own: `impetus` has no target
                job["static_configs"] = [{"targets": [local[job["job_name"]]]}] if job["job_name"] in local else []
        (work / "hosts").mkdir()
        (work / "hosts" / "hosts.json").write_text(json.dumps(service_discovery([gateway_server])))
        local["impetus-hosts"] = gateway_server.removeprefix("http://")
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        for rules in config["rule_files"]:  # beside the config, as in the compose mount
            (work / rules).write_text((CONFIG.parent / rules).read_text())
        url = f"http://127.0.0.1:{prometheus_port}"
        processes.append(start_program(
            [binary("prometheus"), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            f"{url}/-/ready", work / "prometheus.log"))
        wait_for(url, "count(up == 1)", lambda v: v == len(local), "every target to be up")
        yield {"prometheus": url, "proxy": proxy, "server": gateway_server}
    finally:
        for process in reversed(processes):
            stop(process)


def query(prometheus: str, expr: str) -> list:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def wait_for(prometheus: str, expr: str, ok, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = query(prometheus, expr)
        if result and ok(float(result[0]["value"][1])):
            return
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}: {expr} -> {result}"
        time.sleep(0.5)


def make_traffic(proxy: str, keys: KeyStore) -> int:
    """Requests through nginx that give every panel something to show; returns their count."""
    user, _ = keys.create("grafana-user")
    limited, _ = keys.create("grafana-limited", rpm=1)
    # Sampled unless said otherwise: the default model's own defaults are greedy, and a greedy repeat is a cache hit.
    chat = {"model": DEFAULT_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "Name a fruit."}],
            "temperature": 1.0}
    headers = {"Authorization": f"Bearer {user}"}
    statuses = []
    with httpx.Client(base_url=proxy, timeout=120, headers=headers) as http:
        for _ in range(2):  # a cache miss, then a hit
            statuses.append(http.post("/v1/chat/completions", json={**chat, "temperature": 0}).status_code)
        with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True, "max_tokens": 12}) as stream:
            assert sum(1 for line in stream.iter_lines() if line.startswith("data: "))
            statuses.append(stream.status_code)
        statuses.append(http.post("/v1/completions", json={"model": DEFAULT_MODEL, "prompt": "One, two,",
                                                           "max_tokens": 6, "temperature": 1.0}).status_code)
        statuses.append(http.post("/v1/chat/completions", json={**chat, "messages": []}).status_code)
        statuses.append(http.get("/v1/models", headers={"Authorization": "Bearer imp_not-a-key"}).status_code)
        for _ in range(2):
            statuses.append(http.post("/v1/chat/completions", json=chat,
                                      headers={"Authorization": f"Bearer {limited}"}).status_code)
    assert statuses == [200, 200, 200, 200, 400, 401, 200, 429]
    return len(statuses)


def test_the_real_prometheus_evaluates_every_alert_and_none_fires_on_a_healthy_stack(stack):
    def rules():
        body = httpx.get(f"{stack['prometheus']}/api/v1/rules", timeout=10).json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    deadline = time.monotonic() + 60
    while any(rule.get("lastEvaluation", "").startswith("0001") for rule in rules()):
        assert time.monotonic() < deadline, "the rules were never evaluated"
        time.sleep(1)
    loaded = rules()
    assert len(loaded) == 8
    for rule in loaded:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert rule["state"] == "inactive", (rule["name"], rule["alerts"])
    # The series the alerts read exist in the real scrape (restarts and exits appear when they happen).
    for metric in ("impetus_mlx_active_memory_bytes", "impetus_memory_budget_bytes", "impetus_thermal_state",
                   "impetus_redis_errors_total", "redis_up", "nginx_up"):
        assert query(stack["prometheus"], metric), metric


def test_every_dashboard_panel_returns_data(stack, redis_client):
    prometheus = stack["prometheus"]
    before = float(query(prometheus, "sum(impetus_requests_total) or vector(0)")[0]["value"][1])
    count = make_traffic(stack["proxy"], KeyStore(redis_client))
    wait_for(prometheus, "sum(impetus_requests_total)", lambda v: v >= before + count, "the traffic to be scraped")
    time.sleep(2)  # a couple more scrapes, so rates span the traffic

    expressions = dashboard_expressions()
    assert len(expressions) >= 25
    empty, not_a_number = [], []
    for where, expr in expressions:
        result = query(prometheus, grafana_to_promql(expr))
        values = [float(series["value"][1]) for series in result]
        if not values:
            empty.append(f"{where}: {expr}")
        elif not any(math.isfinite(v) for v in values):
            not_a_number.append(f"{where}: {expr} -> {values}")
    assert not empty, "panels with no data:\n" + "\n".join(empty)
    assert not not_a_number, "panels with only NaN:\n" + "\n".join(not_a_number)

    # Spot checks that the numbers are the right ones, not merely present.
    def one(expr):
        return float(query(prometheus, expr)[0]["value"][1])

    assert one('max(impetus_thermal_state)') == -1  # "unknown" off macOS
    [host] = query(prometheus, 'up{job="impetus-hosts"}')
    assert host["metric"]["host"] == stack["server"]
    assert one(f'count(impetus_model_memory_bytes{{model="{DEFAULT_MODEL}"}} > 0)') == 2  # both workers
    assert one('sum(increase(impetus_cache_requests_total{result="hit"}[5m]))') > 0
    assert one('sum(impetus_rate_limited_total{kind="requests"})') >= 1
    keys = {s["metric"]["key"] for s in query(prometheus, "sum by (key) (impetus_generation_tokens_total)")}
    assert {"grafana-user", "grafana-limited"} <= keys
    assert not any(k.startswith("imp_") for k in keys)
    models = httpx.get(f"{prometheus}/api/v1/label/model/values",
                       params={"match[]": "impetus_model_memory_bytes"}, timeout=10).json()["data"]
    assert models == [DEFAULT_MODEL]  # what the dashboard's model variable offers
