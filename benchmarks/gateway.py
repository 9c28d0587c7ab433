"""Gateway benchmark (issue 3), in one run, loopback only, bounded in count and time.

1. Overhead per request of the gateway (auth + rate limit + cache lookup):
   a) end to end: GET /v1/models on the same server with and without the
      gateway, p50 difference;
   b) in process: the gateway's own calls against the real Redis, p50.
2. Cache-hit latency through nginx (a deterministic chat request answered from
   the cache), p50/p95.
3. Concurrent streams held open through nginx: N streaming chat requests at
   once from 10 loopback source addresses; every one must complete.

Usage: .venv/bin/python benchmarks/gateway.py [--streams 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from impetus.gateway import Gateway, connect
from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port, start_server, stop_server
from impetus.settings import Settings
from impetus.stack import nginx


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def timed_requests(client: httpx.Client, method: str, url: str, n: int, **kwargs) -> list[float]:
    client.request(method, url, **kwargs)  # warm-up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        response = client.request(method, url, **kwargs)
        times.append(time.perf_counter() - start)
        response.raise_for_status()
    return times


def in_process_gateway_ms(redis_url: str, key: str, n: int) -> list[float]:
    """The gateway's calls for one request, against the real Redis."""
    settings = Settings(redis_url=redis_url)
    gateway = Gateway(settings, connect(redis_url))
    body = type("Body", (), {"temperature": 0, "seed": None,
                             "model_dump": lambda self, **kw: {"messages": [{"role": "user", "content": "hi"}]}})()
    request = type("Req", (), {"get_header": lambda self, name: None})()
    times = []
    for _ in range(n + 1):
        start = time.perf_counter()
        record = gateway.keys.verify(key)
        gateway.limiter.take_request(record.hash, 1_000_000)
        gateway.limiter.check_tokens(record.hash, 1_000_000_000)
        gateway.cache.lookup(request, "chat", body, DEFAULT_MODEL, "rev")
        times.append(time.perf_counter() - start)
    return times[1:]


def hold_streams(url: str, key: str, n: int) -> dict:
    body = {"model": DEFAULT_MODEL, "max_tokens": 8, "temperature": 1.0, "stream": True,
            "messages": [{"role": "user", "content": "Say something short."}]}
    opened = threading.Barrier(n + 1, timeout=600)
    results = []
    lock = threading.Lock()

    def one(i):
        source = f"127.0.0.{2 + i % 10}"
        outcome = "ok"
        try:
            with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=600) as client:
                with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {key}"}) as response:
                    lines = response.iter_lines()
                    first = next(lines)
                    if response.status_code != 200 or not first.startswith("data: "):
                        outcome = f"HTTP {response.status_code}"
                    try:
                        opened.wait()
                    except threading.BrokenBarrierError:
                        pass
                    if outcome == "ok" and [line for line in lines if line][-1] != "data: [DONE]":
                        outcome = "incomplete"
        except Exception as error:  # counted, not raised
            outcome = type(error).__name__
            try:
                opened.wait(0)
            except threading.BrokenBarrierError:
                pass
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    try:
        opened.wait()  # every stream has its first event: all n are open at once
        all_open = True
    except threading.BrokenBarrierError:
        all_open = False
    open_after = time.perf_counter() - start
    for t in threads:
        t.join()
    errors = {}
    for outcome in results:
        if outcome != "ok":
            errors[outcome] = errors.get(outcome, 0) + 1
    return {"streams": n, "all_open_at_once": all_open, "seconds_to_open_all": open_after,
            "seconds_total": time.perf_counter() - start, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="impetus-gateway-bench-"))
    data_dir = Path(os.environ.get("IMPETUS_DATA_DIR", Settings().data_dir))
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    time.sleep(0.5)
    key, _ = KeyStore(connect(redis_url)).create("bench", rpm=10_000_000, tpm=1_000_000_000)
    common = {"IMPETUS_DATA_DIR": str(data_dir), "IMPETUS_MAX_QUEUE": str(args.streams + 100)}
    plain_port, gated_port, proxy_port = free_port(), free_port(), free_port()
    plain = start_server(plain_port, work / "plain.log", common)
    gated = start_server(gated_port, work / "gated.log", {**common, "IMPETUS_REQUIRE_API_KEYS": "true",
                                                          "IMPETUS_REDIS_URL": redis_url})
    conf = nginx.render(nginx.NginxConfig("127.0.0.1", proxy_port, f"127.0.0.1:{gated_port}", work / "run",
                                          work / "logs", conn_per_client=args.streams))
    proxy = nginx.start(conf)
    time.sleep(0.5)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(timeout=30) as client:
            without = timed_requests(client, "GET", f"http://127.0.0.1:{plain_port}/v1/models", args.requests)
            with_gateway = timed_requests(client, "GET", f"http://127.0.0.1:{gated_port}/v1/models",
                                          args.requests, headers=headers)
            hit_body = {"model": DEFAULT_MODEL, "temperature": 0, "max_tokens": 16,
                        "messages": [{"role": "user", "content": "What is the capital of France?"}]}
            hits = timed_requests(client, "POST", f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
                                  args.requests, headers=headers, json=hit_body)
            last = client.post(f"http://127.0.0.1:{proxy_port}/v1/chat/completions", headers=headers, json=hit_body)
            assert last.headers["x-impetus-cache"] == "hit"
        in_process = in_process_gateway_ms(redis_url, key, args.requests)
        streams = hold_streams(f"http://127.0.0.1:{proxy_port}", key, args.streams)
    finally:
        proxy.terminate()
        stop_server(plain)
        stop_server(gated)
        redis.terminate()

    ms = lambda seconds: round(seconds * 1000, 3)  # noqa: E731
    result = {
        "models_p50_ms_without_gateway": ms(statistics.median(without)),
        "models_p50_ms_with_gateway": ms(statistics.median(with_gateway)),
        "gateway_added_p50_ms": ms(statistics.median(with_gateway) - statistics.median(without)),
        "gateway_calls_in_process_p50_ms": ms(statistics.median(in_process)),
        "cache_hit_through_nginx_p50_ms": ms(statistics.median(hits)),
        "cache_hit_through_nginx_p95_ms": ms(percentile(hits, 95)),
        "held_streams": streams,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name}: {value}")


if __name__ == "__main__":
    sys.exit(main())
