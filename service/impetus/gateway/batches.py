"""OpenAI's Batch API's records, kept in Redis: each batch, its progress and its answers.

Redis holds what a restart, a crash or another worker must find to go on:

  {prefix}batch:{id}           hash: the batch's fields (owner, status, endpoint, files, counts,
                               timestamps, metadata and errors as JSON, the host it was made on)
  {prefix}batch:{id}:results   hash: line number -> the line's output (JSON); a line answered twice
                               (a worker died after answering, before counting) is written once
  {prefix}batch:{id}:input     list: its lines (JSON), so that a worker of any host runs them
  {prefix}batch:{id}:next      the first line of the next chunk nobody has claimed (INCRBY)
  {prefix}batch:{id}:chunk:{n} the worker running the chunk of lines from n (SET NX EX, renewed):
                               another takes it when this expires or, on the same host, when its
                               process is gone
  {prefix}batch:{id}:chunks    set: the chunks ever claimed
  {prefix}batch:{id}:host:{a}  the one worker of host `a` that runs its chunks now (SET NX EX)
  {prefix}batch:{id}:final     the worker writing its output files (once)
  {prefix}batches:{owner}      sorted set: the key's batches by creation
  {prefix}batches:active       set: batches to run (in_progress or cancelling)

Counts are derived from the results hash (HLEN and a failed-lines set), so a
replayed line is never counted twice. Lines are claimed CHUNK at a time by one
worker of each host that serves the batch's model, each when it has room: a
host with free capacity takes more chunks, a busy one fewer. What it must not do: run requests
(api.batch_runner) or read files (documents).
"""

from __future__ import annotations

import json
import time

COUNTS = ("total", "completed", "failed")
TIMES = ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
         "cancelled_at")
LEASE_S = 30
CHUNK = 16  # lines claimed at once: small enough that a busy host holds back little
WINDOW_S = 24 * 3600  # completion_window "24h", the one OpenAI offers


