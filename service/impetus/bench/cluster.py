"""`impetus bench --scenario cluster`: the gateway of several Macs, on loopback.

A gateway with no model of its own (`impetus up --cluster --workers 0`) and
hosts that join it (`impetus serve --join`), each its own data dir and port,
as the README's "More than one Mac" runs them. Measured:
- the hop: p50 of the same small requests sent straight to a host (with the
  gateway's secret) and through the gateway's nginx, alternated, so that
  what the extra proxy costs is their difference;
- the load scenario's clients (each with its own key, so that the hash
  spreads them) through the gateway with one host and then with two:
  tokens/s, TTFT, and how the requests split over the hosts.

On one machine the hosts share its cores: two hosts are not a speedup here,
and the report says so; the split and the overhead are what carry over to
two Macs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from impetus.bench import plots
from impetus.bench.load import Client
from impetus.bench.traffic import percentile
from impetus.server.process import free_port


class _Program:
    """An `impetus` command in its own process group, its output in a log."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "impetus", *args], stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no {text!r} from {self.log}:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _data_dir(work: Path, name: str, settings) -> Path:
    directory = work / name
    (directory / "models").mkdir(parents=True)
    source = settings.models_dir / settings.model
    if source.exists():
        (directory / "models" / settings.model).symlink_to(source)
    return directory


def _hop(gateway: str, host: str, key: str, secret: str, rounds: int) -> dict:
    """p50 of GET /v1/models and of a one-token chat, straight and through nginx."""
    import httpx

    from impetus.gateway.guard import HEADER

    auth = {"Authorization": f"Bearer {key}"}
    chat = {"max_tokens": 1, "temperature": 1.0, "messages": [{"role": "user", "content": "Say hi"}]}
    times: dict[str, list[float]] = {name: [] for name in
                                     ("models_direct", "models_gateway", "chat_direct", "chat_gateway")}
    with httpx.Client(timeout=60) as http:
        model = http.get(f"{gateway}/v1/models", headers=auth).json()["data"][0]["id"]
        for _ in range(rounds):
            for where, url, headers in (("direct", host, {**auth, HEADER: secret}), ("gateway", gateway, auth)):
                started = time.perf_counter()
                assert http.get(f"{url}/v1/models", headers=headers).status_code == 200
                times[f"models_{where}"].append(time.perf_counter() - started)
                started = time.perf_counter()
                # No seed at temperature 1: never a cache hit (a repeat would be answered from Redis).
                reply = http.post(f"{url}/v1/chat/completions", headers=headers, json={**chat, "model": model})
                assert reply.status_code == 200, reply.text
                times[f"chat_{where}"].append(time.perf_counter() - started)
    found = {f"{name}_p50_ms": percentile(values, 50) * 1000 for name, values in times.items()}
    found["models_hop_ms"] = found["models_gateway_p50_ms"] - found["models_direct_p50_ms"]
    found["chat_hop_ms"] = found["chat_gateway_p50_ms"] - found["chat_direct_p50_ms"]
    found["rounds"] = rounds
    return found


