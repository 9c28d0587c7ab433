"""Several Macs, one endpoint, on loopback: a gateway (`impetus up --cluster`,
no model of its own) and two hosts (`impetus serve --join`), each with its
own data dir and port, all real processes: redis-server, nginx, Gunicorn."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx
import openai
import pytest

from impetus.gateway import connect
from impetus.gateway.guard import HEADER, ClusterSecret
from impetus.gateway.hosts import TTL_S, HostRegistry
from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port

from processes import Foreground

pytestmark = pytest.mark.slow

ONLY_ON_TWO = "only-on-two"  # an alias that host 2's data dir has and host 1's has not


def impetus(*args, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "impetus", *args], capture_output=True, text=True, timeout=timeout)


def _data_dir(root, name, data_dir):
    directory = root / name
    (directory / "models").mkdir(parents=True)
    (directory / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    return directory


@dataclass
class Host:
    name: str
    port: int
    data_dir: object
    process: Foreground

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    url: str
    gateway: Foreground
    gateway_dir: object
    join: str
    admin: str
    hosts: list

    @property
    def redis(self):
        return connect(self.join)

    def secret(self) -> str:
        return ClusterSecret(self.redis).current()

    def key(self, name: str, *flags: str) -> str:
        made = impetus("keys", "create", "--name", name, *flags, "--data-dir", str(self.gateway_dir))
        assert made.returncode == 0, made.stderr
        return made.stdout.strip().splitlines()[-1]

    def routed(self) -> set[str]:
        """The hosts nginx's upstream names now."""
        text = (self.gateway_dir / "run" / "nginx" / "impetus-upstream.conf").read_text()
        return {line.split("# ")[1] for line in text.splitlines() if line.strip().startswith("server ")
                and "# " in line and " down;" not in line}

    def wait_routed(self, hosts: set[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.routed() != hosts:
            assert time.monotonic() < deadline, f"routed {self.routed()}, not {hosts}"
            time.sleep(0.2)


def join_host(root, name, data_dir, join: str) -> Host:
    port = free_port()
    process = Foreground(["serve", "--join", join, "--host", "127.0.0.1", "--port", str(port),
                          "--advertise", f"http://127.0.0.1:{port}", "--data-dir", str(data_dir)])
    return Host(name, port, data_dir, process)


@pytest.fixture(scope="module")
def cluster(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    gateway_dir = _data_dir(root, "gateway", data_dir)
    port = free_port()
    gateway = Foreground(["up", "--cluster", "--cluster-address", "127.0.0.1", "--redis-port", str(free_port()),
                          "--workers", "0", "--port", str(port), "--data-dir", str(gateway_dir)])
    hosts = []
    try:
        gateway.wait_for("impetus is up", timeout=60)
        join = gateway.wait_for("join: impetus serve --join ").split("--join ")[1].split()[0]
        admin = gateway.admin_key()
        second_dir = _data_dir(root, "host-2", data_dir)
        alias = impetus("models", "alias", ONLY_ON_TWO, DEFAULT_MODEL, "--data-dir", str(second_dir))
        assert alias.returncode == 0, alias.stderr
        hosts = [join_host(root, "host-1", _data_dir(root, "host-1", data_dir), join),
                 join_host(root, "host-2", second_dir, join)]
        for host in hosts:
            host.process.wait_for("impetus host is up")
        found = Cluster(f"http://127.0.0.1:{port}", gateway, gateway_dir, join, admin, hosts)
        found.wait_routed({h.url for h in hosts})
        yield found
    finally:
        for host in hosts:
            host.process.stop()
        assert gateway.stop() == 0, "\n".join(gateway.output)


def _models(url: str, key: str, **headers) -> httpx.Response:
    return httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}", **headers}, timeout=30)


def _chat(url: str, key: str, model: str = DEFAULT_MODEL, content: str = "Say hi", **headers) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}", **headers},
                      json={"model": model, "temperature": 0, "max_tokens": 3,
                            "messages": [{"role": "user", "content": content}]}, timeout=120)


def keys_by_host(cluster, prefix: str, each: int = 1) -> dict[str, list[str]]:
    """New keys until `each` of them hash to every host (the hash is of random key material)."""
    found: dict[str, list[str]] = {h.url: [] for h in cluster.hosts}
    for index in range(60):
        if all(len(keys) >= each for keys in found.values()):
            return found
        key = cluster.key(f"{prefix}-{index}")
        found[_models(cluster.url, key).headers["x-impetus-host"]].append(key)
    raise AssertionError(f"60 keys did not reach every host: { {h: len(k) for h, k in found.items()} }")


def test_a_joined_host_is_listed_with_its_models(cluster):
    listed = impetus("hosts", "--json", "--data-dir", str(cluster.gateway_dir))
    assert listed.returncode == 0, listed.stderr
    hosts = {h["address"]: h for h in json.loads(listed.stdout)}
    one, two = (hosts[h.url] for h in cluster.hosts)
    assert DEFAULT_MODEL in one["loaded"] and DEFAULT_MODEL in two["loaded"]
    assert ONLY_ON_TWO in two["models"] and ONLY_ON_TWO not in one["models"]
    # Prometheus' targets, written by the gateway from the registry.
    sd = json.loads((cluster.gateway_dir / "run" / "prometheus" / "hosts.json").read_text())
    assert sorted(t for group in sd for t in group["targets"]) == sorted(f"127.0.0.1:{h.port}"
                                                                         for h in cluster.hosts)
    assert {group["labels"]["host"] for group in sd} == {h.url for h in cluster.hosts}