class BatchStore:
    def __init__(self, redis, prefix: str = "impetus:"):
        self.redis, self.prefix = redis, prefix

    def _key(self, batch_id: str, suffix: str = "") -> str:
        return f"{self.prefix}batch:{batch_id}{suffix}"

    def create(self, batch_id: str, owner: str, fields: dict, lines: list[dict], active: bool) -> None:
        record = {"id": batch_id, "owner": owner, "total": len(lines),
                  **{k: v for k, v in fields.items() if v is not None}}
        pipe = self.redis.pipeline()
        pipe.hset(self._key(batch_id), mapping={k: json.dumps(v) for k, v in record.items()})
        for start in range(0, len(lines) if active else 0, 1000):
            pipe.rpush(self._key(batch_id, ":input"), *(json.dumps(x) for x in lines[start:start + 1000]))
        pipe.zadd(f"{self.prefix}batches:{owner}", {batch_id: record["created_at"]})
        if active:
            pipe.sadd(f"{self.prefix}batches:active", batch_id)
        pipe.execute()

    def record(self, batch_id: str, owner: str | None = None) -> dict | None:
        """The batch's fields (None: no such batch, or another key's)."""
        raw = self.redis.hgetall(self._key(batch_id))
        if not raw:
            return None
        record = {k: json.loads(v) for k, v in raw.items()}
        if owner is not None and record["owner"] != owner:
            return None
        pipe = self.redis.pipeline()
        pipe.hlen(self._key(batch_id, ":results"))
        pipe.scard(self._key(batch_id, ":failed"))
        answered, failed = pipe.execute()
        record["completed"], record["failed"] = answered - failed, failed
        return record

    def update(self, batch_id: str, **fields) -> None:
        self.redis.hset(self._key(batch_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    def set_status(self, batch_id: str, status: str, **fields) -> None:
        stamp = {f"{status}_at": int(time.time())} if f"{status}_at" in TIMES else {}
        self.update(batch_id, status=status, **stamp, **fields)
        if status in ("completed", "failed", "expired", "cancelled"):
            pipe = self.redis.pipeline()
            pipe.srem(f"{self.prefix}batches:active", batch_id)
            pipe.delete(self._key(batch_id, ":input"))  # the answers are in the output files now
            pipe.execute()

    def lines(self, batch_id: str) -> list[dict]:
        return [json.loads(x) for x in self.redis.lrange(self._key(batch_id, ":input"), 0, -1)]

    def answered(self, batch_id: str) -> set[int]:
        return {int(k) for k in self.redis.hkeys(self._key(batch_id, ":results"))}

    def unanswered(self, batch_id: str, numbers) -> list[int]:
        numbers = list(numbers)
        pipe = self.redis.pipeline()
        for number in numbers:
            pipe.hexists(self._key(batch_id, ":results"), str(number))
        return [n for n, there in zip(numbers, pipe.execute(), strict=True) if not there]

    def answer(self, batch_id: str, line: int, output: dict, failed: bool) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(self._key(batch_id, ":results"), str(line), json.dumps(output))
        if failed:
            pipe.sadd(self._key(batch_id, ":failed"), str(line))
        pipe.execute()

    def results(self, batch_id: str) -> dict[int, tuple[dict, bool]]:
        pipe = self.redis.pipeline()
        pipe.hgetall(self._key(batch_id, ":results"))
        pipe.smembers(self._key(batch_id, ":failed"))
        raw, failed = pipe.execute()
        return {int(k): (json.loads(v), k in failed) for k, v in raw.items()}

    def listing(self, owner: str, limit: int, after: str | None) -> tuple[list[dict], bool]:
        ids = self.redis.zrevrange(f"{self.prefix}batches:{owner}", 0, -1)
        if after in ids:
            ids = ids[ids.index(after) + 1:]
        records = [r for r in (self.record(i, owner) for i in ids[:limit + 1]) if r is not None]
        return records[:limit], len(records) > limit

    def active(self) -> list[str]:
        return sorted(self.redis.smembers(f"{self.prefix}batches:active"))

    def claim(self, batch_id: str, holder: str, total: int, dead) -> int | None:
        """The first line of a chunk this holder runs now: the next one nobody
        claimed, else one with lines unanswered whose holder is gone; None: none."""
        start = self.redis.incrby(self._key(batch_id, ":next"), CHUNK) - CHUNK
        if start < total:
            pipe = self.redis.pipeline()
            pipe.set(self._key(batch_id, f":chunk:{start}"), holder, ex=LEASE_S)
            pipe.sadd(self._key(batch_id, ":chunks"), start)
            pipe.execute()
            return start
        answered = self.answered(batch_id)
        for start in range(0, total, CHUNK):
            if any(n not in answered for n in range(start, min(start + CHUNK, total))) and \
                    self._take(self._key(batch_id, f":chunk:{start}"), holder, dead, renew=False):
                return start
        return None

    def host_turn(self, batch_id: str, address: str, holder: str, dead) -> bool:
        """Whether this worker is the one of its host that runs the batch now (a lease per host)."""
        return self._take(self._key(batch_id, f":host:{address}"), holder, dead)

    def end_turn(self, batch_id: str, address: str, holder: str) -> None:
        self._give(self._key(batch_id, f":host:{address}"), holder)

    def renew(self, batch_id: str, starts, holder: str) -> None:
        for start in starts:
            self._take(self._key(batch_id, f":chunk:{start}"), holder)

    def release(self, batch_id: str, start: int, holder: str) -> None:
        self._give(self._key(batch_id, f":chunk:{start}"), holder)

    def held(self, batch_id: str, dead) -> bool:
        """Whether a live worker still runs a chunk of it (its answers are not all in yet)."""
        starts = sorted(self.redis.smembers(self._key(batch_id, ":chunks")), key=int)
        pipe = self.redis.pipeline()
        for start in starts:
            pipe.get(self._key(batch_id, f":chunk:{start}"))
        return any(holder is not None and not dead(holder) for holder in pipe.execute())

    def finalize(self, batch_id: str, holder: str, dead) -> bool:
        """Whether this holder writes the output files: one worker, once."""
        return self._take(self._key(batch_id, ":final"), holder, dead)

    def _take(self, key: str, holder: str, dead=lambda holder: False, renew: bool = True) -> bool:
        """Take (or, with `renew`, renew) a lease; False while another worker holds it. `dead(holder)`:
        the holder is known to be gone (a process of this machine that no longer runs): its lease is void."""
        if self.redis.set(key, holder, nx=True, ex=LEASE_S):
            return True
        current = self.redis.get(key)
        if current == holder:
            return renew and bool(self.redis.expire(key, LEASE_S))
        if current is not None and dead(current):
            with self.redis.pipeline() as pipe:  # take it only if it is still the dead holder's
                try:
                    pipe.watch(key)
                    if pipe.get(key) != current:
                        return False
                    pipe.multi()
                    pipe.set(key, holder, ex=LEASE_S)
                    pipe.execute()
                    return True
                except Exception:
                    return False
        return False

    def _give(self, key: str, holder: str) -> None:
        """Give a lease back, if it is still this holder's."""
        if self.redis.get(key) == holder:
            self.redis.delete(key)
