"""Several Macs, one endpoint, on a real network: a gateway (`impetus up
--cluster`, no model of its own) in this network namespace and two hosts
(`impetus serve --join`), each in a namespace of its own with its own address
on a bridge (tests/stack/lan.py), all real processes: redis-server, nginx,
Gunicorn. Faults are real too: a host whose packets vanish (its link down,
its sockets left open), a host cut off from the gateway's Redis only."""

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
from impetus.gateway.hosts import TTL_S
from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port
from impetus.settings import workers_socket

from lan import Lan, why_not
from processes import Foreground

pytestmark = pytest.mark.slow

ONLY_ON_TWO = "only-on-two"  # an alias that host 2's data dir has and host 1's has not
HOST_PORT = 8081  # every host on its own address, so all on the same port
READ_TIMEOUT_S = 20  # the gateway's IMPETUS_UPSTREAM_READ_TIMEOUT_S here (600 by default)


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
    namespace: str
    address: str
    data_dir: object
    process: Foreground | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{HOST_PORT}"

    def join(self, join: str, gateway_address: str) -> None:
        """`impetus serve --join` inside the host's namespace; /metrics open to the gateway (its Prometheus)."""
        self.process = Foreground(["serve", "--join", join, "--host", self.address, "--port", str(HOST_PORT),
                                   "--advertise", self.url, "--data-dir", str(self.data_dir)],
                                  {"IMPETUS_ADMIN_ALLOW": json.dumps([gateway_address])},
                                  program=Lan.run_in(self.namespace))
        self.process.wait_for("impetus host is up")


@dataclass
class Cluster:
    url: str
    gateway: Foreground
    gateway_dir: object
    join: str
    admin: str
    hosts: list
    lan: Lan

    @property
    def redis(self):
        return connect(self.join)

    def secret(self) -> str:
        return ClusterSecret(self.redis).current()

    def key(self, name: str, **limits) -> str:
        made = httpx.post(f"{self.url}/v1/admin/keys", json={"name": name, **limits}, timeout=30,
                          headers={"Authorization": f"Bearer {self.admin}"})
        assert made.status_code == 201, made.text
        return made.json()["key"]

    def routed(self) -> set[str]:
        """The hosts nginx's upstream names now."""
        text = (self.gateway_dir / "run" / "nginx" / "impetus-upstream.conf").read_text()
        return {line.split("# ")[1] for line in text.splitlines() if line.strip().startswith("server ")
                and "# " in line and " down;" not in line}

    def wait_routed(self, hosts: set[str], timeout: float = 30) -> float:
        """Seconds until nginx routes to exactly `hosts`."""
        started = time.monotonic()
        while self.routed() != hosts:
            assert time.monotonic() - started < timeout, f"routed {self.routed()}, not {hosts}"
            time.sleep(0.2)
        return time.monotonic() - started


@pytest.fixture(scope="module")
def cluster(data_dir, tmp_path_factory):
    reason = why_not()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("cluster")
    lan = Lan()
    gateway_dir = _data_dir(root, "gateway", data_dir)
    port = free_port()
    gateway = Foreground(["up", "--cluster", "--cluster-address", lan.redis, "--redis-port", str(free_port()),
                          "--workers", "0", "--port", str(port), "--data-dir", str(gateway_dir)],
                         {"IMPETUS_UPSTREAM_READ_TIMEOUT_S": str(READ_TIMEOUT_S)})
    hosts = []
    try:
        gateway.wait_for("impetus is up", timeout=60)
        join = gateway.wait_for("join: impetus serve --join ").split("--join ")[1].split()[0]
        admin = gateway.admin_key()
        second_dir = _data_dir(root, "host-2", data_dir)
        alias = impetus("models", "alias", ONLY_ON_TWO, DEFAULT_MODEL, "--data-dir", str(second_dir))
        assert alias.returncode == 0, alias.stderr
        for index, directory in ((1, _data_dir(root, "host-1", data_dir)), (2, second_dir)):
            namespace, address = lan.add_host(index)
            hosts.append(Host(f"host-{index}", namespace, address, directory))
        for host in hosts:
            host.join(join, lan.gateway)
        found = Cluster(f"http://127.0.0.1:{port}", gateway, gateway_dir, join, admin, hosts, lan)
        found.wait_routed({h.url for h in hosts})
        yield found
    finally:
        for host in hosts:
            if host.process is not None:
                host.process.stop()
        try:
            assert gateway.stop() == 0, "\n".join(gateway.output)
        finally:
            lan.close()