def test_keys_spread_over_the_hosts_and_each_stays_on_one(cluster):
    # Keys are random, so which host each hashes to is too: make them until both hosts have two
    # (a dozen keys all on one host would happen once in 2,000 runs: keys_by_host's 60 never).
    by_host = keys_by_host(cluster, "spread", each=2)
    for host, keys in by_host.items():
        for key in keys:
            assert {_models(cluster.url, key).headers["x-impetus-host"] for _ in range(3)} == {host}
            reply = _chat(cluster.url, key)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-impetus-host"] == host


def test_a_request_that_skips_the_gateway_is_refused_before_its_key_is_looked_at(cluster):
    host = cluster.hosts[0]
    for headers in ({}, {HEADER: "guessed"}):
        refused = _models(host.url, "not-a-key", **headers)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "gateway_required"
    # With the secret the request reaches auth (a bad key is then 401), and
    # health checks and /metrics (its own rule: loopback without a key) stay open.
    assert _models(host.url, "not-a-key", **{HEADER: cluster.secret()}).status_code == 401
    assert _models(host.url, cluster.admin, **{HEADER: cluster.secret()}).status_code == 200
    assert httpx.get(f"{host.url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{host.url}/metrics", timeout=10).status_code == 200
    # Through the gateway a client cannot present a secret of its own: nginx replaces it.
    assert _models(cluster.url, cluster.admin, **{HEADER: "guessed"}).status_code == 200


def test_limits_the_cache_and_revocation_are_one_for_all_hosts(cluster):
    secret = {HEADER: cluster.secret()}
    one, two = (h.url for h in cluster.hosts)
    limited = cluster.key("five-a-minute", "--rpm", "5")
    statuses = [_models(url, limited, **secret).status_code for url in (one, two, one, two, one, two)]
    assert statuses == [200] * 5 + [429], statuses

    cached = cluster.key("cached")
    question = f"Name a colour ({time.time()})"  # asked nowhere before
    first = _chat(one, cached, content=question, **secret)
    assert first.status_code == 200 and first.headers["x-impetus-cache"] == "miss", first.text
    again = _chat(two, cached, content=question, **secret)
    assert again.headers["x-impetus-cache"] == "hit" and again.headers["x-impetus-host"] == two
    assert again.json()["choices"] == first.json()["choices"]

    revoked = cluster.key("revoked")
    assert {_models(url, revoked, **secret).status_code for url in (one, two)} == {200}
    gone = httpx.delete(f"{cluster.url}/v1/admin/keys/revoked", headers={"Authorization": f"Bearer {cluster.admin}"},
                        timeout=10)
    assert gone.status_code == 200, gone.text
    assert {_models(url, revoked, **secret).status_code for url in (one, two)} == {401}


def test_a_model_only_one_host_has_is_reached_whatever_host_the_key_hashes_to(cluster):
    one, two = (h.url for h in cluster.hosts)
    by_host = {host: keys[0] for host, keys in keys_by_host(cluster, "model").items()}
    for key in by_host.values():
        reply = _chat(cluster.url, key, model=ONLY_ON_TWO)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-impetus-host"] == two
        assert reply.json()["model"] == ONLY_ON_TWO
    # A model no host has: every host says so, and so does the gateway, in OpenAI's shape.
    missing = _chat(cluster.url, by_host[one], model="no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_rotated_secret_reaches_nginx_and_the_old_one_fades(cluster):
    old = cluster.secret()
    rotated = impetus("cluster", "rotate-secret", "--data-dir", str(cluster.gateway_dir))
    assert rotated.returncode == 0, rotated.stderr
    new = cluster.secret()
    assert new != old
    # The gateway goes on answering while nginx reloads with the new secret.
    deadline = time.monotonic() + 10
    while new not in (cluster.gateway_dir / "run" / "nginx" / "impetus-upstream.conf").read_text():
        assert _models(cluster.url, cluster.admin).status_code == 200
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for _ in range(5):
        assert _models(cluster.url, cluster.admin).status_code == 200
    host = cluster.hosts[0].url
    assert _models(host, cluster.admin, **{HEADER: new}).status_code == 200
    assert _models(host, cluster.admin, **{HEADER: old}).status_code == 200  # within its grace
    audit = impetus("audit", "--json", "--action", "cluster.secret_rotated", "--data-dir", str(cluster.gateway_dir))
    assert "cluster.secret_rotated" in audit.stdout and new not in audit.stdout and old not in audit.stdout


def test_joining_with_a_wrong_password_or_no_redis_is_one_line(cluster, tmp_path):
    port = cluster.join.rsplit(":", 1)[1]
    for url, reason in ((f"redis://:wrong@127.0.0.1:{port}", "the password is wrong"),
                        (f"redis://127.0.0.1:{port}", "wants its password"),
                        (f"redis://:x@127.0.0.1:{free_port()}", "no Redis answers there")):
        result = impetus("serve", "--join", url, "--data-dir", str(tmp_path))
        assert result.returncode == 1
        assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
        assert reason in result.stderr and "wrong@" not in result.stderr


class Traffic(threading.Thread):
    """Requests one after another through the gateway, each key its own
    client with no retries: (start time, host or the error) for each."""

    def __init__(self, url: str, keys: list[str]):
        super().__init__(daemon=True)
        self.clients = [openai.OpenAI(base_url=f"{url}/v1", api_key=k, max_retries=0, timeout=60) for k in keys]
        self.done = threading.Event()
        self.results: list[tuple[float, str, bool]] = []

    def run(self):
        while not self.done.is_set():
            for client in self.clients:
                started = time.monotonic()
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model=DEFAULT_MODEL, max_tokens=2, messages=[{"role": "user", "content": "Say hi"}])
                    self.results.append((started, raw.headers["x-impetus-host"], True))
                except openai.OpenAIError as error:
                    self.results.append((started, repr(error), False))