def _level(url: str, keys: list[str], model: str, concurrency: int, duration: float, max_tokens: int) -> dict:
    started = time.perf_counter()
    deadline = started + duration
    clients = [Client(i, url, keys[i % len(keys)], model, deadline, max_tokens, 0.0, seed=concurrency * 1000 + i)
               for i in range(concurrency)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    wall = time.perf_counter() - started
    results = [r for client in clients for _, r in client.results]
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    return {"concurrency": concurrency, "wall_s": wall, "requests": len(results), "ok": len(ok),
            "tokens_per_s": sum(r.tokens for r in ok) / wall, "ttft_p50_s": percentile(ttfts, 50),
            "ttft_p95_s": percentile(ttfts, 95), "by_host": dict(Counter(r.host or "?" for r in ok)),
            "errors": dict(Counter(r.error for r in results if not r.ok))}


def run(settings, levels: list[int], duration: float, max_tokens: int, work: Path, progress,
        hop_rounds: int = 40) -> dict:
    from impetus.gateway import connect
    from impetus.gateway.guard import ClusterSecret
    from impetus.gateway.keys import KeyStore
    from impetus.stack import cluster

    redis_port, port = free_port(), free_port()
    gateway_dir = _data_dir(work, "gateway", settings)
    programs: list[_Program] = []
    try:
        gateway = _Program(["up", "--cluster", "--cluster-address", "127.0.0.1", "--redis-port", str(redis_port),
                            "--workers", "0", "--port", str(port), "--data-dir", str(gateway_dir)],
                           work / "gateway.log")
        programs.append(gateway)
        gateway.wait_for("impetus is up", timeout=60)
        join = cluster.join_url(cluster.read_password(gateway_dir), "127.0.0.1", redis_port)
        redis = connect(join)
        store = KeyStore(redis)
        keys = [store.create(f"bench-{i}", rpm=1_000_000, tpm=1_000_000_000)[0] for i in range(max(levels))]
        url = f"http://127.0.0.1:{port}"
        upstream = gateway_dir / "run" / "nginx" / "impetus-upstream.conf"

        def add_host(index: int) -> str:
            host_port = free_port()
            address = f"http://127.0.0.1:{host_port}"
            host = _Program(["serve", "--join", join, "--host", "127.0.0.1", "--port", str(host_port),
                             "--advertise", address, "--workers", str(settings.workers), "--model", settings.model,
                             "--data-dir", str(_data_dir(work, f"host-{index}", settings))],
                            work / f"host-{index}.log")
            programs.append(host)
            host.wait_for("impetus host is up")
            deadline = time.monotonic() + 30
            while f"# {address}" not in upstream.read_text():  # the gateway routes to it
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not route to {address}")
                time.sleep(0.2)
            progress(f"host {index} joined: {address}")
            return address

        first = add_host(1)
        _level(url, keys, settings.model, 1, 3, 4)  # warm-up
        hop = _hop(url, first, keys[0], ClusterSecret(redis).current(), hop_rounds)
        progress(f"hop: /v1/models p50 {hop['models_direct_p50_ms']:.1f} ms straight, "
                 f"{hop['models_gateway_p50_ms']:.1f} ms through the gateway (+{hop['models_hop_ms']:.1f} ms); "
                 f"one-token chat +{hop['chat_hop_ms']:.1f} ms")
        runs = {}
        for hosts in (1, 2):
            if hosts == 2:
                add_host(2)
                _level(url, keys, settings.model, 2, 3, 4)  # warm the new host
            runs[hosts] = []
            for level in levels:
                result = _level(url, keys, settings.model, level, duration, max_tokens)
                runs[hosts].append(result)
                progress(f"  {hosts} host(s), c={level}: {result['tokens_per_s']:.1f} tok/s, TTFT p50 "
                         f"{(result['ttft_p50_s'] or 0) * 1000:.0f} ms, split {result['by_host']}, "
                         f"errors {result['errors']}")
    finally:
        for program in reversed(programs):
            program.stop()
    return {"scenario": "cluster", "model": settings.model, "max_tokens": max_tokens, "duration_s": duration,
            "workers_per_host": settings.workers, "cpu_count": os.cpu_count(), "hop": hop,
            "one_host": runs[1], "two_hosts": runs[2],
            "note": "both hosts share this machine's cores: the split and the hop carry over, not the speed"}


def plot(summary: dict, out: Path) -> list[Path]:
    fig, (left, right) = plots.figure(2)
    for name, label in (("one_host", "1 host"), ("two_hosts", "2 hosts (same machine)")):
        xs = [level["concurrency"] for level in summary[name]]
        left.plot(xs, [level["tokens_per_s"] for level in summary[name]], "o-", label=label)
    plots.concurrency_axis(left, xs, "generated tokens/s", "Through the gateway")
    hop = summary["hop"]
    names = ["models", "chat"]
    for offset, where in ((-0.2, "direct"), (0.2, "gateway")):
        right.bar([i + offset for i in range(len(names))], [hop[f"{n}_{where}_p50_ms"] for n in names], 0.4,
                  label=where)
    right.set_xticks(range(len(names)), ["GET /v1/models", "1-token chat"])
    right.set(ylabel="p50 ms", title="The gateway's hop")
    right.legend()
    return plots.save(fig, out)
