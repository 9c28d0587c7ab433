"""The pieces of a cluster that need no model: the gateway secret's guard (in
process, on the real Redis), the upstream nginx is given (checked by the real
nginx), and the watcher that keeps it equal to the host registry."""

from __future__ import annotations

import json
import time

import falcon
import falcon.testing
import pytest

from impetus.gateway.guard import (
    HEADER,
    MISS_REFRESH_S,
    PREVIOUS_GRACE_S,
    ClusterSecret,
    GatewayGuardMiddleware,
)
from impetus.gateway.hosts import HostRegistry
from impetus.stack import cluster, nginx
from impetus.web import APIError, Request


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Hello:
    def on_get(self, req, resp):
        resp.media = {"ok": True}


def _app(guard) -> falcon.testing.TestClient:
    def as_openai(req, resp, error, params):
        resp.status, resp.media = error.status, error.body

    app = falcon.App(middleware=[guard], request_type=Request)
    app.add_error_handler(APIError, as_openai)
    for path in ("/v1/models", "/healthz", "/metrics"):
        app.add_route(path, Hello())
    return falcon.testing.TestClient(app)


def test_only_the_current_secret_and_the_previous_one_in_its_grace_pass(redis_client):
    wall, tick = Clock(), Clock()
    secret = ClusterSecret(redis_client, prefix="test-guard:", clock=wall)
    first = secret.ensure()
    assert secret.ensure() == first  # made once
    client = _app(GatewayGuardMiddleware(secret, clock=tick))

    def status(value=None, path="/v1/models"):
        return client.simulate_get(path, headers={HEADER: value} if value else {}).status_code

    assert status(first) == 200
    refused = client.simulate_get("/v1/models")
    assert refused.status_code == 403 and refused.json["error"]["code"] == "gateway_required"
    assert status("guessed") == 403
    assert status(path="/healthz") == 200 and status(path="/metrics") == 200  # their own rules

    second = secret.rotate()
    assert status(second) == 403  # read a moment ago: not again yet
    tick.now += MISS_REFRESH_S
    assert status(second) == 200  # an unknown secret makes the worker look again
    assert status(first) == 200  # nginx's old workers may still send it
    wall.now += PREVIOUS_GRACE_S + 1
    tick.now += 10
    assert status(first) == 403 and status(second) == 200


def test_a_worker_keeps_the_last_secret_it_read_while_redis_is_away(redis_server, redis_client):
    secret = ClusterSecret(redis_client, prefix="test-guard:")
    value = secret.ensure()
    tick = Clock()
    client = _app(GatewayGuardMiddleware(secret, clock=tick))
    assert client.simulate_get("/v1/models", headers={HEADER: value}).status_code == 200
    redis_server.stop()
    try:
        tick.now += 60
        assert client.simulate_get("/v1/models", headers={HEADER: value}).status_code == 200
        assert client.simulate_get("/v1/models", headers={HEADER: "guessed"}).status_code == 403
    finally:
        redis_server.start()


def test_an_allowed_address_needs_no_secret_and_loopback_is_not_allowed_by_default(redis_client):
    secret = ClusterSecret(redis_client, prefix="test-guard:")
    secret.ensure()
    allowed = _app(GatewayGuardMiddleware(secret, allow=["10.0.0.0/24"]))
    assert allowed.simulate_get("/v1/models", remote_addr="10.0.0.7").status_code == 200
    assert allowed.simulate_get("/v1/models", remote_addr="10.0.1.7").status_code == 403
    assert allowed.simulate_get("/v1/models", remote_addr="127.0.0.1").status_code == 403


def test_the_upstream_nginx_is_given_is_accepted_and_hashes_by_key(tmp_path):
    conf = nginx.render(nginx.NginxConfig("127.0.0.1", 18080, "127.0.0.1:18081", tmp_path / "run", tmp_path / "logs"))
    upstream = conf.parent / nginx.UPSTREAM_FILE
    for servers in ({}, {"127.0.0.1:18091": "http://mac-1:18091", "[::1]:18092": "http://mac-2:18092"}):
        text = cluster.render_upstream(servers, "s3cret")
        upstream.write_text(text)
        nginx.check(conf)
        assert "hash $impetus_affinity consistent;" in text and 'default "s3cret";' in text
        assert text.count("max_fails=1 fail_timeout=5s") == len(servers)
    assert "server 127.0.0.1:9 down;" in cluster.render_upstream({}, None)


def test_addresses_resolve_for_nginx_and_passwords_stay_out_of_logs():
    assert cluster.upstream_target("http://127.0.0.1:8081") == "127.0.0.1:8081"
    assert cluster.upstream_target("http://localhost:8081") in ("127.0.0.1:8081", "[::1]:8081")
    assert cluster.upstream_target("http://[::1]:9000") == "[::1]:9000"
    assert cluster.upstream_target("http://no-such-host.invalid:8081") is None
    assert cluster.redacted("redis://:pw@10.0.0.2:6390") == "redis://:***@10.0.0.2:6390"
    assert cluster.redacted("unix:///d/redis.sock?password=pw") == "unix:///d/redis.sock?password=***"
    assert cluster.redacted("redis://10.0.0.2:6390") == "redis://10.0.0.2:6390"
    assert cluster.join_url("a/b", "10.0.0.2", 6390) == "redis://:a%2Fb@10.0.0.2:6390"


