"""The endpoint the coding agents are driven against: a server requiring
personal keys on the real Redis, behind the stack's nginx, answering greedily
(IMPETUS_DEFAULT_TEMPERATURE=0: the agents send no temperature, so the 135M
default model's answer is the same every run). Each agent's test module
starts its own (a module fixture over `agent_endpoint`); Gemma's is the
session's `gemma_endpoint` (tests/conftest.py)."""

from __future__ import annotations

from contextlib import contextmanager

from conftest import Server
from processes import start_nginx, stop


@contextmanager
def agent_endpoint(data_dir, redis_server, work, **settings):
    server = Server(data_dir, work / "server.log", require_api_keys="true", redis_url=redis_server.url,
                    default_temperature=0, **settings)
    nginx, url = start_nginx(work / "nginx", f"127.0.0.1:{server.port}")
    try:
        yield {"url": url, "server": server, "work": work}
    finally:
        stop(nginx)
        server.stop()
    assert "Traceback" not in server.logs()
