"""The production path for a benchmark, on loopback: a redis-server, the
Gunicorn workers with API keys required, and nginx in front. Started in a
temporary folder and stopped (in order: nginx, workers, Redis) on exit."""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from impetus.gateway import connect
from impetus.gateway.keys import KeyStore
from impetus.server.process import free_port, start_server, stop_server
from impetus.stack import nginx
from impetus.stack.up import redis_answers, wait_until


@dataclass
class BenchStack:
    url: str  # nginx, the public face
    redis_url: str
    keys: KeyStore
    pids: dict[str, int]  # "server" (Gunicorn master), "nginx", "redis"
    work: Path


@contextmanager
def gateway_stack(work: Path, server_env: dict[str, str], conn_per_client: int = 1024):
    work.mkdir(parents=True, exist_ok=True)
    redis_port, server_port, proxy_port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    processes: list[tuple[str, subprocess.Popen]] = []
    try:
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True)
        processes.append(("redis", redis))
        wait_until(lambda: redis_answers(redis_url), "redis-server", redis, timeout=20)
        server = start_server(server_port, work / "server.log",
                              {**server_env, "IMPETUS_REQUIRE_API_KEYS": "true", "IMPETUS_REDIS_URL": redis_url})
        processes.append(("server", server))
        conf = nginx.render(nginx.NginxConfig("127.0.0.1", proxy_port, f"127.0.0.1:{server_port}", work / "run",
                                              work / "logs", conn_per_client=conn_per_client))
        proxy = nginx.start(conf, start_new_session=True)
        processes.append(("nginx", proxy))
        time.sleep(0.5)
        yield BenchStack(f"http://127.0.0.1:{proxy_port}", redis_url, KeyStore(connect(redis_url)),
                         {name: p.pid for name, p in processes}, work)
    finally:
        for name, process in reversed(processes):
            if name == "server":
                stop_server(process)
            else:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