def test_the_password_file_is_made_once_and_private(tmp_path):
    password = cluster.ensure_password(tmp_path)
    assert cluster.ensure_password(tmp_path) == password
    assert oct(cluster.password_path(tmp_path).stat().st_mode & 0o777) == "0o600"
    conf = cluster.redis_password_conf(tmp_path)
    assert conf.read_text() == f'requirepass "{password}"\n' and oct(conf.stat().st_mode & 0o777) == "0o600"


class Nginx:
    """Stands for nginx's master: records the reload signals it gets."""

    def __init__(self):
        self.signals = []

    def poll(self):
        return None

    def send_signal(self, signum):
        self.signals.append(signum)


def test_the_watcher_follows_the_registry_and_reloads_only_on_change(redis_client, tmp_path):
    registry = HostRegistry(redis_client, prefix="test-watch:", ttl_s=15)
    secret = ClusterSecret(redis_client, prefix="test-watch:")
    conf = nginx.render(nginx.NginxConfig("127.0.0.1", 18080, "127.0.0.1:18081", tmp_path / "run", tmp_path / "logs"))
    master, clock, lines = Nginx(), Clock(), []
    watcher = cluster.ClusterWatcher(registry, secret, conf, tmp_path / "sd" / "hosts.json", lambda: master,
                                     lines.append, local={"127.0.0.1:18081": "http://127.0.0.1:18081"}, clock=clock)
    watcher.prepare()
    assert "server 127.0.0.1:18081 " in watcher.upstream_file.read_text()
    assert secret.current() in watcher.upstream_file.read_text()

    registry.beat("http://127.0.0.1:18091", 1, "1", ["m"], ["m"], 1, 1, 0, 0)
    registry.beat("http://no-such-host.invalid:1", 2, "1", ["m"], ["m"], 1, 1, 0, 0)
    clock.now += 3
    watcher.step()
    text = watcher.upstream_file.read_text()
    assert "server 127.0.0.1:18091 " in text and "server 127.0.0.1:18081 " in text and "invalid" not in text
    assert len(master.signals) == 1 and any("does not resolve" in line for line in lines)
    sd = json.loads(watcher.sd_file.read_text())
    assert {g["labels"]["host"] for g in sd} == {"http://127.0.0.1:18091", "http://no-such-host.invalid:1"}

    clock.now += 3
    watcher.step()  # nothing changed: no reload
    assert len(master.signals) == 1
    clock.now += 1
    secret.rotate()
    watcher.step()  # within the interval: not looked at yet
    assert len(master.signals) == 1
    clock.now += 2
    watcher.step()
    assert len(master.signals) == 2 and secret.current() in watcher.upstream_file.read_text()
    assert "new gateway secret" in lines[-1]
    assert sum("does not resolve" in line for line in lines) == 1  # said once


def test_prometheus_goes_on_seeing_a_host_that_died_but_not_one_that_left(redis_client, tmp_path):
    registry = HostRegistry(redis_client, prefix="test-lost:", ttl_s=1)
    conf = nginx.render(nginx.NginxConfig("127.0.0.1", 18080, "127.0.0.1:18081", tmp_path / "run", tmp_path / "logs"))
    clock, wall = Clock(), Clock(time.time())
    watcher = cluster.ClusterWatcher(registry, ClusterSecret(redis_client, prefix="test-lost:"), conf,
                                     tmp_path / "hosts.json", lambda: None, lambda line: None,
                                     local={"127.0.0.1:18081": "http://127.0.0.1:18081"}, clock=clock, wall=wall)
    watcher.prepare()

    def targets():
        clock.now += cluster.WATCH_INTERVAL_S
        watcher.step()
        return {group["labels"]["host"] for group in json.loads(watcher.sd_file.read_text())}

    for address, pid in (("http://127.0.0.1:18081", 1), ("http://127.0.0.1:18091", 2), ("http://127.0.0.1:18092", 3)):
        registry.beat(address, pid, "1", ["m"], ["m"], 1, 1, 0, 0)
    # The gateway's own workers are the `impetus` job's target, not repeated here.
    assert targets() == {"http://127.0.0.1:18091", "http://127.0.0.1:18092"}
    registry.leave("http://127.0.0.1:18091", 2)  # stopped by its operator
    time.sleep(1.1)  # 18092 stops beating: killed
    assert registry.hosts() == []
    assert targets() == {"http://127.0.0.1:18092"}
    assert "127.0.0.1:18092" not in watcher.upstream_file.read_text()  # not routed to, only watched
    wall.now += cluster.LOST_KEEP_S + 1
    assert targets() == set()


@pytest.mark.parametrize("text", ["server 10.0.0.1:1 max_fails=oops;"])
def test_an_upstream_nginx_refuses_is_not_applied(redis_client, tmp_path, monkeypatch, text):
    conf = nginx.render(nginx.NginxConfig("127.0.0.1", 18080, "127.0.0.1:18081", tmp_path / "run", tmp_path / "logs"))
    master, lines = Nginx(), []
    watcher = cluster.ClusterWatcher(HostRegistry(redis_client, prefix="test-watch:"),
                                     ClusterSecret(redis_client, prefix="test-watch:"), conf,
                                     tmp_path / "hosts.json", lambda: master, lines.append)
    watcher.prepare()
    before = watcher.upstream_file.read_text()
    monkeypatch.setattr(cluster, "render_upstream", lambda servers, secret: "upstream impetus {\n" + text + "\n}\n")
    watcher._apply({"10.0.0.1:1": "x"}, "s")
    assert watcher.upstream_file.read_text() == before and master.signals == []
    assert "refused" in lines[-1]
