"""A real nginx, rendered from impetus/share/nginx/*.conf, in front of the real gateway server."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from datetime import datetime

import httpx
import openai
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port
from impetus.stack import nginx

from processes import start_nginx
from processes import stop as stop_nginx

pytestmark = pytest.mark.slow

CHAT = {"model": DEFAULT_MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def proxy(gateway_server, tmp_path_factory):
    upstream = gateway_server.removeprefix("http://")
    process, url = start_nginx(tmp_path_factory.mktemp("nginx"), upstream, max_body="1m")
    yield url
    stop_nginx(process)


@pytest.fixture
def key(redis_client):
    return KeyStore(redis_client).create("through-nginx")[0]


@pytest.fixture
def admin_key(redis_client):
    return KeyStore(redis_client).create("operator", admin=True)[0]


def test_openai_client_with_a_key_through_nginx(proxy, key):
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(**CHAT)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-request-id"]
    assert raw.headers["server"] == "nginx"  # no version
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{proxy}/v1", api_key="imp_wrong", max_retries=0).chat.completions.create(**CHAT)


def test_request_id_is_passed_through_once(proxy, key):
    response = httpx.get(f"{proxy}/v1/models", headers={"Authorization": f"Bearer {key}",
                                                        "X-Request-ID": "trace-42"}, timeout=10)
    assert response.headers.get_list("x-request-id") == ["trace-42"]


def test_stream_arrives_through_nginx_while_still_generating(server, tmp_path):
    """First content chunk through nginx while the (single) worker still runs the request."""
    process, url = start_nginx(tmp_path, f"127.0.0.1:{server.port}")
    body = {**CHAT, "max_tokens": 60, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            first = next(line for line in lines
                         if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"))
            engine = httpx.get(f"{server.base_url}/readyz", timeout=10).json()["engines"][0]
            rest = [line for line in lines if line]
    finally:
        stop_nginx(process)
    assert first
    assert engine["running"] == 1  # not buffered until the end: the model is still generating
    assert rest[-1] == "data: [DONE]" and len(rest) > 10


def test_body_over_the_limit_is_413_in_openai_form(proxy, key):
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    response = httpx.post(f"{proxy}/v1/chat/completions", json=huge, headers={"Authorization": f"Bearer {key}"},
                          timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_nginx_own_400_and_header_too_large_are_in_openai_form(proxy, key):
    import socket

    response = httpx.post(f"{proxy}/v1/chat/completions", json=CHAT, timeout=30,
                          headers={"Authorization": f"Bearer {key}", "X-Padding": "x" * 20_000})
    assert response.status_code == 431
    error = response.json()["error"]
    assert error["code"] == "request_header_too_large" and error["type"] == "invalid_request_error"
    host, port = proxy.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:  # not HTTP at all
        raw.sendall(b"GARBAGE\r\n\r\n")
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["code"] == "bad_request"


def test_operator_paths_only_from_this_machine(proxy, key, admin_key):
    outside = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10)
    admin = {"Authorization": f"Bearer {admin_key}"}
    refused = outside.get(f"{proxy}/metrics", headers=admin)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert httpx.get(f"{proxy}/metrics", headers=admin, timeout=10).status_code == 200
    # The admin API serves the dashboard on the LAN: it is the admin key that opens it.
    assert outside.get(f"{proxy}/v1/admin/models", headers=admin).status_code == 200
    user = outside.get(f"{proxy}/v1/admin/models", headers={"Authorization": f"Bearer {key}"})
    assert user.status_code == 403 and user.json()["error"]["code"] == "admin_scope_required"
    # nginx's counters (for its Prometheus exporter) likewise.
    assert outside.get(f"{proxy}/nginx_status").status_code == 403
    status = httpx.get(f"{proxy}/nginx_status", timeout=10)
    assert status.status_code == 200 and status.text.startswith("Active connections:")
    # The API itself is open to other addresses.
    assert outside.get(f"{proxy}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_upstream_down_is_503_in_openai_form(tmp_path):
    process, url = start_nginx(tmp_path, f"127.0.0.1:{free_port()}")
    try:
        response = httpx.get(f"{url}/v1/models", timeout=10)
    finally:
        stop_nginx(process)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable" and response.headers["retry-after"]


def test_connections_per_client_are_limited(gateway_server, tmp_path, key):
    process, url = start_nginx(tmp_path, gateway_server.removeprefix("http://"), conn_per_client=1)
    body = {**CHAT, "max_tokens": 40, "stream": True, "messages": [{"role": "user", "content": "Tell a story."}]}
    headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60) as held:
            lines = held.iter_lines()  # kept: a dropped iterator would close the stream
            next(lines)
            second = httpx.get(f"{url}/v1/models", headers=headers, timeout=10)
    finally:
        stop_nginx(process)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "too_many_connections"


def test_tls_with_the_self_signed_certificate(gateway_server, tmp_path, key):
    from impetus.stack.tls import make_certificate

    cert, private = make_certificate(tmp_path, ["localhost", "127.0.0.1"])
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    # What Apple's clients require of a TLS server certificate (support.apple.com/103769).
    text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text"], capture_output=True,
                          text=True, check=True).stdout
    usage = text.split("X509v3 Extended Key Usage:")[1].splitlines()[1].strip()
    assert usage == "TLS Web Server Authentication"
    assert "DNS:localhost, IP Address:127.0.0.1" in text
    dates = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-startdate", "-enddate"],
                           capture_output=True, text=True, check=True).stdout
    start, end = (datetime.strptime(line.split("=", 1)[1], "%b %d %H:%M:%S %Y %Z") for line in dates.splitlines())
    assert (end - start).days <= 825
    with pytest.raises(ValueError, match="825"):
        make_certificate(tmp_path / "long", ["localhost"], days=3650)
    port = free_port()
    conf = nginx.render(nginx.NginxConfig("127.0.0.1", port, gateway_server.removeprefix("http://"),
                                          tmp_path / "run", tmp_path / "logs", tls_cert=cert, tls_key=private))
    process = nginx.start(conf)
    try:
        client = openai.OpenAI(base_url=f"https://127.0.0.1:{port}/v1", api_key=key, max_retries=0,
                               http_client=httpx.Client(verify=ssl.create_default_context(cafile=cert), timeout=60))
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = client.chat.completions.create(**CHAT)
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert reply.choices[0].message.content
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port is not served
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()
    finally:
        stop_nginx(process)


def test_operator_paths_can_be_opened_to_a_named_address(gateway_server, tmp_path, admin_key):
    process, url = start_nginx(tmp_path, gateway_server.removeprefix("http://"), admin_allow=("127.0.0.2",))
    try:
        prometheus_host = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10)
        other_host = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=10)
        headers = {"Authorization": f"Bearer {admin_key}"}
        assert prometheus_host.get(f"{url}/metrics", headers=headers).status_code == 200
        assert other_host.get(f"{url}/metrics", headers=headers).status_code == 403
    finally:
        stop_nginx(process)


def test_cache_hit_is_replayed_as_a_stream_through_nginx(proxy, key):
    body = {**CHAT, "temperature": 0, "max_tokens": 6,
            "messages": [{"role": "user", "content": "Name a planet."}]}
    headers = {"Authorization": f"Bearer {key}"}
    first = httpx.post(f"{proxy}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert first.headers["x-impetus-cache"] == "miss"
    with httpx.stream("POST", f"{proxy}/v1/chat/completions", json={**body, "stream": True}, headers=headers,
                      timeout=60) as replay:
        assert replay.headers["x-impetus-cache"] == "hit"
        events = [json.loads(line[6:]) for line in replay.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == first.json()["choices"][0]["message"]["content"]
