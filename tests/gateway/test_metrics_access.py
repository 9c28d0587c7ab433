"""Who may read /metrics without a key: loopback and the configured Prometheus
host, nobody else (Falcon's test client sets the peer address)."""

from __future__ import annotations

import falcon
import falcon.testing
import pytest

from impetus.gateway import Gateway
from impetus.gateway.account import AccountMiddleware
from impetus.gateway.middleware import AuthMiddleware
from impetus.metrics import Metrics
from impetus.settings import Settings


class Ok:
    def on_get(self, req, resp):
        resp.media = {"ok": True}


@pytest.fixture
def http(redis_client):
    gateway = Gateway(Settings(), Metrics.null(), redis=redis_client)
    auth = AuthMiddleware(gateway.keys, gateway.account_for, gateway.metrics, metrics_allow=["10.0.5.0/24"])
    app = falcon.App(middleware=[AccountMiddleware(), auth])
    app.add_route("/metrics", Ok())
    app.add_route("/v1/admin/models", Ok())
    return falcon.testing.TestClient(app), gateway.keys


@pytest.mark.parametrize("address, allowed", [
    ("127.0.0.1", True), ("::1", True), ("10.0.5.7", True),
    ("10.0.6.7", False), ("192.168.1.20", False), ("fe80::1", False),
])
def test_metrics_without_a_key_only_from_allowed_addresses(http, address, allowed):
    client, _ = http
    response = client.simulate_get("/metrics", remote_addr=address)
    assert response.status_code == (200 if allowed else 401)


def test_a_presented_key_is_judged_even_from_an_allowed_address(http):
    client, keys = http
    user, _ = keys.create("plain")
    admin, _ = keys.create("ops", admin=True)
    assert client.simulate_get("/metrics", remote_addr="127.0.0.1",
                               headers={"Authorization": f"Bearer {user}"}).status_code == 403
    assert client.simulate_get("/metrics", remote_addr="127.0.0.1",
                               headers={"Authorization": "Bearer imp_wrong"}).status_code == 401
    # From anywhere, an admin key opens /metrics.
    assert client.simulate_get("/metrics", remote_addr="192.168.1.20",
                               headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    # The exception is /metrics only: the admin API always needs the key.
    assert client.simulate_get("/v1/admin/models", remote_addr="127.0.0.1").status_code == 401