def _workers_of(cluster, host) -> set[str]:
    members = cluster.redis.zrange("impetus:hostworkers", 0, -1)
    return {m for m in members if m.startswith(f"{host.url}|")}


def test_a_host_killed_during_traffic_is_routed_around_dropped_and_rejoins(cluster):
    one, two = cluster.hosts
    traffic = Traffic(cluster.url, [k for keys in keys_by_host(cluster, "traffic", 2).values() for k in keys])
    traffic.start()
    try:
        started = time.monotonic()
        while len({host for _, host, ok in traffic.results if ok}) < 2:  # both hosts serve
            assert time.monotonic() - started < 60, traffic.results[-5:]
            time.sleep(0.2)
        before = _workers_of(cluster, two)
        assert before
        master = int(subprocess.run(["pgrep", "-o", "-f", f"impetus serve --port {two.port}"],
                                    capture_output=True, text=True).stdout.split()[0])
        killed_at = time.monotonic()
        os.killpg(master, signal.SIGKILL)  # the host's master and workers, as a crash or a pulled cable

        # The registry drops the dead workers within the heartbeat's TTL.
        while _workers_of(cluster, two) & before:
            assert time.monotonic() - killed_at < TTL_S + 5, "the dead host's workers are still registered"
            time.sleep(0.5)
        dropped = time.monotonic() - killed_at
        # ... and the host comes back by itself (`serve --join` restarts its workers) and registers anew.
        two.process.wait_for("workers is back after restart 1", timeout=120)
        back = time.monotonic() - killed_at
        while not _workers_of(cluster, two) - before:
            assert time.monotonic() - killed_at < 120
            time.sleep(0.5)
        cluster.wait_routed({one.url, two.url})
        recovered = len(traffic.results)
        while not any(host == two.url for _, host, ok in traffic.results[recovered:]):
            assert time.monotonic() - killed_at < 150, "no request reached the host that came back"
            time.sleep(0.5)
    finally:
        traffic.done.set()
        traffic.join(120)
    late = [(round(at - killed_at, 1), what) for at, what, ok in traffic.results
            if not ok and at > killed_at + 5]  # fail_timeout
    assert late == [], late
    assert len(traffic.results) > 10
    early = [round(at - killed_at, 1) for at, _, ok in traffic.results if not ok]
    print(f"kill -9 of a host: {len(traffic.results)} requests, failed at {early} s after the kill; "
          f"the host was back after {back:.1f} s, its dead workers dropped after {dropped:.1f} s")
    hosts = HostRegistry(cluster.redis).hosts()
    assert {h.address for h in hosts} >= {one.url, two.url}


def test_a_gateway_with_its_own_workers_routes_to_them_with_the_secret(data_dir, tmp_path):
    """`impetus up --cluster` as most teams start it: the gateway Mac serves too."""
    gateway_dir = _data_dir(tmp_path, "gateway", data_dir)
    internal, port = free_port(), free_port()
    gateway = Foreground(["up", "--cluster", "--cluster-address", "127.0.0.1", "--redis-port", str(free_port()),
                          "--port", str(port), "--data-dir", str(gateway_dir)], {"IMPETUS_PORT": str(internal)})
    try:
        gateway.wait_for("impetus is up")
        gateway.wait_for("join: ")
        admin = gateway.admin_key()
        url, own = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{internal}"
        answer = _models(url, admin)
        assert answer.status_code == 200 and answer.headers["x-impetus-host"] == own
        # On the gateway Mac too, only nginx reaches the workers.
        skipped = _models(own, admin)
        assert skipped.status_code == 403 and skipped.json()["error"]["code"] == "gateway_required"
        # Its own workers are the `impetus` job's target: not repeated in the hosts file.
        deadline = time.monotonic() + 20
        sd = gateway_dir / "run" / "prometheus" / "hosts.json"
        while not sd.exists():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert json.loads(sd.read_text()) == []
    finally:
        assert gateway.stop() == 0, "\n".join(gateway.output)
