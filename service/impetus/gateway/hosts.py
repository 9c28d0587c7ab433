"""The hosts serving this Redis: who they are, what they serve, how busy.

Every worker of every `impetus serve` that shares the Redis writes a
heartbeat every HEARTBEAT_S seconds: one hash per worker, with a TTL of
TTL_S, and its id in a sorted set scored by the time of its last beat.
A host is the union of its workers' beats under one advertised address
(IMPETUS_ADVERTISE, default http://<hostname>:<port>). A worker or host that
stops beating (killed, unplugged) drops out by itself within TTL_S: its hash
expires, and the next listing removes it from the set.

Why per worker and not per host: each Gunicorn worker has its own engines
(its own loaded models and queue), and none of them speaks for the others;
summing at read time keeps the writes independent (no lock, no leader).

Layout:
  {prefix}hostworkers             zset "{host}|{pid}" -> unix time of the last beat
  {prefix}hostworker:{host}|{pid} hash: host, pid, version, models (json), loaded (json),
                                  budget_bytes, used_bytes, running, waiting, at
  {prefix}hostleft:{host}|{pid}   set by a clean stop, kept LEFT_S: the gateway tells a host
                                  that was stopped from one that died (which Prometheus
                                  should go on seeing down, so that ImpetusDown fires)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

HEARTBEAT_S = 5.0
TTL_S = 15  # three missed beats
LEFT_S = 600


@dataclass
class HostState:
    """One host as `impetus hosts`, /v1/status and the dashboard show it."""

    address: str
    version: str
    workers: int = 0
    models: list[str] = field(default_factory=list)  # it can serve
    loaded: list[str] = field(default_factory=list)  # some worker has it loaded
    budget_bytes: int = 0
    used_bytes: int = 0
    running: int = 0
    waiting: int = 0
    heartbeat_age_s: float = 0.0  # since its latest beat
    pids: list[int] = field(default_factory=list)  # its workers'

    def as_dict(self) -> dict:
        return {"address": self.address, "version": self.version, "workers": self.workers,
                "models": self.models, "loaded": self.loaded, "budget_bytes": self.budget_bytes,
                "used_bytes": self.used_bytes, "running": self.running, "waiting": self.waiting,
                "heartbeat_age_s": round(self.heartbeat_age_s, 1)}


class HostRegistry:
    def __init__(self, redis, prefix: str = "impetus:", ttl_s: int = TTL_S):
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.index = f"{prefix}hostworkers"

    def beat(self, address: str, pid: int, version: str, models: list[str], loaded: list[str],
             budget_bytes: int, used_bytes: int, running: int, waiting: int) -> None:
        member = f"{address}|{pid}"
        now = time.time()
        key = f"{self.prefix}hostworker:{member}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping={
            "host": address, "pid": pid, "version": version, "models": json.dumps(sorted(models)),
            "loaded": json.dumps(sorted(loaded)), "budget_bytes": budget_bytes, "used_bytes": used_bytes,
            "running": running, "waiting": waiting, "at": repr(now)})
        pipe.expire(key, self.ttl_s)
        pipe.zadd(self.index, {member: now})
        pipe.execute()

    def leave(self, address: str, pid: int) -> None:
        """A worker that stops cleanly leaves at once instead of after the TTL."""
        member = f"{address}|{pid}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(f"{self.prefix}hostworker:{member}")
        pipe.zrem(self.index, member)
        pipe.set(f"{self.prefix}hostleft:{member}", 1, ex=LEFT_S)
        pipe.execute()

    def left(self, address: str, pids) -> bool:
        """Whether each of these workers of a host stopped cleanly."""
        keys = [f"{self.prefix}hostleft:{address}|{pid}" for pid in pids]
        return bool(keys) and self.redis.exists(*keys) == len(keys)

    def hosts(self) -> list[HostState]:
        now = time.time()
        self.redis.zremrangebyscore(self.index, "-inf", now - self.ttl_s)
        members = self.redis.zrange(self.index, 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(f"{self.prefix}hostworker:{member}")
        found: dict[str, HostState] = {}
        for fields in pipe.execute():
            if not fields:  # expired between the two reads
                continue
            host = found.setdefault(fields["host"], HostState(fields["host"], fields.get("version", "?"),
                                                              heartbeat_age_s=float("inf")))
            host.workers += 1
            host.pids.append(int(fields.get("pid", 0)))
            host.models = sorted(set(host.models) | set(json.loads(fields.get("models", "[]"))))
            host.loaded = sorted(set(host.loaded) | set(json.loads(fields.get("loaded", "[]"))))
            for name in ("budget_bytes", "used_bytes", "running", "waiting"):
                setattr(host, name, getattr(host, name) + int(fields.get(name, 0)))
            host.heartbeat_age_s = min(host.heartbeat_age_s, max(0.0, now - float(fields.get("at", now))))
        return sorted(found.values(), key=lambda h: h.address)
