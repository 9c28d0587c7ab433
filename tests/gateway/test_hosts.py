"""The host registry: every worker of every server on one Redis heartbeats its
host, models and load; `impetus hosts` and /v1/status list them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from impetus.gateway.hosts import HostRegistry
from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

from conftest import Server


def beat(registry, address, pid, loaded=(), running=0):
    registry.beat(address, pid, "1.0", ["a", "b"], list(loaded), 100, 40, running, 1)


def test_workers_add_up_per_host_and_a_silent_one_drops_out(redis_client):
    # Its own prefix: the session's servers heartbeat into this Redis too.
    registry = HostRegistry(redis_client, prefix="test-hosts:", ttl_s=1)
    beat(registry, "http://mac-1:8081", 11, loaded=["a"], running=2)
    beat(registry, "http://mac-1:8081", 12, loaded=["b"], running=3)
    beat(registry, "http://mac-2:8081", 21)
    one, two = registry.hosts()
    assert (one.address, one.workers, one.loaded, one.running, one.waiting, one.used_bytes, one.budget_bytes) == (
        "http://mac-1:8081", 2, ["a", "b"], 5, 2, 80, 200)
    assert (two.address, two.workers, two.loaded, two.models) == ("http://mac-2:8081", 1, [], ["a", "b"])
    assert one.heartbeat_age_s < 1
    registry.leave("http://mac-2:8081", 21)  # a clean stop leaves at once
    assert [h.address for h in registry.hosts()] == ["http://mac-1:8081"]
    time.sleep(1.2)  # no beat within the TTL: gone, and removed from the index
    beat(registry, "http://mac-1:8081", 12)
    [host] = registry.hosts()
    assert host.workers == 1
    assert redis_client.zcard("test-hosts:hostworkers") == 1


@pytest.mark.slow
@pytest.mark.own_server("a second host on the same Redis, advertising another address")
def test_servers_on_one_redis_are_listed_and_answers_name_their_host(gateway_server, redis_server, redis_client,
                                                                     data_dir, tmp_path):
    admin, _ = KeyStore(redis_client).create("hosts-admin", admin=True)
    headers = {"Authorization": f"Bearer {admin}"}
    answer = httpx.get(f"{gateway_server}/v1/models", headers=headers, timeout=10)
    first_host = answer.headers["x-impetus-host"]
    # By default a host advertises http://<hostname>:<port>.
    assert first_host == f"http://{socket.gethostname()}:{gateway_server.rsplit(':', 1)[1]}"
    second = Server(data_dir, tmp_path / "second.log", require_api_keys="true", redis_url=redis_server.url,
                    advertise="http://second-mac:9999")
    try:
        assert httpx.get(f"{second.base_url}/v1/models", headers=headers,
                         timeout=10).headers["x-impetus-host"] == "http://second-mac:9999"

        def listed():
            result = subprocess.run([sys.executable, "-m", "impetus", "hosts", "--json"], capture_output=True,
                                    text=True, timeout=60, env={**os.environ, "IMPETUS_REDIS_URL": redis_server.url})
            assert result.returncode == 0, result.stderr
            return {host["address"]: host for host in json.loads(result.stdout)}

        def both_there() -> bool:  # other servers of the test session may beat into this Redis too
            hosts = listed()
            return {first_host, "http://second-mac:9999"} <= set(hosts) and hosts[first_host]["workers"] == 2

        deadline = time.monotonic() + 30
        while not both_there():
            assert time.monotonic() < deadline, listed()
            time.sleep(1)
        hosts = listed()
        assert DEFAULT_MODEL in hosts[first_host]["loaded"] and DEFAULT_MODEL in hosts[first_host]["models"]
        assert hosts["http://second-mac:9999"]["workers"] == 1
        assert hosts["http://second-mac:9999"]["heartbeat_age_s"] < 10
        status = httpx.get(f"{gateway_server}/v1/status", headers=headers, timeout=10).json()
        assert {first_host, "http://second-mac:9999"} <= {h["address"] for h in status["hosts"]}
    finally:
        second.stop()
    # A server that stops cleanly leaves the registry at once.
    assert "http://second-mac:9999" not in {h.address for h in HostRegistry(redis_server.client()).hosts()}
