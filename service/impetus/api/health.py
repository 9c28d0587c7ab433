"""GET /healthz (the process answers), GET /readyz (it can serve) and the
admin GET /v1/status (what every component is doing)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time

import falcon

from impetus import __version__
from impetus.system import blas, info


def redis_state(gateway) -> str:
    """'ok', 'unreachable', or 'not used' (keys not required)."""
    if gateway is None:
        return "not used"
    from redis.exceptions import RedisError

    try:
        gateway.redis.ping()
        return "ok"
    except RedisError:
        return "unreachable"


def hosts_of(gateway) -> list[dict]:
    """Every host heartbeating into this Redis (impetus.gateway.hosts); none without Redis."""
    if gateway is None:
        return []
    from redis.exceptions import RedisError

    try:
        return [host.as_dict() for host in gateway.hosts.hosts()]
    except RedisError:
        return []


def batches_of(gateway) -> list[dict]:
    """The batches running or being cancelled (gateway.batches), with their progress; none without Redis."""
    if gateway is None:
        return []
    from redis.exceptions import RedisError

    try:
        records = [gateway.batches.record(i) for i in gateway.batches.active()]
    except RedisError:
        return []
    return [{"id": r["id"], "status": r["status"], "endpoint": r["endpoint"], "host": r.get("host"),
             "created_at": r["created_at"], "request_counts": {k: r[k] for k in ("total", "completed", "failed")}}
            for r in records if r is not None]


class LivenessResource:
    """The process answers; with the id of the `impetus up` run it belongs to,
    so that `up` never takes another stack's answer for its own."""

    def __init__(self, stack_id: str | None = None):
        self.stack = {"stack": stack_id} if stack_id else {}

    def on_get(self, req, resp):
        resp.media = {"status": "ok", **self.stack}

    def on_head(self, req, resp):
        """Codex checks the server with `HEAD /` before its first request."""
        resp.status = falcon.HTTP_200


class ReadinessResource:
    """Ready: a model loaded, every engine thread alive, and Redis answering
    when keys are required (without it only already-verified keys work)."""

    def __init__(self, host, gateway=None, stack_id: str | None = None):
        self.host = host
        self.gateway = gateway
        self.stack = {"stack": stack_id} if stack_id else {}

    def on_get(self, req, resp):
        redis = redis_state(self.gateway)
        ready = self.host.ready() and redis != "unreachable"
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {
            "status": "ready" if ready else "not ready",
            "pid": os.getpid(),
            "redis": redis,
            "engines": [engine.snapshot() for engine in self.host.engines.values()],
            **self.stack,
        }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


class StatusResource:
    """GET /v1/status (admin scope when keys are required): per-component detail."""

    def __init__(self, host, gateway=None):
        self.host = host
        self.gateway = gateway
        self.started = time.time()

    def on_get(self, req, resp):
        resp.media = status_snapshot(self.host, self.gateway, self.started)


def status_snapshot(host, gateway, started: float) -> dict:
    import mlx.core as mx

    engines = []
    for engine in host.engines.values():
        loaded = engine.loaded
        engines.append({**engine.snapshot(), "weights_dtype": loaded.weights_dtype,
                        "weights_bytes": loaded.nbytes, "context_length": loaded.context_length,
                        "load_seconds": round(loaded.load_seconds, 3), "revision": loaded.revision})
    return {
        "status": "ready" if host.ready() else "not ready",
        "uptime_s": round(time.time() - started, 1),
        "worker_pid": os.getpid(),
        "versions": {"impetus": __version__, "mlx": _version("mlx"), "mlx_lm": _version("mlx-lm"),
                     "python": platform.python_version()},
        "hardware": {"cpu": info.cpu_name(), "cores": os.cpu_count(), "memory_bytes": info.total_memory_bytes(),
                     "mlx_device": info.mlx_device(), "blas": blas.blas_in_use(),
                     "thermal_state": info.thermal_state_name(info.thermal_state()),
                     "mlx_active_memory_bytes": mx.get_active_memory(),
                     "mlx_peak_memory_bytes": mx.get_peak_memory(),
                     "mlx_cache_memory_bytes": mx.get_cache_memory()},
        "redis": redis_state(gateway),
        "hosts": hosts_of(gateway),
        "batches": batches_of(gateway),
        "engines": engines,
    }