def _models(url: str, key: str, **headers) -> httpx.Response:
    return httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}", **headers}, timeout=30)


def _chat(url: str, key: str, model: str = DEFAULT_MODEL, content: str = "Say hi", **headers) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}", **headers},
                      json={"model": model, "temperature": 0, "max_tokens": 3,
                            "messages": [{"role": "user", "content": content}]}, timeout=120)


def _ollama_chat(url: str, key: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/api/chat", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                      json={"model": model, "stream": False, "options": {"temperature": 0, "num_predict": 3},
                            "messages": [{"role": "user", "content": "Say hi"}]})


def keys_by_host(cluster, prefix: str, each: int = 1, **limits) -> dict[str, list[str]]:
    """New keys until `each` of them hash to every host (the hash is of random key material)."""
    found: dict[str, list[str]] = {h.url: [] for h in cluster.hosts}
    for index in range(60):
        if all(len(keys) >= each for keys in found.values()):
            return found
        key = cluster.key(f"{prefix}-{index}", **limits)
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
    assert sorted(t for group in sd for t in group["targets"]) == sorted(f"{h.address}:{HOST_PORT}"
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
    # health checks and /metrics (its own rule: loopback and IMPETUS_ADMIN_ALLOW without a key) stay open.
    assert _models(host.url, "not-a-key", **{HEADER: cluster.secret()}).status_code == 401
    assert _models(host.url, cluster.admin, **{HEADER: cluster.secret()}).status_code == 200
    assert httpx.get(f"{host.url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{host.url}/metrics", timeout=10).status_code == 200
    # Through the gateway a client cannot present a secret of its own: nginx replaces it.
    assert _models(cluster.url, cluster.admin, **{HEADER: "guessed"}).status_code == 200


def test_limits_the_cache_and_revocation_are_one_for_all_hosts(cluster):
    secret = {HEADER: cluster.secret()}
    one, two = (h.url for h in cluster.hosts)
    limited = cluster.key("five-a-minute", rpm=5)
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
        # Ollama's face, with the tag its clients send: the host that lacks it says 404, so nginx passes it on.
        ollama = _ollama_chat(cluster.url, key, f"{ONLY_ON_TWO}:latest")
        assert ollama.status_code == 200, ollama.text
        assert ollama.headers["x-impetus-host"] == two and ollama.json()["model"] == f"{ONLY_ON_TWO}:latest"
    # A model no host has: every host says so, and so does the gateway, in each protocol's shape.
    missing = _chat(cluster.url, by_host[one], model="no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    missing = _ollama_chat(cluster.url, by_host[one], "no-such-model:latest")
    assert missing.status_code == 404 and set(missing.json()) == {"error"}


def test_a_keys_documents_are_reached_through_the_gateway_whichever_host_holds_them(cluster):
    """Documents live in the data dir of the host that ingested them. A key's requests hash to one
    host; when its store is on another (made before a host joined, say), that host's 404 passes the
    request on, so search and file_search reach it, as a model only one host has is reached."""
    one, two = cluster.hosts
    key = keys_by_host(cluster, "documents")[one.url][0]
    direct = {"Authorization": f"Bearer {key}", HEADER: cluster.secret()}
    upload = httpx.post(f"{two.url}/v1/files", headers=direct, data={"purpose": "assistants"}, timeout=30, files={
        "file": ("backups.md", b"# Backups\n\nThe nightly backup runs at 02:00 from the host vault-3.\n")})
    assert upload.status_code == 200, upload.text
    store = httpx.post(f"{two.url}/v1/vector_stores", headers=direct, timeout=30,
                       json={"name": "ops", "file_ids": [upload.json()["id"]]}).json()
    deadline = time.monotonic() + 60
    while httpx.get(f"{two.url}/v1/vector_stores/{store['id']}", headers=direct,
                    timeout=30).json()["status"] != "completed":
        assert time.monotonic() < deadline, "the file was not ingested on host 2"
        time.sleep(0.3)
    auth = {"Authorization": f"Bearer {key}"}
    found = httpx.post(f"{cluster.url}/v1/vector_stores/{store['id']}/search", headers=auth, timeout=60,
                       json={"query": "When does the nightly backup run?"})
    assert found.status_code == 200 and found.headers["x-impetus-host"] == two.url, found.text
    assert "02:00" in found.json()["data"][0]["content"][0]["text"]
    answer = httpx.post(f"{cluster.url}/v1/responses", headers=auth, timeout=120, json={
        "model": DEFAULT_MODEL, "input": "When does the nightly backup run?", "max_output_tokens": 48,
        "tools": [{"type": "file_search", "vector_store_ids": [store["id"]]}], "tool_choice": {"type": "file_search"}})
    assert answer.status_code == 200 and answer.headers["x-impetus-host"] == two.url, answer.text
    assert answer.json()["output"][0]["type"] == "file_search_call"
    missing = httpx.get(f"{cluster.url}/v1/vector_stores/vs_none", headers=auth, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "vector_store_not_found"


def _batch_lines_run(host) -> float:
    """The batch lines a host has answered (its impetus_batch_requests_total)."""
    text = httpx.get(f"{host.url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("impetus_batch_requests_total{"))


def test_a_batch_spreads_over_the_hosts_and_a_model_one_host_lacks_runs_on_the_other(cluster):
    """Both hosts take chunks of a batch of the model they share; a batch of the model only host 2
    has runs there, whichever host its key hashes to: host 1 leaves those lines to it."""
    one, two = cluster.hosts
    key = keys_by_host(cluster, "batch", rpm=100_000, tpm=100_000_000)[one.url][0]
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=key, max_retries=0, timeout=60)

    def run(model: str, count: int) -> None:
        lines = [{"custom_id": f"{model}-{n}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": model, "max_tokens": 8, "temperature": 0,
                           "messages": [{"role": "user", "content": f"Count to {n}."}]}} for n in range(count)]
        upload = client.files.create(file=("lines.jsonl", "\n".join(json.dumps(x) for x in lines).encode()),
                                     purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        _until(lambda: client.batches.retrieve(batch.id).status == "completed", 240, f"the {model} batch completes")
        done = client.batches.retrieve(batch.id)
        assert (done.request_counts.completed, done.request_counts.failed) == (count, 0)
        output = [json.loads(row) for row in client.files.content(done.output_file_id).text.splitlines()]
        assert [row["custom_id"] for row in output] == [x["custom_id"] for x in lines]  # each once, in order

    before = [_batch_lines_run(h) for h in (one, two)]
    run(DEFAULT_MODEL, 64)
    shared = [_batch_lines_run(h) for h in (one, two)]
    ran = [after - earlier for after, earlier in zip(shared, before, strict=True)]
    assert sum(ran) == 64 and min(ran) > 0, f"lines run by host 1 and host 2: {ran}"
    run(ONLY_ON_TWO, 8)
    assert [_batch_lines_run(h) for h in (one, two)] == [shared[0], shared[1] + 8]


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
    where = cluster.join.rsplit("@", 1)[1]
    for url, reason in ((f"redis://:wrong@{where}", "the password is wrong"),
                        (f"redis://{where}", "wants its password"),
                        (f"redis://:x@127.0.0.1:{free_port()}", "no Redis answers there")):
        result = impetus("serve", "--join", url, "--data-dir", str(tmp_path))
        assert result.returncode == 1
        assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
        assert reason in result.stderr and "wrong@" not in result.stderr


NO_END = {"0": -100, "2": -100}  # SmolLM2's end tokens banned: a stream runs its max_tokens


class Traffic(threading.Thread):
    """Requests one after another through the gateway, each key its own
    client with no retries: (start, end, host or the error, ok, which key) for each."""

    def __init__(self, url: str, keys: list[str]):
        super().__init__(daemon=True)
        self.clients = [openai.OpenAI(base_url=f"{url}/v1", api_key=k, max_retries=0, timeout=90) for k in keys]
        self.hosts = {}  # client index -> the host its key hashes to, when known
        self.done = threading.Event()
        self.results: list[tuple[float, float, str, bool, int]] = []

    def run(self):
        while not self.done.is_set():
            for index, client in enumerate(self.clients):
                started = time.monotonic()
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model=DEFAULT_MODEL, max_tokens=2, messages=[{"role": "user", "content": "Say hi"}])
                    self.results.append((started, time.monotonic(), raw.headers["x-impetus-host"], True, index))
                except openai.OpenAIError as error:
                    self.results.append((started, time.monotonic(), repr(error), False, index))

    def stop(self) -> None:
        self.done.set()
        self.join(120)
        assert not self.is_alive(), "a request hangs"


class Stream(threading.Thread):
    """One streamed answer of `tokens` tokens: how many arrived, how it ended, when."""

    def __init__(self, url: str, key: str, tokens: int):
        super().__init__(daemon=True)
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
        self.tokens, self.wanted = 0, tokens
        self.outcome, self.usage, self.ended = None, None, None
        self.start()

    def run(self):
        try:
            chunks = self.client.chat.completions.create(
                model=DEFAULT_MODEL, max_tokens=self.wanted, stream=True, logit_bias=NO_END, temperature=0,
                stream_options={"include_usage": True}, messages=[{"role": "user", "content": "Count to a thousand."}])
            for chunk in chunks:
                self.tokens += bool(chunk.choices and chunk.choices[0].delta.content)
                self.usage = chunk.usage or self.usage
            self.outcome = "finished"
        except Exception as error:  # how the client saw its stream end
            self.outcome = repr(error)
        self.ended = time.monotonic()

    def wait_tokens(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.tokens < count:
            assert self.outcome is None and time.monotonic() < deadline, (self.tokens, self.outcome)
            time.sleep(0.05)


def _until(condition, timeout: float, what) -> None:
    """Wait for `condition`; `what` (or what it returns, if callable) says what did not happen."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.2)


def _log_of(process: Foreground, last: int = 15) -> str:
    while not process.lines.empty():
        process.output.append(process.lines.get())
    return "\n".join(process.output[-last:])


def test_a_host_whose_link_goes_down_is_routed_around_its_streams_end_and_it_rejoins(cluster):
    one, two = cluster.hosts
    by_host = keys_by_host(cluster, "link", 2)
    traffic = Traffic(cluster.url, by_host[one.url] + by_host[two.url])
    traffic.start()
    try:
        _until(lambda: len({host for _, _, host, ok, _ in traffic.results if ok}) == 2, 60, "both hosts serve")
        stream = Stream(cluster.url, by_host[two.url][0], 4000)
        stream.wait_tokens(5)
        cut = time.monotonic()
        cluster.lan.cut(two.namespace, cluster.lan.gateway, cluster.lan.redis)  # its link goes down

        stream.join(READ_TIMEOUT_S + 20)
        assert stream.outcome not in (None, "finished"), "the stranded stream did not end with an error"
        stranded = stream.ended - cut
        assert stranded <= READ_TIMEOUT_S + 5, stranded
        cluster.wait_routed({one.url}, timeout=TTL_S + 15)  # its heartbeat stopped
        dropped = time.monotonic() - cut
        # Host 2's keys: every request that starts once it is out of nginx's upstream is served by host 1.
        _until(lambda: len([1 for start, *_ in traffic.results if start > cut + dropped]) >= 8, 60,
               "requests after the drop")
        late = [(round(start - cut, 1), host, ok) for start, _, host, ok, _ in traffic.results
                if start > cut + dropped]
        assert all(ok and host == one.url for _, host, ok in late), late
        # When host 2's keys were first answered (by host 1) after the cut.
        rerouted = min(end for start, end, host, ok, index in traffic.results
                       if start > cut and ok and index >= len(by_host[one.url])) - cut

        mended = time.monotonic()
        cluster.lan.mend(two.namespace, cluster.lan.gateway, cluster.lan.redis)
        cluster.wait_routed({one.url, two.url}, timeout=30)  # it rejoins by itself: its heartbeat is back
        _until(lambda: any(start > mended and host == two.url for start, _, host, _, _ in traffic.results), 60,
               "no request reached host 2 after its link came back")
        rejoined = time.monotonic() - mended
    finally:
        traffic.stop()
    slowest = max(end - start for start, end, *_ in traffic.results)
    assert slowest <= READ_TIMEOUT_S + 10, f"a request took {slowest:.1f} s"  # none hangs
    failed = [(round(start - cut, 1), what) for start, _, what, ok, _ in traffic.results if not ok]
    print(f"link down: the stranded stream ended {stranded:.1f} s after the cut ({stream.outcome[:60]}); host 2 "
          f"left nginx's upstream after {dropped:.1f} s; the first answer after the cut came {rerouted:.1f} s after "
          f"it for host 2's keys; slowest request {slowest:.1f} s; {len(traffic.results)} requests, failed: {failed}; the link back, "
          f"host 2 served again after {rejoined:.1f} s")


def _usage_of(cluster, key: str) -> dict:
    from impetus.gateway.keys import hash_key

    return cluster.redis.hgetall(f"impetus:usage:{hash_key(key)}")


def _chat_as_sdks_do(url: str, key: str, **options) -> httpx.Response:
    """A chat request retried on a 503 with Retry-After, as the openai and anthropic SDKs do.
    The host cut off from Redis answers 503, and nginx passes that on to another host; in
    2 of ~8 runs a 503 reached the client once (nginx tried no other host), which
    a client's retry then sends to a host that can check the key."""
    for _ in range(3):
        answer = _chat(url, key, **options)
        if answer.status_code != 503 or answer.json()["error"]["code"] != "cluster_redis_unavailable":
            return answer
        time.sleep(float(answer.headers["retry-after"]))
    return answer


def test_a_host_cut_off_from_redis_stops_being_routed_finishes_what_it_admitted_and_limits_hold(cluster):
    one, two = cluster.hosts
    own = keys_by_host(cluster, "redis-cut", 1)[one.url][0]
    limited = keys_by_host(cluster, "redis-cut-rpm", 1, rpm=5)[one.url][0]
    budgeted = keys_by_host(cluster, "redis-cut-budget", 1, budget_tokens=30, budget_period="day")[one.url][0]
    stream = Stream(cluster.url, own, 150)
    stream.wait_tokens(3)
    cut = time.monotonic()
    cluster.lan.cut(one.namespace, cluster.lan.redis)  # its clients (the gateway's nginx) still reach it
    try:
        # While host 1 is still routed, its keys' new requests pass to host 2 (host 1 answers 503),
        # which checks their limits and budget against Redis: they hold.
        answers = []
        while not answers or answers[-1].status_code == 200:
            answers.append(_chat_as_sdks_do(cluster.url, limited))
            assert len(answers) <= 6, [a.status_code for a in answers]  # 5 a minute, one taken by keys_by_host
        assert answers[-1].json()["error"]["code"] == "rate_limit_requests" and len(answers) >= 2, [
            (a.status_code, a.headers.get("x-impetus-host"), a.text[:80]) for a in answers]
        for answer in answers[:-1]:
            assert answer.headers["x-impetus-host"] == two.url and "x-ratelimit-remaining-requests" in answer.headers
        assert _chat_as_sdks_do(cluster.url, limited).status_code == 429
        first = _chat_as_sdks_do(cluster.url, budgeted, content="Tell me about the sea.")
        assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 30, first.text
        over = _chat_as_sdks_do(cluster.url, budgeted, content=f"Say hi ({time.time()})")  # not a cached answer, which costs nothing
        assert over.status_code == 429 and over.json()["error"]["code"] == "budget_exceeded", over.text

        stream.join(90)
        assert stream.outcome == "finished" and stream.usage.completion_tokens == 150, stream.outcome
        cluster.wait_routed({two.url}, timeout=TTL_S + 15)  # its heartbeat cannot reach Redis
        dropped = time.monotonic() - cut
    finally:
        cluster.lan.mend(one.namespace, cluster.lan.redis)
    mended = time.monotonic()
    cluster.wait_routed({one.url, two.url}, timeout=30)
    rejoined = time.monotonic() - mended
    # What host 1 owed for the stream it finished while cut off waited in its spool, and is in Redis now.
    told = {"requests": 1, "prompt_tokens": stream.usage.prompt_tokens, "completion_tokens": 150}
    _until(lambda: {k: int(_usage_of(cluster, own).get(k, 0)) for k in told} == told, 30,
           f"usage {_usage_of(cluster, own)} is not {told}")
    print(f"Redis cut off from host 1: its stream finished ({stream.usage.completion_tokens} tokens), it left "
          f"nginx's upstream after {dropped:.1f} s and was routed again {rejoined:.1f} s after Redis came back")


def test_a_kill_9_of_serve_join_leaves_nothing_and_a_new_one_rejoins(cluster):
    one, two = cluster.hosts
    record = json.loads((two.data_dir / "run" / f"join-{HOST_PORT}.json").read_text())
    workers = record["children"]["workers"]["pid"]
    traffic = Traffic(cluster.url, keys_by_host(cluster, "kill", 1)[two.url])
    traffic.start()
    try:
        _until(lambda: any(ok for _, _, _, ok, _ in traffic.results), 60, "no answer")
        killed = time.monotonic()
        os.kill(two.process.process.pid, signal.SIGKILL)  # the supervisor only
        _until(lambda: not os.path.exists(f"/proc/{workers}"), 10, "its Gunicorn outlived it")
        gone = time.monotonic() - killed

        def refused() -> bool:
            try:
                httpx.get(f"{two.url}/healthz", timeout=1)
                return False
            except httpx.ConnectError:
                return True
        _until(refused, 10, "something still listens on its port")
        cluster.wait_routed({one.url}, timeout=10)  # its workers left the registry as they exited
        two.process.stop()
        two.join(cluster.join, cluster.lan.gateway)  # starts cleanly on the same port
        cluster.wait_routed({one.url, two.url}, timeout=30)
        back = time.monotonic()
        _until(lambda: any(start > back and host == two.url for start, _, host, _, _ in traffic.results), 60,
               lambda: f"no request reached the new host 2: "
                       f"{[(round(a - back, 1), round(b - back, 1), h, ok) for a, b, h, ok, _ in traffic.results[-6:]]}"
                       f"\n{_log_of(cluster.gateway)}\n{_log_of(two.process)}")
    finally:
        traffic.stop()
    print(f"kill -9 of serve --join: its Gunicorn was gone after {gone:.1f} s")


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
        url, own = f"http://127.0.0.1:{port}", workers_socket(gateway_dir)
        answer = _models(url, admin)
        assert answer.status_code == 200 and answer.headers["x-impetus-host"] == f"unix:{own}"
        # On the gateway Mac too, only nginx (with the secret) gets past the workers' guard.
        skipped = httpx.Client(transport=httpx.HTTPTransport(uds=str(own))).get(
            "http://workers/v1/models", headers={"Authorization": f"Bearer {admin}"})
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
